"""security.istio.io RequestAuthentication (v1, v1beta1): the JWTs a workload's sidecar verifies.

Every field of Istio's schema is modelled and checked as Istio validates it (plus what Envoy would refuse),
so admission, standalone files and translation give the same message. Unknown fields are refused, never
dropped. Fields Istio added that meshd does not implement yet, and `targetRef`/`targetRefs` to a Service or
ServiceEntry (Istio attaches those to waypoints, which meshd does not serve), are refused with a named error.
A `targetRef` to a gateway.networking.k8s.io Gateway or GatewayClass attaches the policy to the gateway
workloads labelled with its name (`gateway.networking.k8s.io/gateway-name` / `gateway-class-name`).

Scope, as Istio: a policy in the root namespace without a selector applies to the whole mesh, one without a
selector to its namespace, one with a selector to the matching workloads of its namespace; every policy that
applies to a workload counts (their rules are combined, translate/jwt_authn.py).

A policy whose spec fails validation is not dropped (parse.FAIL_CLOSED): `refused_request_authentication`
keeps its selector and where its tokens may be, so that its workloads reject those tokens (fail closed).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import ConfigDict, Field, PrivateAttr, ValidationError, model_validator

from meshd.api.jwks import JwksError, normalize_jwks
from meshd.api.meta import InvalidResource, ObjectMeta, Resource, StrictModel, refused
from meshd.api.values import Duration

_TOKEN = re.compile(r"^[!#$%&'*+\-.^_`|~0-9a-zA-Z]+$")  # an HTTP header (or cookie) name
_CLAIM_HEADER = re.compile(r"^[-_A-Za-z0-9]+$")  # Istio's CRD pattern for outputClaimToHeaders[].header
_GROUP = re.compile(r"^$|^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_KIND = re.compile(r"^[a-zA-Z]([-a-zA-Z0-9]*[a-zA-Z0-9])?$")
_RESERVED_HEADERS = frozenset({"host", "content-length", "transfer-encoding", "connection"})
MAX_URI = 2048
# Fields of newer Istio releases meshd does not implement: refused with this name, never ignored.
UNSUPPORTED_RULE_FIELDS = ("spaceDelimitedClaims", "presence", "failureMode", "failedStatusInMetadata")
_NEWER = "a field of newer Istio releases meshd does not implement yet (refused rather than ignored)"


def _header_name(name: str, what: str) -> None:
    if not _TOKEN.match(name):
        raise ValueError(f"{what}: {name!r} is not a valid HTTP header name")
    if name.lower() in _RESERVED_HEADERS:
        raise ValueError(f"{what}: the {name} header cannot be set from a token")


def _printable(value: str, what: str) -> None:
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in value):
        raise ValueError(f"{what}: {value!r} contains a control character")


class WorkloadSelector(StrictModel):
    match_labels: dict[str, str] = Field(default_factory=dict)


class JwtHeader(StrictModel):
    name: str = Field(min_length=1)
    prefix: str = ""

    @model_validator(mode="after")
    def _check(self) -> JwtHeader:
        if not _TOKEN.match(self.name):
            raise ValueError(f"name: {self.name!r} is not a valid HTTP header name")
        _printable(self.prefix, "prefix")
        return self


class ClaimToHeader(StrictModel):
    header: str = Field(min_length=1)
    claim: str = Field(min_length=1)

    @model_validator(mode="after")
    def _check(self) -> ClaimToHeader:
        if not _CLAIM_HEADER.match(self.header):
            raise ValueError(f"header: {self.header!r} must match {_CLAIM_HEADER.pattern} (Istio's rule)")
        if self.header.lower() in _RESERVED_HEADERS:
            raise ValueError(f"header: the {self.header} header cannot be set from a claim")
        _printable(self.claim, "claim")
        return self


def check_jwks_uri(uri: str) -> str:
    """An http(s) URL with a host, as Istio parses `jwksUri`."""
    _printable(uri, "jwksUri")
    if len(uri) > MAX_URI:
        raise ValueError(f"longer than {MAX_URI} characters")
    try:
        parts = urlsplit(uri)
        _ = parts.port  # raises on a port that is not 0..65535
    except ValueError as err:
        raise ValueError(f"{uri!r} is not a URL: {err}") from None
    if parts.scheme not in ("http", "https"):
        raise ValueError(f"{uri!r} must be an http:// or https:// URL")
    if not parts.hostname:
        raise ValueError(f"{uri!r} has no host")
    if parts.username is not None or parts.password is not None:
        raise ValueError("credentials in the URL are not supported (they would end up in logs and statuses)")
    return uri


def _alt_name(schema: dict[str, Any]) -> None:
    """Istio's CRD also names `jwksUri` `jwks_uri` (a kubebuilder altName): a strict schema must keep it."""
    schema["properties"]["jwks_uri"] = {"type": "string", "description": "jwksUri under its other name"}


class JwtRule(StrictModel):
    model_config = ConfigDict(json_schema_extra=_alt_name)

    issuer: str = Field(min_length=1)
    audiences: list[str] = Field(default_factory=list)
    jwks_uri: str = ""
    jwks: str = ""
    from_headers: list[JwtHeader] = Field(default_factory=list)
    from_params: list[str] = Field(default_factory=list)
    from_cookies: list[str] = Field(default_factory=list)
    output_payload_to_header: str = ""
    output_claim_to_headers: list[ClaimToHeader] = Field(default_factory=list)
    forward_original_token: bool = False
    timeout: Duration | None = None
    # newer Istio fields: declared so the CRD keeps them and meshd can refuse them by name
    space_delimited_claims: list[str] | None = refused(_NEWER)
    presence: str | None = refused(_NEWER)
    failure_mode: str | None = refused(_NEWER)
    failed_status_in_metadata: bool | None = refused(_NEWER)

    @model_validator(mode="after")
    def _check(self) -> JwtRule:
        _printable(self.issuer, "issuer")
        for i, audience in enumerate(self.audiences):
            if not audience:
                raise ValueError(f"audiences[{i}]: must be a non-empty string")
            _printable(audience, f"audiences[{i}]")
        if self.jwks_uri:
            try:
                check_jwks_uri(self.jwks_uri)
            except ValueError as err:
                raise ValueError(f"jwksUri: {err}") from None
        if self.jwks:
            try:
                keys = normalize_jwks(self.jwks)
            except JwksError as err:
                raise ValueError(f"jwks: {err}") from None
            if keys.malformed:
                raise ValueError(f"jwks: {keys.malformed[0]} (Envoy would refuse the whole key set)")
        for field, names in (("fromParams", self.from_params), ("fromCookies", self.from_cookies)):
            for i, name in enumerate(names):
                if not name:
                    raise ValueError(f"{field}[{i}]: must be a non-empty string")
                if field == "fromCookies" and not _TOKEN.match(name):
                    raise ValueError(f"{field}[{i}]: {name!r} is not a valid cookie name")
                _printable(name, f"{field}[{i}]")
        if self.output_payload_to_header:
            _header_name(self.output_payload_to_header, "outputPayloadToHeader")
        seen: set[str] = set()
        for i, item in enumerate(self.output_claim_to_headers):
            if item.header.lower() in seen:
                raise ValueError(f"outputClaimToHeaders[{i}].header: {item.header!r} is set twice (must be unique)")
            seen.add(item.header.lower())
        return self


def _snake(camel: str) -> str:
    return re.sub(r"[A-Z]", lambda m: "_" + m.group(0).lower(), camel)


# targetRef kinds: attached to gateway workloads by their labels (translate/jwt_authn.py); the waypoint
# kinds Istio also accepts are refused by name (meshd serves no waypoint)
GATEWAY_TARGETS = frozenset({("gateway.networking.k8s.io", "Gateway"), ("gateway.networking.k8s.io", "GatewayClass")})
WAYPOINT_TARGETS = frozenset({("", "Service"), ("core", "Service"), ("networking.istio.io", "ServiceEntry")})


class PolicyTargetReference(StrictModel):
    group: str = ""
    kind: str = Field(min_length=1, max_length=63)
    name: str = Field(min_length=1, max_length=253)
    namespace: str = ""

    @model_validator(mode="after")
    def _check(self) -> PolicyTargetReference:
        if len(self.group) > 253 or not _GROUP.match(self.group):
            raise ValueError(f"group: {self.group!r} is not an API group name")
        if not _KIND.match(self.kind):
            raise ValueError(f"kind: {self.kind!r} is not a kind name")
        return self


class RequestAuthenticationSpec(StrictModel):
    selector: WorkloadSelector | None = None
    target_ref: PolicyTargetReference | None = None
    target_refs: list[PolicyTargetReference] = Field(default_factory=list, max_length=16)
    jwt_rules: list[JwtRule] = Field(default_factory=list, max_length=4096)

    @model_validator(mode="after")
    def _check(self) -> RequestAuthenticationSpec:
        if self.target_ref is not None and self.target_refs:
            raise ValueError("targetRef: only one of targetRef or targetRefs can be set")
        targets = [("targetRef", self.target_ref)] if self.target_ref is not None else []
        targets += [(f"targetRefs[{i}]", ref) for i, ref in enumerate(self.target_refs)]
        if targets and self.selector is not None:
            raise ValueError(f"{targets[0][0]}: only one of targetRefs or selector can be set")
        for where, ref in targets:
            if (ref.group, ref.kind) in GATEWAY_TARGETS:
                continue
            if (ref.group, ref.kind) in WAYPOINT_TARGETS:
                raise ValueError(
                    f"{where}.kind: Istio attaches a RequestAuthentication targeting a {ref.kind} to its waypoint, "
                    "which meshd does not serve; select the sidecars with spec.selector"
                )
            raise ValueError(
                f"{where}.kind: {ref.group or 'core'}/{ref.kind} is not a kind Istio attaches a RequestAuthentication"
                " to (gateway.networking.k8s.io/Gateway or GatewayClass; core/Service and "
                "networking.istio.io/ServiceEntry for waypoints)"
            )
        return self

    @property
    def targets(self) -> list[PolicyTargetReference]:
        return [self.target_ref] if self.target_ref is not None else list(self.target_refs)

    @property
    def has_selector(self) -> bool:
        """An absent or empty selector makes a namespace-wide (in the root namespace, mesh-wide) policy."""
        return self.selector is not None and bool(self.selector.match_labels)


@dataclass(frozen=True)
class TokenLocations:
    """Where a refused policy's tokens may be: Envoy's defaults plus what its rules name and can be read."""

    headers: tuple[tuple[str, str], ...] = (("Authorization", "Bearer "),)  # (name, prefix)
    params: tuple[str, ...] = ("access_token",)
    cookies: tuple[str, ...] = ()


class RequestAuthentication(Resource):
    kind: Literal["RequestAuthentication"]
    spec: RequestAuthenticationSpec = Field(default_factory=RequestAuthenticationSpec)
    # Set on a policy whose spec failed validation (`refused_request_authentication`; never read from a
    # document): what was wrong, and where its tokens may be. Its `spec` then holds only its selector.
    _refusal: InvalidResource | None = PrivateAttr(default=None)
    _refused_locations: TokenLocations = PrivateAttr(default_factory=TokenLocations)

    def selects(self, labels: dict[str, str]) -> bool:
        selector = self.spec.selector
        return selector is not None and all(labels.get(k) == v for k, v in selector.match_labels.items())

    @property
    def refusal(self) -> InvalidResource | None:
        return self._refusal

    @property
    def refused_locations(self) -> TokenLocations:
        return self._refused_locations


def _locations(rules: object) -> TokenLocations:
    """The token locations a refused policy's rules name, those that read (besides Envoy's defaults)."""
    headers = dict(TokenLocations().headers)
    params: list[str] = list(TokenLocations().params)
    cookies: list[str] = []
    for rule in rules if isinstance(rules, list) else []:
        if not isinstance(rule, dict):
            continue
        from_headers = rule.get("fromHeaders")
        for header in from_headers if isinstance(from_headers, list) else []:
            name = header.get("name") if isinstance(header, dict) else None
            prefix = header.get("prefix", "") if isinstance(header, dict) else ""
            if isinstance(name, str) and _TOKEN.match(name) and isinstance(prefix, str) and prefix.isprintable():
                headers.setdefault(name, prefix)
        for field, found in (("fromParams", params), ("fromCookies", cookies)):
            values = rule.get(field)
            for value in values if isinstance(values, list) else []:
                if isinstance(value, str) and _TOKEN.match(value) and value not in found:
                    found.append(value)
    return TokenLocations(tuple(headers.items()), tuple(params), tuple(cookies))


def refused_request_authentication(doc: dict[str, Any], error: InvalidResource) -> RequestAuthentication | None:
    """A policy whose spec failed validation, kept so that it fails closed on its workloads (every token
    presented where its rules, or Envoy's defaults, look is rejected): its metadata, its selector if that
    reads (else it is namespace-wide), or its gateway targets, and its token locations. None when the metadata
    is unreadable, and for a policy whose `targetRef`/`targetRefs` do not name gateways (refused: it attaches
    to nothing meshd serves)."""
    try:
        metadata = ObjectMeta.model_validate(doc.get("metadata"))
    except (ValidationError, TypeError, ValueError):
        return None
    raw = doc.get("spec")
    spec: dict[str, Any] = raw if isinstance(raw, dict) else {}
    if "targetRef" in spec or "targetRefs" in spec:
        try:  # gateway targets that read on their own: the policy fails closed on those gateways
            scope = RequestAuthenticationSpec.model_validate(
                {k: spec[k] for k in ("targetRef", "targetRefs") if k in spec}
            )
        except (ValidationError, TypeError, ValueError):
            return None
    else:
        try:
            selector = WorkloadSelector.model_validate(spec["selector"]) if spec.get("selector") is not None else None
        except (ValidationError, TypeError, ValueError):
            selector = None
        scope = RequestAuthenticationSpec(selector=selector)
    policy = RequestAuthentication(
        api_version=str(doc.get("apiVersion")),
        kind="RequestAuthentication",
        metadata=metadata,
        spec=scope,
    )
    policy._refusal = error
    policy._refused_locations = _locations(spec.get("jwtRules"))
    return policy


DISCOVERY_PATH = "/.well-known/openid-configuration"


@dataclass(frozen=True, order=True)
class KeySource:
    """Where meshd fetches a rule's keys: its `jwksUri`, or (no `jwksUri`, no `jwks`) the OpenID
    discovery document of its issuer, whose `jwks_uri` names the key set."""

    url: str
    discovery: bool = False


def key_source(rule: JwtRule) -> KeySource | None:
    """None when the rule's keys are inline (`jwks`, which wins over `jwksUri` as in Istio) or when there is
    nowhere to fetch them from (no `jwksUri` and an issuer that is not an http(s) URL)."""
    if rule.jwks:
        return None
    if rule.jwks_uri:
        return KeySource(rule.jwks_uri)
    try:
        check_jwks_uri(rule.issuer)
    except ValueError:
        return None
    return KeySource(rule.issuer.rstrip("/") + DISCOVERY_PATH, discovery=True)
