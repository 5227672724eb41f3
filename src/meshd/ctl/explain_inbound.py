"""The destination side of `meshd explain`: what the server proxy of the chosen endpoint does with the request,
read from the config meshd serves it, the way Envoy applies it:
- peer authentication: the inbound filter chains for the port say which transports the workload's
  PeerAuthentication admits (mutual TLS only: STRICT; both: PERMISSIVE; plaintext only: DISABLE), and the
  client's cluster says which one it sends; a mismatch is a refused connection;
- authorization: the RBAC filters of the chain's HTTP connection manager (Istio's order: CUSTOM, DENY, ALLOW;
  AUDIT decides nothing), with the route's per-filter override, evaluated against the request; the decision
  names the policy (Istio's RBAC policy names `ns[NS]-policy[NAME]-rule[N]`) that made it.

Evaluation is three-valued: a matcher explain cannot decide (the caller's identity when not given with
`--from-identity`, JWT claims, filter metadata) is "unknown", and a decision that depends on one says so
instead of guessing. Pure: protos in, steps out."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import address_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.config.rbac.v3 import rbac_pb2
from envoy.config.route.v3 import route_components_pb2
from envoy.extensions.filters.http.rbac.v3 import rbac_pb2 as http_rbac_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2
from envoy.extensions.transport_sockets.tls.v3 import tls_pb2
from envoy.type.matcher.v3 import string_pb2
from google.protobuf import message

HCM = "envoy.filters.network.http_connection_manager"
_POLICY = re.compile(r"^ns\[([^\]]*)\]-policy\[([^\]]*)\]-rule\[(\d+)\]$")
Tri = bool | None  # True, False, or unknown


@dataclass(frozen=True)
class Call:
    """The request as the server proxy sees it."""

    host: str
    path: str
    method: str
    headers: Mapping[str, str]
    server_ip: str
    server_port: int
    client_ip: str
    client_identity: str | None  # the SPIFFE identity the client presents over mTLS; None: not known
    mtls: bool  # the client's cluster sends mutual TLS
    sni: str


@dataclass(frozen=True)
class Inbound:
    steps: list[tuple[str, str, str]]  # (step, choice, why)
    outcome: str  # "" when the request goes through to the application


def policy_label(name: str) -> str:
    m = _POLICY.match(name)
    return f"AuthorizationPolicy {m.group(1)}/{m.group(2)} (rule {m.group(3)})" if m else name


def explain_inbound(config: Mapping[str, Sequence[message.Message]], call: Call) -> Inbound:
    steps: list[tuple[str, str, str]] = []
    listeners = [m for m in config.get("listeners", ()) if isinstance(m, listener_pb2.Listener)]
    chains = _inbound_chains(listeners, call)
    if not chains:
        return Inbound([("peer auth", "none", f"the server proxy has no inbound chain for port {call.server_port}")],
                       "not accepted by the server proxy")  # fmt: skip
    tls = [c for c in chains if _terminates_tls(c)]
    plain = [c for c in chains if not _terminates_tls(c)]
    mode = "STRICT" if tls and not plain else "PERMISSIVE" if tls else "DISABLE"
    admits = {"STRICT": "mutual TLS only", "PERMISSIVE": "mutual TLS and plaintext", "DISABLE": "plaintext only"}
    sends = "mutual TLS" if call.mtls else "plaintext"
    why = (
        f"the workload's PeerAuthentication mode is {mode} (its inbound chains admit {admits[mode]}); "
        f"the client sends {sends}"
    )
    chosen = (tls or [None])[0] if call.mtls else (plain or [None])[0]
    if chosen is None:
        steps.append(("peer auth", f"{mode}: refused", why))
        return Inbound(
            steps, f"connection refused by the server proxy (PeerAuthentication {mode}, client sends {sends})"
        )
    who = call.client_identity or "an identity not given (--from-identity)"
    steps.append(("peer auth", f"{mode}: {sends}" + (f" as {who}" if call.mtls else ""), why))
    filters = {f.name: f for f in chosen.filters}
    if HCM not in filters:
        steps.append(("authorization", "not evaluated", "the chain carries TCP; explain evaluates HTTP authorization"))
        return Inbound(steps, "")
    hcm = hcm_pb2.HttpConnectionManager()
    filters[HCM].typed_config.Unpack(hcm)
    overrides = _route_overrides(hcm, call)
    decision, outcome = _authorize(hcm, overrides, call)
    steps.append(decision)
    return Inbound(steps, outcome)


def _terminates_tls(chain: listener_pb2.FilterChain) -> bool:
    """A chain that terminates (mutual) TLS: it matches TLS, or its transport socket is a TLS server context."""
    if chain.filter_chain_match.transport_protocol == "tls":
        return True
    return bool(
        chain.HasField("transport_socket")
        and chain.transport_socket.typed_config.Is(tls_pb2.DownstreamTlsContext.DESCRIPTOR)
    )


def _inbound_chains(listeners: Sequence[listener_pb2.Listener], call: Call) -> list[listener_pb2.FilterChain]:
    """The chains a connection to the endpoint lands on: its own listener (address:port), else the capture
    listener's chains for the destination port (those without a port match as the fallback)."""
    for li in listeners:
        sa = li.address.socket_address
        if sa.port_value == call.server_port and sa.address in (call.server_ip, "0.0.0.0", "::"):
            chains = [c for c in li.filter_chains if not c.filter_chain_match.HasField("destination_port")]
            return chains or list(li.filter_chains)
    for li in listeners:
        if li.name == "virtualInbound":
            exact = [c for c in li.filter_chains if c.filter_chain_match.destination_port.value == call.server_port]
            if exact:
                return exact
            return [c for c in li.filter_chains if not c.filter_chain_match.HasField("destination_port")]
    return []


def _route_overrides(hcm: hcm_pb2.HttpConnectionManager, call: Call) -> Mapping[str, http_rbac_pb2.RBACPerRoute]:
    """The per-route RBAC configurations of the route the request takes (by Host and path prefix)."""
    if not hcm.HasField("route_config"):
        return {}
    for vhost in hcm.route_config.virtual_hosts:
        if not any(d in ("*", call.host, f"{call.host}:{call.server_port}") or
                   (d.startswith("*") and call.host.endswith(d[1:])) for d in vhost.domains):  # fmt: skip
            continue
        for route in vhost.routes:
            if route.match.prefix and not call.path.startswith(route.match.prefix):
                continue
            out = {}
            for name, packed in route.typed_per_filter_config.items():
                per = http_rbac_pb2.RBACPerRoute()
                if packed.Unpack(per):
                    out[name] = per
            return out
    return {}


def _authorize(
    hcm: hcm_pb2.HttpConnectionManager, overrides: Mapping[str, http_rbac_pb2.RBACPerRoute], call: Call
) -> tuple[tuple[str, str, str], str]:
    rbacs: list[tuple[str, rbac_pb2.RBAC]] = []
    for f in hcm.http_filters:
        config = http_rbac_pb2.RBAC()
        if not f.name.startswith("envoy.filters.http.rbac") or not f.typed_config.Unpack(config):
            continue
        if f.name in overrides:
            if not overrides[f.name].HasField("rbac"):
                continue  # disabled on this route
            config = overrides[f.name].rbac
        if config.HasField("rules") and config.rules.action in (rbac_pb2.RBAC.ALLOW, rbac_pb2.RBAC.DENY):
            rbacs.append((f.name, config.rules))
    custom = [f for f in hcm.http_filters if f.name == "envoy.filters.http.ext_authz"]
    note = "; a CUSTOM policy applies: its external authorizer decides the requests its rules match" if custom else ""
    allow_applies = False
    for _, rules in rbacs:
        matched, unknown = _evaluate(rules, call)
        if rules.action == rbac_pb2.RBAC.DENY:
            if matched:
                label = policy_label(matched)
                return ("authorization", f"denied by {label}", "DENY policies are evaluated before ALLOW" + note), (
                    f"403 RBAC: access denied ({label})"
                )
            if unknown:
                return (
                    "authorization",
                    "undetermined",
                    f"DENY rule {policy_label(unknown)} depends on {_unknowns(call)}",
                ), ""
        else:
            allow_applies = True
            if matched:
                return (
                    "authorization",
                    f"allowed by {policy_label(matched)}",
                    "its rule matches the request" + note,
                ), ""
            if unknown:
                return (
                    "authorization",
                    "undetermined",
                    f"ALLOW rule {policy_label(unknown)} depends on {_unknowns(call)}",
                ), ""
    if allow_applies:
        return ("authorization", "denied: no ALLOW rule matches",
                "ALLOW policies apply to the workload, so a request no ALLOW rule matches is denied" + note), (
            "403 RBAC: access denied (no ALLOW policy matches)")  # fmt: skip
    return (
        "authorization",
        "allowed: no policy denies it",
        "no DENY rule matches and no ALLOW policy applies" + note,
    ), ""


def _unknowns(call: Call) -> str:
    return "the caller's identity (give --from-identity)" if call.client_identity is None else "JWT claims or metadata"


def _evaluate(rules: rbac_pb2.RBAC, call: Call) -> tuple[str, str]:
    """(the first policy that matches, the first whose match is unknown), by name order as Envoy."""
    unknown = ""
    for name in sorted(rules.policies):
        policy = rules.policies[name]
        result = _and(_or(_permission(p, call) for p in policy.permissions),
                      _or(_principal(p, call) for p in policy.principals))  # fmt: skip
        if result is True:
            return name, unknown
        if result is None and not unknown:
            unknown = name
    return "", unknown


def _or(values: Iterable[Tri]) -> Tri:
    seen_unknown = False
    for v in values:
        if v is True:
            return True
        seen_unknown |= v is None
    return None if seen_unknown else False


def _and(*values: Tri) -> Tri:
    if any(v is False for v in values):
        return False
    return None if any(v is None for v in values) else True


def _not(value: Tri) -> Tri:
    return None if value is None else not value


def _permission(p: rbac_pb2.Permission, call: Call) -> Tri:
    which = p.WhichOneof("rule")
    nested: dict[str, Callable[[], Tri]] = {
        "any": lambda: p.any,
        "and_rules": lambda: _and(*(_permission(r, call) for r in p.and_rules.rules)),
        "or_rules": lambda: _or(_permission(r, call) for r in p.or_rules.rules),
        "not_rule": lambda: _not(_permission(p.not_rule, call)),
        "header": lambda: _header(p.header, call),
        "url_path": lambda: _string(p.url_path.path, call.path.split("?", 1)[0]),
        "destination_port": lambda: p.destination_port == call.server_port,
        "destination_ip": lambda: _in_cidr(call.server_ip, p.destination_ip),
        "requested_server_name": lambda: _string(p.requested_server_name, call.sni),
    }
    return nested[which]() if which in nested else None


def _principal(p: rbac_pb2.Principal, call: Call) -> Tri:
    which = p.WhichOneof("identifier")
    identity = call.client_identity if call.mtls else ""
    nested: dict[str, Callable[[], Tri]] = {
        "any": lambda: p.any,
        "and_ids": lambda: _and(*(_principal(i, call) for i in p.and_ids.ids)),
        "or_ids": lambda: _or(_principal(i, call) for i in p.or_ids.ids),
        "not_id": lambda: _not(_principal(p.not_id, call)),
        "authenticated": lambda: None if identity is None else bool(identity) and _string(
            p.authenticated.principal_name, identity),
        "direct_remote_ip": lambda: _in_cidr(call.client_ip, p.direct_remote_ip),
        "remote_ip": lambda: _in_cidr(call.client_ip, p.remote_ip),
        "source_ip": lambda: _in_cidr(call.client_ip, p.source_ip),
        "header": lambda: _header(p.header, call),
        "url_path": lambda: _string(p.url_path.path, call.path.split("?", 1)[0]),
    }  # fmt: skip
    return nested[which]() if which in nested else None


def _header(h: route_components_pb2.HeaderMatcher, call: Call) -> Tri:
    headers = {k.lower(): v for k, v in call.headers.items()} | {
        ":method": call.method, ":authority": call.host, ":path": call.path, "host": call.host}  # fmt: skip
    value = headers.get(h.name.lower())
    which = h.WhichOneof("header_match_specifier")
    if which == "present_match":
        result: Tri = (value is not None) == h.present_match
    elif value is None:
        result = False
    elif which == "string_match":
        result = _string(h.string_match, value)
    else:
        return None
    return _not(result) if h.invert_match else result


def _string(m: string_pb2.StringMatcher, value: str) -> bool:
    which = m.WhichOneof("match_pattern")
    subject = value.lower() if m.ignore_case else value
    pattern = getattr(m, which) if which in ("exact", "prefix", "suffix", "contains") else ""
    pattern = pattern.lower() if m.ignore_case else pattern
    if which == "exact":
        return subject == pattern
    if which == "prefix":
        return subject.startswith(pattern)
    if which == "suffix":
        return subject.endswith(pattern)
    if which == "contains":
        return pattern in subject
    if which == "safe_regex":
        return re.fullmatch(m.safe_regex.regex, value) is not None
    return False


def _in_cidr(ip: str, cidr: address_pb2.CidrRange) -> bool:
    length = cidr.prefix_len.value if cidr.HasField("prefix_len") else None
    try:
        network = ipaddress.ip_network(
            cidr.address_prefix if length is None else f"{cidr.address_prefix}/{length}", strict=False
        )
        return ipaddress.ip_address(ip) in network
    except ValueError:
        return False


def client_transport(cluster: cluster_pb2.Cluster | None, endpoint: endpoint_pb2.LbEndpoint | None) -> tuple[bool, str]:
    """(whether the client's cluster sends mutual TLS to this endpoint, the SNI it sends): its transport
    socket, or the transport socket match the endpoint's metadata selects (auto mTLS: endpoints with a sidecar)."""
    if cluster is None:
        return False, ""
    sockets = []
    if endpoint is not None:
        labels = endpoint.metadata.filter_metadata.get("envoy.transport_socket_match")
        for match in cluster.transport_socket_matches:
            wanted = dict(match.match.items())
            have = dict(labels.items()) if labels is not None else {}
            if all(have.get(k) == v for k, v in wanted.items()):
                sockets.append(match.transport_socket)
                break
    if cluster.HasField("transport_socket"):
        sockets.append(cluster.transport_socket)
    for socket in sockets[:1]:
        context = tls_pb2.UpstreamTlsContext()
        if socket.typed_config.Unpack(context):
            sans = context.common_tls_context.combined_validation_context.default_validation_context
            spiffe = any(
                (m.matcher.exact or m.matcher.prefix).startswith("spiffe://")
                for m in sans.match_typed_subject_alt_names
            )
            return spiffe, context.sni
    return False, ""


def first_endpoint(
    config: Mapping[str, Sequence[message.Message]], cluster_name: str
) -> tuple[cluster_pb2.Cluster | None, endpoint_pb2.LbEndpoint | None]:
    """The client's cluster and the first endpoint of its load assignment (EDS, else inline)."""
    cluster = next(
        (m for m in config.get("clusters", ()) if isinstance(m, cluster_pb2.Cluster) and m.name == cluster_name), None
    )
    cla = next(
        (
            m
            for m in config.get("endpoints", ())
            if isinstance(m, endpoint_pb2.ClusterLoadAssignment) and m.cluster_name == cluster_name
        ),
        cluster.load_assignment if cluster is not None and cluster.HasField("load_assignment") else None,
    )
    for locality in cla.endpoints if cla is not None else ():
        for lb in locality.lb_endpoints:
            return cluster, lb
    return cluster, None
