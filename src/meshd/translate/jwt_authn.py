"""RequestAuthentication -> Envoy's `envoy.filters.http.jwt_authn` on a workload's inbound HTTP connection
managers, with Istio's semantics:

- Every RequestAuthentication that applies to the workload counts (mesh-wide: root namespace without a
  selector; namespace-wide; selector matching the workload's labels), their rules combined in that order,
  each level oldest first: one provider `origins-<i>` per rule.
- The requirement is `requires_any` of every provider plus `allow_missing`: a request whose token (at a
  location some provider reads) fails verification gets 401; a request without a token passes
  authentication with no identity, and AuthorizationPolicy decides (`requestPrincipals`).
- Every provider writes the verified payload into dynamic metadata `envoy.filters.http.jwt_authn` under
  `payload` (what the RBAC filters after this one read); CORS preflights bypass it, as in Istio.
- Keys are always inline (`local_jwks`): the rule's `jwks`, else the key set meshd fetched from its
  `jwksUri` (or its issuer's OpenID discovery) and holds in the World, else a placeholder no token verifies
  against (`NO_KEYS_JWKS`: fail closed, as istiod does while it has no keys).
- A policy whose spec failed validation is kept with its selector and fails closed: one provider that reads
  its token locations and verifies nothing (`refused_provider`).

What a workload gets is a value (`JwtProviders`): equal inputs give equal filters, and caches key on it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass

from envoy.config.core.v3 import base_pb2
from envoy.config.route.v3 import route_components_pb2
from envoy.extensions.filters.http.jwt_authn.v3 import config_pb2 as jwt_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2
from google.protobuf import empty_pb2

from meshd.api.jwks import NO_KEYS_JWKS, JwksError, normalize_jwks
from meshd.api.meta import InvalidResource
from meshd.api.request_authentication import JwtRule, RequestAuthentication, key_source
from meshd.translate.authz.selection import target_problem, targets_workload
from meshd.translate.proto import pack

JWT_AUTHN = "envoy.filters.http.jwt_authn"
PAYLOAD_METADATA_KEY = "payload"  # dynamic metadata `envoy.filters.http.jwt_authn` -> `payload`
PROVIDER_PREFIX = "origins-"
Policies = Mapping[str, tuple[RequestAuthentication, ...]]


@dataclass(frozen=True)
class JwtProvider:
    """One jwtRule as Envoy verifies it, its keys resolved."""

    issuer: str
    audiences: tuple[str, ...]
    keys: str  # inline JWKS (canonical JSON)
    from_headers: tuple[tuple[str, str], ...]  # (name, prefix)
    from_params: tuple[str, ...]
    from_cookies: tuple[str, ...]
    forward: bool
    payload_header: str
    claim_headers: tuple[tuple[str, str], ...]  # (header, claim)


JwtProviders = tuple[JwtProvider, ...]


def applicable(
    policies: Policies, *, namespace: str, labels: Mapping[str, str], root_namespace: str
) -> list[RequestAuthentication]:
    """The RequestAuthentications of a workload: mesh-wide, namespace-wide, then by selector or by a
    Gateway/GatewayClass target (a gateway workload's labels; GatewayClass from the root namespace), each
    oldest first."""

    def wide(policy: RequestAuthentication) -> bool:
        return not policy.spec.has_selector and not policy.spec.targets

    def targeted(policy: RequestAuthentication) -> bool:
        at = policy.metadata.namespace
        return any(
            targets_workload(t, policy_namespace=at, namespace=namespace, labels=labels, root_namespace=root_namespace)
            for t in policy.spec.targets
        )

    found = [p for p in policies.get(root_namespace, ()) if wide(p)]
    local = policies.get(namespace, ())
    if namespace != root_namespace:
        found += [p for p in local if wide(p)]
    found += [p for p in local if p.spec.has_selector and p.selects(dict(labels))]
    found += [p for p in local if targeted(p)]
    if namespace != root_namespace:
        found += [p for p in policies.get(root_namespace, ()) if targeted(p)]  # GatewayClass targets
    return found


def inline_keys(jwks: str) -> str:
    """A rule's inline `jwks` as Envoy gets it (canonical, usable keys only)."""
    try:
        return normalize_jwks(jwks).text
    except JwksError:  # refused by validation: never reached with an accepted policy
        return NO_KEYS_JWKS


def _keys(rule: JwtRule, fetched: Mapping[str, str], inline: Callable[[str], str]) -> str:
    if rule.jwks:
        return inline(rule.jwks)
    source = key_source(rule)
    return fetched.get(source.url, NO_KEYS_JWKS) if source is not None else NO_KEYS_JWKS


def provider(rule: JwtRule, fetched: Mapping[str, str], inline: Callable[[str], str] = inline_keys) -> JwtProvider:
    return JwtProvider(
        issuer=rule.issuer,
        audiences=tuple(rule.audiences),
        keys=_keys(rule, fetched, inline),
        from_headers=tuple((h.name, h.prefix) for h in rule.from_headers),
        from_params=tuple(rule.from_params),
        from_cookies=tuple(rule.from_cookies),
        forward=rule.forward_original_token,
        payload_header=rule.output_payload_to_header,
        claim_headers=tuple((c.header, c.claim) for c in rule.output_claim_to_headers),
    )


def workload_providers(
    policies: Policies,
    fetched: Mapping[str, str],
    *,
    namespace: str,
    labels: Mapping[str, str],
    root_namespace: str,
    inline: Callable[[str], str] = inline_keys,
) -> JwtProviders:
    """The providers of a workload with these labels in this namespace (empty: no jwt_authn filter).
    `inline`: normalises an inline `jwks` (callers with many workloads pass a memoised one)."""
    chosen = applicable(policies, namespace=namespace, labels=labels, root_namespace=root_namespace)
    return tuple(
        found
        for policy in chosen
        for found in (
            (refused_provider(policy),)
            if policy.refusal is not None
            else (provider(rule, fetched, inline) for rule in policy.spec.jwt_rules)
        )
    )


def refused_provider(policy: RequestAuthentication) -> JwtProvider:
    """A policy whose spec failed validation fails closed: a provider that reads where its tokens may be
    (Envoy's default locations and those its rules name) and verifies none (an issuer no token carries, the
    placeholder keys). A token there is rejected unless another policy's provider verifies it."""
    where = policy.refused_locations
    return JwtProvider(
        issuer=f"meshd: refused RequestAuthentication {policy.metadata.namespace}/{policy.metadata.name}",
        audiences=(),
        keys=NO_KEYS_JWKS,
        from_headers=where.headers,
        from_params=where.params,
        from_cookies=where.cookies,
        forward=False,
        payload_header="",
        claim_headers=(),
    )


def _envoy_provider(p: JwtProvider) -> jwt_pb2.JwtProvider:
    out = jwt_pb2.JwtProvider(
        issuer=p.issuer,
        audiences=list(p.audiences),
        local_jwks=base_pb2.DataSource(inline_string=p.keys),
        forward=p.forward,
        from_params=list(p.from_params),
        from_cookies=list(p.from_cookies),
        forward_payload_header=p.payload_header,
        payload_in_metadata=PAYLOAD_METADATA_KEY,
    )
    out.from_headers.extend(jwt_pb2.JwtHeader(name=name, value_prefix=prefix) for name, prefix in p.from_headers)
    out.claim_to_headers.extend(
        jwt_pb2.JwtClaimToHeader(header_name=header, claim_name=claim) for header, claim in p.claim_headers
    )
    return out


def jwt_authn_filter(providers: Sequence[JwtProvider]) -> hcm_pb2.HttpFilter:
    """The filter verifying tokens of any of the providers; a request without a token passes."""
    config = jwt_pb2.JwtAuthentication(bypass_cors_preflight=True)
    requirements = []
    for i, p in enumerate(providers):
        name = f"{PROVIDER_PREFIX}{i}"
        config.providers[name].CopyFrom(_envoy_provider(p))
        requirements.append(jwt_pb2.JwtRequirement(provider_name=name))
    requirements.append(jwt_pb2.JwtRequirement(allow_missing=empty_pb2.Empty()))
    config.rules.append(
        jwt_pb2.RequirementRule(
            match=route_components_pb2.RouteMatch(prefix="/"),
            requires=jwt_pb2.JwtRequirement(requires_any=jwt_pb2.JwtRequirementOrList(requirements=requirements)),
        )
    )
    return hcm_pb2.HttpFilter(name=JWT_AUTHN, typed_config=pack(config))


def check_policies(policies: Policies) -> Iterator[InvalidResource]:
    """The errors of the policies (per World, whatever proxies are connected): a spec that failed validation
    (kept to fail closed), a rule with no keys anywhere (its tokens are all rejected), an ignored `jwksUri`."""
    for found in policies.values():
        for policy in found:
            if policy.refusal is not None:
                yield policy.refusal
                continue
            for i, rule in enumerate(policy.spec.jwt_rules):
                field = f"spec.jwtRules[{i}]"
                if rule.jwks and rule.jwks_uri:
                    yield InvalidResource(
                        policy.key,
                        f"{field}.jwksUri",
                        "ignored: jwks is set and wins (as in Istio); remove one of them",
                        severity="warning",
                    )
                elif not rule.jwks and key_source(rule) is None:
                    yield InvalidResource(
                        policy.key,
                        f"{field}.jwksUri",
                        f"no jwks, no jwksUri, and the issuer {rule.issuer!r} is not an http(s) URL to discover keys "
                        "from: every token of this rule is rejected",
                    )


def target_errors(policies: Policies, *, root_namespace: str) -> Iterator[InvalidResource]:
    """Gateway targets that select nothing (another namespace; a GatewayClass outside the root namespace)."""
    for found in policies.values():
        for policy in found:
            spec = policy.spec
            for i, target in enumerate(spec.targets):
                where = "spec.targetRef" if spec.target_ref is not None else f"spec.targetRefs[{i}]"
                problem = target_problem(
                    target, policy_namespace=policy.metadata.namespace, root_namespace=root_namespace
                )
                if problem is not None:
                    yield InvalidResource(policy.key, where, problem)
