"""The policies of one workload -> the filters of its inbound side (`InboundAuthz`), as Istio builds them.

Evaluation order CUSTOM, DENY, ALLOW (AUDIT only marks): the HTTP filters, before the router (and after
the jwt_authn filter, which writes the verified token the JWT matchers read), are
1. AUDIT: an RBAC filter with action LOG (marks matched requests in dynamic metadata, decides nothing);
2. CUSTOM: an RBAC filter holding the CUSTOM rules as shadow rules, then ext_authz for what they match;
3. DENY: an RBAC filter (action DENY) with the DENY rules; dry-run ones as shadow rules
   (stat prefix `istio_dry_run_deny_`);
4. ALLOW: an RBAC filter (action ALLOW) when any ALLOW policy applies, even one without rules (which then
   allows nothing); dry-run ones as shadow rules (`istio_dry_run_allow_`).
A denied request gets 403 `RBAC: access denied`. TCP chains get the same as network RBAC filters (stat
prefix `tcp.`, rules adapted as `rules.py` says) before tcp_proxy; a denied connection is closed.

Failing closed, as Istio (and never more open than it):
- a policy whose spec failed validation: ALLOW becomes an ALLOW policy without rules; DENY, CUSTOM or an
  unreadable action deny everything (`<policy>-refused`); AUDIT decides nothing anyway;
- a CUSTOM policy whose provider cannot be used, or a workload selected by CUSTOM policies of two
  providers (Istio allows one): deny everything;
- a CUSTOM policy of an HTTP provider on TCP ports (Envoy's network ext_authz is gRPC only): the
  connections its rules match are denied;
- a policy with targets this release cannot attach, on the workloads they stand for (`selection.py`).
A dry-run policy never enforces, not even when refused (its denial goes to the shadow rules).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from envoy.config.listener.v3 import listener_components_pb2
from envoy.config.rbac.v3 import rbac_pb2
from envoy.extensions.filters.http.rbac.v3 import rbac_pb2 as http_rbac_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2
from envoy.extensions.filters.network.rbac.v3 import rbac_pb2 as net_rbac_pb2

from meshd.api.authorization import AuthorizationPolicy
from meshd.api.meshconfig import ExtAuthzGrpc, ExtAuthzHttp, MeshPolicy
from meshd.model.services import MeshService
from meshd.translate.authz import ext_authz
from meshd.translate.authz.rules import MATCH_ALL, rule_policy, tcp_rule_policy
from meshd.translate.authz.selection import Selected
from meshd.translate.proto import pack

HTTP_RBAC = "envoy.filters.http.rbac"
# Each RBAC filter of a connection manager has a name of its own, so that a route can carry a per-route
# configuration for each (bound mode, `ports.py`); the CUSTOM marker keeps the canonical name.
RBAC_NAMES = {"AUDIT": f"{HTTP_RBAC}.audit", "DENY": f"{HTTP_RBAC}.deny", "ALLOW": f"{HTTP_RBAC}.allow"}
NETWORK_RBAC = "envoy.filters.network.rbac"
TCP_STAT_PREFIX = "tcp."
DRY_RUN_PREFIX = {"ALLOW": "istio_dry_run_allow_", "DENY": "istio_dry_run_deny_"}
_ACTION = {"ALLOW": rbac_pb2.RBAC.ALLOW, "DENY": rbac_pb2.RBAC.DENY, "AUDIT": rbac_pb2.RBAC.LOG}
Policies = dict[str, rbac_pb2.Policy]


@dataclass(frozen=True, eq=False)
class InboundAuthz:
    """A workload's inbound authorization: its HTTP filters (before the router), its network filters
    (before tcp_proxy) and the path normalisation of its inbound HTTP connection managers. Compared
    by content (a digest), so it can be part of a cache key."""

    http_filters: tuple[hcm_pb2.HttpFilter, ...] = ()
    network_filters: tuple[listener_components_pb2.Filter, ...] = ()
    normalization: str = "BASE"
    policies: tuple[str, ...] = ()  # what applies, for /debug/authorizationz: "<ns>/<name> <how>"
    ext_authz_cluster: str = ""  # the provider's cluster its ext_authz filters call ("": none)
    digest: bytes = field(default=b"", repr=False)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, InboundAuthz) and other.digest == self.digest

    def __hash__(self) -> int:
        return hash(self.digest)


def _digest(http: Sequence[object], network: Sequence[object], normalization: str) -> bytes:
    hasher = hashlib.sha256(normalization.encode())
    for part in (*http, b"|", *network):
        hasher.update(part if isinstance(part, bytes) else part.SerializeToString(deterministic=True))  # type: ignore[attr-defined]
    return hasher.digest()


class _Rules:
    """The RBAC policies of one action, HTTP and TCP, enforced and dry-run."""

    def __init__(self) -> None:
        self.present = False  # an enforced policy of this action applies (ALLOW: even without rules)
        self.http: Policies = {}
        self.tcp: Policies = {}
        self.http_dry: Policies = {}
        self.tcp_dry: Policies = {}

    def add(self, name: str, http: rbac_pb2.Policy, tcp: rbac_pb2.Policy | None, *, dry: bool) -> None:
        (self.http_dry if dry else self.http)[name] = http
        if tcp is not None:
            (self.tcp_dry if dry else self.tcp)[name] = tcp


def policy_name(policy: AuthorizationPolicy) -> str:
    return f"ns[{policy.metadata.namespace}]-policy[{policy.metadata.name}]"


def _custom_providers(
    policies: Sequence[AuthorizationPolicy], mesh: MeshPolicy, services: Mapping[str, MeshService]
) -> tuple[set[str], dict[str, str]]:
    """The provider names of the CUSTOM policies, and those that cannot be used (name -> why)."""
    names = {p.spec.provider.name for p in policies if p.refusal is None and p.action == "CUSTOM" and p.spec.provider}
    broken = {n: why for n in names if (why := ext_authz.provider_problem(n, mesh.provider(n), services))}
    return names, broken


def inbound_authz(
    selected: Selected, *, mesh: MeshPolicy, trust_domain: str, services: Mapping[str, MeshService]
) -> InboundAuthz:
    bundle = tuple(dict.fromkeys((trust_domain, *mesh.trust_domain_aliases)))
    by_action = {action: _Rules() for action in ("ALLOW", "DENY", "AUDIT", "CUSTOM")}
    deny, allow = by_action["DENY"], by_action["ALLOW"]
    providers, broken = _custom_providers(selected.policies, mesh, services)
    described: list[str] = []
    for policy in selected.policies:
        name, action, dry = policy_name(policy), policy.action, policy.dry_run
        described.append(
            f"{policy.metadata.namespace}/{policy.metadata.name} {action or 'unreadable'}"
            f"{' dry-run' if dry else ''}{' refused' if policy.refusal else ''}"
        )
        if policy.refusal is not None or action is None:
            if action == "ALLOW":
                allow.present |= not dry
            elif action != "AUDIT":
                deny.add(f"{name}-refused", MATCH_ALL, MATCH_ALL, dry=dry)
            continue
        rules = by_action[action]
        if action == "CUSTOM":
            provider = policy.spec.provider.name if policy.spec.provider else ""
            if provider in broken or len(providers) > 1:
                deny.add(f"{name}-provider", MATCH_ALL, MATCH_ALL, dry=False)
                continue
            dry = False  # dry-run is not supported for CUSTOM (reported): enforced
            name = f"{ext_authz.POLICY_PREFIX}-{name}"
        elif action == "AUDIT":
            dry = False  # AUDIT decides nothing: dry-run changes nothing
        elif not dry:
            rules.present = True
        for i, rule in enumerate(policy.spec.rules):
            http = rule_policy(rule, bundle=bundle)
            tcp = tcp_rule_policy(rule, action=action, bundle=bundle)
            rules.add(f"{name}-rule[{i}]", http, tcp, dry=dry)
    for policy in selected.unattached:
        described.append(f"{policy.metadata.namespace}/{policy.metadata.name} {policy.action} unattached")
        if policy.action == "ALLOW":
            allow.present |= not policy.dry_run
        elif policy.action != "AUDIT":
            deny.add(f"{policy_name(policy)}-unattached", MATCH_ALL, MATCH_ALL, dry=policy.dry_run)
    chosen = mesh.provider(next(iter(providers))) if len(providers) == 1 and not broken else None
    found = chosen.ext_authz if chosen is not None else None
    http_filters = _http_filters(by_action, found)
    network_filters = _network_filters(by_action, found)
    normalization = mesh.path_normalization
    calls = any(f.name == ext_authz.HTTP_FILTER for f in http_filters) or any(
        f.name == ext_authz.NETWORK_FILTER for f in network_filters
    )
    return InboundAuthz(
        http_filters=tuple(http_filters),
        network_filters=tuple(network_filters),
        normalization=normalization,
        policies=tuple(described),
        ext_authz_cluster=ext_authz.cluster(found) if calls and found is not None else "",
        digest=_digest(http_filters, network_filters, normalization),
    )


def _rbac(action: str, policies: Policies) -> rbac_pb2.RBAC:
    out = rbac_pb2.RBAC(action=_ACTION[action])
    for name in sorted(policies):
        out.policies[name].CopyFrom(policies[name])
    return out


def _http_rbac(action: str, rules: _Rules) -> hcm_pb2.HttpFilter | None:
    config = http_rbac_pb2.RBAC()
    if rules.present or rules.http:
        config.rules.CopyFrom(_rbac(action, rules.http))
    if rules.http_dry:
        config.shadow_rules.CopyFrom(_rbac(action, rules.http_dry))
        config.shadow_rules_stat_prefix = DRY_RUN_PREFIX[action]
    if not config.HasField("rules") and not config.HasField("shadow_rules"):
        return None
    return hcm_pb2.HttpFilter(name=RBAC_NAMES[action], typed_config=pack(config))


def _network_rbac(action: str, rules: _Rules) -> listener_components_pb2.Filter | None:
    config = net_rbac_pb2.RBAC(stat_prefix=TCP_STAT_PREFIX)
    if rules.present or rules.tcp:
        config.rules.CopyFrom(_rbac(action, rules.tcp))
    if rules.tcp_dry:
        config.shadow_rules.CopyFrom(_rbac(action, rules.tcp_dry))
        config.shadow_rules_stat_prefix = DRY_RUN_PREFIX[action]
    if not config.HasField("rules") and not config.HasField("shadow_rules"):
        return None
    return listener_components_pb2.Filter(name=NETWORK_RBAC, typed_config=pack(config))


def _custom_marker_http(policies: Policies) -> hcm_pb2.HttpFilter:
    config = http_rbac_pb2.RBAC(shadow_rules=_rbac("DENY", policies), shadow_rules_stat_prefix=ext_authz.SHADOW_PREFIX)
    return hcm_pb2.HttpFilter(name=HTTP_RBAC, typed_config=pack(config))


def _http_filters(
    by_action: dict[str, _Rules], provider: ExtAuthzHttp | ExtAuthzGrpc | None
) -> list[hcm_pb2.HttpFilter]:
    out: list[hcm_pb2.HttpFilter] = []
    audit = by_action["AUDIT"]
    if audit.http:
        out.append(
            hcm_pb2.HttpFilter(
                name=RBAC_NAMES["AUDIT"], typed_config=pack(http_rbac_pb2.RBAC(rules=_rbac("AUDIT", audit.http)))
            )
        )
    custom = by_action["CUSTOM"].http
    if custom and provider is not None:
        out += [_custom_marker_http(custom), ext_authz.http_filter(provider)]
    for action in ("DENY", "ALLOW"):
        found = _http_rbac(action, by_action[action])
        if found is not None:
            out.append(found)
    return out


def _network_filters(
    by_action: dict[str, _Rules], provider: ExtAuthzHttp | ExtAuthzGrpc | None
) -> list[listener_components_pb2.Filter]:
    out: list[listener_components_pb2.Filter] = []
    audit = by_action["AUDIT"]
    if audit.tcp:
        config = net_rbac_pb2.RBAC(stat_prefix=TCP_STAT_PREFIX, rules=_rbac("AUDIT", audit.tcp))
        out.append(listener_components_pb2.Filter(name=NETWORK_RBAC, typed_config=pack(config)))
    custom = by_action["CUSTOM"].tcp
    if custom and isinstance(provider, ExtAuthzGrpc):
        marker = net_rbac_pb2.RBAC(
            stat_prefix=TCP_STAT_PREFIX,
            shadow_rules=_rbac("DENY", custom),
            shadow_rules_stat_prefix=ext_authz.SHADOW_PREFIX,
        )
        out += [
            listener_components_pb2.Filter(name=NETWORK_RBAC, typed_config=pack(marker)),
            ext_authz.network_filter(provider),
        ]
    elif custom:  # an HTTP provider cannot check a TCP connection: what its rules match is denied
        by_action["DENY"].tcp.update({f"{name}-http-provider-on-tcp": policy for name, policy in custom.items()})
    for action in ("DENY", "ALLOW"):
        found = _network_rbac(action, by_action[action])
        if found is not None:
            out.append(found)
    return out


NO_AUTHZ = InboundAuthz(digest=_digest((), (), "BASE"))
