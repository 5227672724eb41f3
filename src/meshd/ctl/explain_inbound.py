"""The destination side of `meshd explain`: what the server proxy of the chosen endpoint does with the request,
read from the config meshd serves it, the way Envoy applies it:
- peer authentication: the inbound filter chains for the port say which transports the workload's
  PeerAuthentication admits (mutual TLS only: STRICT; both: PERMISSIVE; plaintext only: DISABLE), and the
  client's cluster says which one it sends; a mismatch is a refused connection. The inbound listener's
  metadata (`translate/peer_auth.py` `mtls_metadata`) names the PeerAuthentication that set the mode (for the
  request's target port), or "mesh default";
- authorization: the RBAC filters of the chain's HTTP connection manager (Istio's order: CUSTOM, DENY, ALLOW;
  AUDIT decides nothing), with the route's per-filter override, evaluated against the request; on a TCP chain
  its network RBAC filters, evaluated against the connection (ports, principals, namespaces, ipBlocks and
  their `not` forms, as meshd translated them for TCP); the decision names the policy (Istio's RBAC policy
  names `ns[NS]-policy[NAME]-rule[N]`) that made it.

Evaluation is three-valued: a matcher explain cannot decide (the caller's identity when not given with
`--from-identity`, JWT claims, filter metadata) is "unknown", and a decision that depends on one says so
instead of guessing. Pure: protos in, steps out."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import base_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.config.rbac.v3 import rbac_pb2
from envoy.config.route.v3 import route_components_pb2
from envoy.extensions.filters.http.rbac.v3 import rbac_pb2 as http_rbac_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2
from envoy.extensions.filters.network.rbac.v3 import rbac_pb2 as net_rbac_pb2
from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2
from envoy.extensions.transport_sockets.proxy_protocol.v3 import upstream_proxy_protocol_pb2
from envoy.extensions.transport_sockets.tls.v3 import tls_pb2
from google.protobuf import message

from meshd.ctl.explain_rbac import Call, evaluate
from meshd.translate.peer_auth import MESH_DEFAULT_SOURCE, METADATA_KEY

__all__ = ["Call", "Inbound", "client_transport", "explain_inbound", "first_endpoint", "policy_label"]

HCM = "envoy.filters.network.http_connection_manager"
TCP_PROXY = "envoy.filters.network.tcp_proxy"
NETWORK_RBAC = "envoy.filters.network.rbac"
_POLICY = re.compile(r"^ns\[([^\]]*)\]-policy\[([^\]]*)\]-rule\[(\d+)\]$")


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
    listener, chains = _inbound_chains(listeners, call)
    if listener is None or not chains:
        return Inbound([("peer auth", "none", f"the server proxy has no inbound chain for port {call.server_port}")],
                       "not accepted by the server proxy")  # fmt: skip
    target = _target_port(chains, call)
    chains = [c for c in chains if _serves(c, target, call)] or chains  # a listener shared by ports: this one's
    tls = [c for c in chains if _terminates_tls(c)]
    plain = [c for c in chains if not _terminates_tls(c)]
    mode = "STRICT" if tls and not plain else "PERMISSIVE" if tls else "DISABLE"
    admits = {"STRICT": "mutual TLS only", "PERMISSIVE": "mutual TLS and plaintext", "DISABLE": "plaintext only"}
    sends = "mutual TLS" if call.mtls else "plaintext"
    source = _mode_source(listener, target)
    why = (
        f"the workload's PeerAuthentication mode is {mode}, set by {source} (its inbound chains admit "
        f"{admits[mode]}); the client sends {sends}"
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
        decision, outcome = _authorize_tcp(chosen, call)
        steps.append(decision)
        return Inbound(steps, outcome)
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


def _inbound_chains(
    listeners: Sequence[listener_pb2.Listener], call: Call
) -> tuple[listener_pb2.Listener | None, list[listener_pb2.FilterChain]]:
    """The listener and chains a connection to the endpoint lands on: its own listener (address:port), else
    the capture listener's chains for the destination port (those without a port match as the fallback)."""
    for li in listeners:
        sa = li.address.socket_address
        inbound = li.traffic_direction == base_pb2.INBOUND  # not the proxy's own outbound listener on that port
        if inbound and sa.port_value == call.server_port and sa.address in (call.server_ip, "0.0.0.0", "::"):
            chains = [c for c in li.filter_chains if not c.filter_chain_match.HasField("destination_port")]
            return li, chains or list(li.filter_chains)
    for li in listeners:
        if li.name == "virtualInbound":
            exact = [c for c in li.filter_chains if c.filter_chain_match.destination_port.value == call.server_port]
            if exact:
                return li, exact
            return li, [c for c in li.filter_chains if not c.filter_chain_match.HasField("destination_port")]
    return None, []


def _target_port(chains: Sequence[listener_pb2.FilterChain], call: Call) -> int:
    """The workload port the request is for: the `inbound|<port>|...` cluster its route goes to (a listener
    shared by ports dispatches by Host), else the port the client connects to."""
    for chain in chains:
        parts = _chain_cluster(chain, call).split("|")
        if len(parts) >= 2 and parts[0] == "inbound" and parts[1].isdigit():
            return int(parts[1])
    return call.server_port


def _serves(chain: listener_pb2.FilterChain, target: int, call: Call) -> bool:
    """Whether the chain takes the request to the workload port `target` (its route, or its TCP cluster)."""
    return _target_port([chain], call) == target and _chain_cluster(chain, call).startswith(f"inbound|{target}|")


def _chain_cluster(chain: listener_pb2.FilterChain, call: Call) -> str:
    for f in chain.filters:
        if f.name == HCM:
            hcm = hcm_pb2.HttpConnectionManager()
            f.typed_config.Unpack(hcm)
            return _route_cluster(hcm, call)
        if f.name == TCP_PROXY:
            tcp = tcp_proxy_pb2.TcpProxy()
            f.typed_config.Unpack(tcp)
            return str(tcp.cluster)
    return ""


def _mode_source(listener: listener_pb2.Listener, port: int) -> str:
    """The PeerAuthentication the listener's metadata names for this port ("mesh default": none)."""
    entry = listener.metadata.filter_metadata.get(METADATA_KEY)
    if entry is None or "peer_authentication" not in entry.fields:
        return "an unknown PeerAuthentication (meshd did not record it)"
    ports = entry.fields.get("peer_authentication_ports")
    name = entry.fields["peer_authentication"].string_value
    if ports is not None and str(port) in ports.struct_value.fields:
        name = ports.struct_value.fields[str(port)].string_value
    return name if name == MESH_DEFAULT_SOURCE else f"PeerAuthentication {name}"


def _matching_route(hcm: hcm_pb2.HttpConnectionManager, call: Call) -> route_components_pb2.Route | None:
    """The route an inline route configuration gives the request: Envoy's virtual host order (an exact
    domain, with the port addressed or not, then a suffix wildcard, then `*`), then the first route whose
    path prefix matches."""
    if not hcm.HasField("route_config"):
        return None
    names = {call.host, f"{call.host}:{call.server_port}", f"{call.host}:{call.service_port}"}
    vhosts = hcm.route_config.virtual_hosts
    ranked = (
        [v for v in vhosts if names & set(v.domains)]
        + [v for v in vhosts if any(d.startswith("*") and d != "*" and call.host.endswith(d[1:]) for d in v.domains)]
        + [v for v in vhosts if "*" in v.domains]
    )
    for vhost in ranked[:1]:
        for route in vhost.routes:
            if route.match.prefix and not call.path.startswith(route.match.prefix):
                continue
            return route
    return None


def _route_cluster(hcm: hcm_pb2.HttpConnectionManager, call: Call) -> str:
    route = _matching_route(hcm, call)
    return route.route.cluster if route is not None and route.HasField("route") else ""


def _route_overrides(hcm: hcm_pb2.HttpConnectionManager, call: Call) -> Mapping[str, http_rbac_pb2.RBACPerRoute]:
    """The per-route RBAC configurations of the route the request takes (by Host and path prefix)."""
    route = _matching_route(hcm, call)
    out = {}
    for name, packed in route.typed_per_filter_config.items() if route is not None else ():
        per = http_rbac_pb2.RBACPerRoute()
        if packed.Unpack(per):
            out[name] = per
    return out


def _authorize(
    hcm: hcm_pb2.HttpConnectionManager, overrides: Mapping[str, http_rbac_pb2.RBACPerRoute], call: Call
) -> tuple[tuple[str, str, str], str]:
    """The HTTP RBAC filters of the connection manager, with the route's per-filter overrides."""
    rbacs: list[rbac_pb2.RBAC] = []
    for f in hcm.http_filters:
        config = http_rbac_pb2.RBAC()
        if not f.name.startswith("envoy.filters.http.rbac") or not f.typed_config.Unpack(config):
            continue
        if f.name in overrides:
            if not overrides[f.name].HasField("rbac"):
                continue  # disabled on this route
            config = overrides[f.name].rbac
        if config.HasField("rules") and config.rules.action in (rbac_pb2.RBAC.ALLOW, rbac_pb2.RBAC.DENY):
            rbacs.append(config.rules)
    custom = any(f.name == "envoy.filters.http.ext_authz" for f in hcm.http_filters)
    return _decide(rbacs, call, custom=custom, denied="403 RBAC: access denied", layer="")


def _authorize_tcp(chain: listener_pb2.FilterChain, call: Call) -> tuple[tuple[str, str, str], str]:
    """The network RBAC filters of a TCP chain (Istio's order: CUSTOM, DENY, ALLOW), evaluated per connection.
    What the rules say is what meshd translated: an ALLOW rule with HTTP-only fields is not there (it matches
    no connection), a DENY rule's HTTP-only fields are dropped (it matches more), as Istio does."""
    rbacs: list[rbac_pb2.RBAC] = []
    for f in chain.filters:
        config = net_rbac_pb2.RBAC()
        if f.name != NETWORK_RBAC or not f.typed_config.Unpack(config):
            continue
        if config.HasField("rules") and config.rules.action in (rbac_pb2.RBAC.ALLOW, rbac_pb2.RBAC.DENY):
            rbacs.append(config.rules)
    custom = any(f.name == "envoy.filters.network.ext_authz" for f in chain.filters)
    closed = "connection closed by RBAC (the client reads nothing)"
    return _decide(rbacs, call, custom=custom, denied=closed, layer=" (TCP: the chain's network RBAC)")


def _decide(
    rbacs: Sequence[rbac_pb2.RBAC], call: Call, *, custom: bool, denied: str, layer: str
) -> tuple[tuple[str, str, str], str]:
    note = "; a CUSTOM policy applies: its external authorizer decides the requests its rules match" if custom else ""
    note = layer + note
    allow_applies = False
    for rules in rbacs:
        matched, unknown = evaluate(rules, call)
        if rules.action == rbac_pb2.RBAC.DENY:
            if matched:
                label = policy_label(matched)
                return ("authorization", f"denied by {label}", "DENY policies are evaluated before ALLOW" + note), (
                    f"{denied} ({label})"
                )
            if unknown:
                return (
                    "authorization",
                    "undetermined",
                    f"DENY rule {policy_label(unknown)} depends on {_unknowns(call)}" + layer,
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
                    f"ALLOW rule {policy_label(unknown)} depends on {_unknowns(call)}" + layer,
                ), ""
    if allow_applies:
        return ("authorization", "denied: no ALLOW rule matches",
                "ALLOW policies apply to the workload, so a request no ALLOW rule matches is denied" + note), (
            f"{denied} (no ALLOW policy matches)")  # fmt: skip
    return (
        "authorization",
        "allowed: no policy denies it",
        "no DENY rule matches and no ALLOW policy applies" + note,
    ), ""


def _unknowns(call: Call) -> str:
    return "the caller's identity (give --from-identity)" if call.client_identity is None else "JWT claims or metadata"


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
        wrapper = upstream_proxy_protocol_pb2.ProxyProtocolUpstreamTransport()
        if socket.typed_config.Unpack(wrapper):  # a PROXY header ahead of the TLS (translate/peer_exchange.py)
            socket = wrapper.transport_socket
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
