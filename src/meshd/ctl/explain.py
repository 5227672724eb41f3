"""`meshd explain --from PROXY --to HOST[:PORT]`: the path a request takes through the config meshd serves
that proxy, and why: which listener (by port), which route configuration and virtual host (by Host), which
route (by path, method and headers, first match wins) and the VirtualService rule that made it (Istio's
route metadata), the destinations with their weights and subsets, each cluster's TLS (mTLS to the mesh
identity, or plaintext) and load balancing, and its endpoints.

Pure: it walks the resources of an Envoy ConfigDump (proxy_config.resources) the way Envoy selects them."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_components_pb2, route_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2
from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2
from envoy.extensions.transport_sockets.tls.v3 import tls_pb2
from google.protobuf import message

HCM = "envoy.filters.network.http_connection_manager"
TCP_PROXY = "envoy.filters.network.tcp_proxy"


@dataclass
class Request:
    host: str
    port: int
    path: str = "/"
    method: str = "GET"
    headers: Mapping[str, str] = field(default_factory=dict)


@dataclass
class Explanation:
    steps: list[tuple[str, str, str]] = field(default_factory=list)  # (step, choice, why)
    destinations: list[dict[str, Any]] = field(default_factory=list)
    outcome: str = ""

    def add(self, step: str, choice: str, why: str) -> None:
        self.steps.append((step, choice, why))

    def render(self) -> str:
        lines = [f"{step:<13} {choice}\n{'':<13}   because {why}" for step, choice, why in self.steps]
        for d in self.destinations:
            lines.append(f"{'destination':<13} {d['cluster']}  weight {d['weight']}")
            lines.append(f"{'':<13}   tls: {d['tls']}; load balancing: {d['lb']}")
            for ep in d["endpoints"] or ["(no endpoints: 503 no healthy upstream)"]:
                lines.append(f"{'':<13}   endpoint {ep}")
        lines.append(f"{'outcome':<13} {self.outcome}")
        return "\n".join(lines) + "\n"

    def as_dict(self) -> dict[str, Any]:
        return {
            "steps": [{"step": s, "choice": c, "why": w} for s, c, w in self.steps],
            "destinations": self.destinations,
            "outcome": self.outcome,
        }


def explain(config: Mapping[str, Sequence[message.Message]], request: Request) -> Explanation:
    out = Explanation()
    listeners = [m for m in config.get("listeners", ()) if isinstance(m, listener_pb2.Listener)]
    found = _listener(listeners, request.port)
    if found is None:
        out.add("listener", "none", f"no outbound listener or filter chain of this proxy takes port {request.port}")
        out.outcome = "not routed by the sidecar (passthrough or refused, by outboundTrafficPolicy)"
        return out
    listener, chain, why = found
    out.add("listener", listener.name, why)
    filters = {f.name: f for f in chain.filters}
    if HCM in filters:
        hcm = hcm_pb2.HttpConnectionManager()
        filters[HCM].typed_config.Unpack(hcm)
        _http(config, hcm, request, out)
    elif TCP_PROXY in filters:
        tcp = tcp_proxy_pb2.TcpProxy()
        filters[TCP_PROXY].typed_config.Unpack(tcp)
        out.add("tcp proxy", tcp.stat_prefix or "-", "the chain carries TCP (no HTTP connection manager)")
        if tcp.HasField("weighted_clusters"):
            weighted = [(c.name, c.weight) for c in tcp.weighted_clusters.clusters]
        else:
            weighted = [(tcp.cluster, 100)]
        _destinations(config, weighted, out)
        out.outcome = "forwarded as TCP"
    else:
        out.outcome = f"chain filters {sorted(filters)}: not explained"
    return out


def _listener(
    listeners: Sequence[listener_pb2.Listener], port: int
) -> tuple[listener_pb2.Listener, listener_pb2.FilterChain, str] | None:
    own = [li for li in listeners if li.name != "virtualInbound" and li.address.socket_address.port_value == port]
    for li in own:
        if li.filter_chains:
            return li, li.filter_chains[0], f"it listens on port {port}"
    for li in listeners:
        if li.name == "virtualInbound":
            continue
        for chain in li.filter_chains:
            m = chain.filter_chain_match
            if m.HasField("destination_port") and m.destination_port.value == port:
                return li, chain, f"its filter chain matches destination port {port} (captured traffic)"
    return None


def _http(
    config: Mapping[str, Sequence[message.Message]],
    hcm: hcm_pb2.HttpConnectionManager,
    request: Request,
    out: Explanation,
) -> None:
    if hcm.HasField("route_config"):
        table: route_pb2.RouteConfiguration | None = hcm.route_config
        why = "it is inline in the connection manager"
    else:
        name = hcm.rds.route_config_name
        table = next(
            (m for m in config.get("routes", ()) if isinstance(m, route_pb2.RouteConfiguration) and m.name == name),
            None,
        )
        why = "the HTTP connection manager of that listener fetches it over RDS"
    if table is None:
        out.add("routes", hcm.rds.route_config_name, "the connection manager names it, but meshd serves no such table")
        out.outcome = "404 (no route configuration)"
        return
    out.add("route table", table.name, why)
    vhost, vwhy = _virtual_host(table, request)
    if vhost is None:
        out.add("virtual host", "none", vwhy)
        out.outcome = "404 NR (no virtual host for this Host)"
        return
    out.add("virtual host", vhost.name, vwhy)
    chosen = next(
        ((i, r, why) for i, r in enumerate(vhost.routes) for ok, why in [_matches(r.match, request)] if ok), None
    )
    if chosen is None:
        out.add("route", "none", "no route of the virtual host matches the path, method and headers")
        out.outcome = "404 NR (no route)"
        return
    index, route, mwhy = chosen
    source = (
        route.metadata.filter_metadata["istio"].fields.get("config")
        if "istio" in route.metadata.filter_metadata
        else None
    )
    made_by = (
        _virtual_service(source.string_value) if source is not None else "meshd's default route (no VirtualService)"
    )
    out.add(
        "route", f"#{index} {route.name or '-'} ({made_by})", mwhy + "; routes are tried in order, the first match wins"
    )
    if route.HasField("redirect"):
        target = (route.redirect.host_redirect or "(same host)") + (route.redirect.path_redirect or "")
        out.outcome = f"redirect to {target}"
        return
    if route.HasField("direct_response"):
        out.outcome = f"direct response {route.direct_response.status}"
        return
    action = route.route
    if action.HasField("weighted_clusters"):
        weighted = [(c.name, c.weight.value) for c in action.weighted_clusters.clusters]
    else:
        weighted = [(action.cluster, 100)]
    _destinations(config, weighted, out)
    timeout = action.timeout.seconds + action.timeout.nanos / 1e9 if action.HasField("timeout") else 0.0
    retries = action.retry_policy.num_retries.value if action.HasField("retry_policy") else 0
    out.outcome = f"forwarded (timeout {'none' if not timeout else f'{timeout:g}s'}, retries {retries})"


def _virtual_service(path: str) -> str:
    parts = path.strip("/").split("/")
    if len(parts) >= 7 and parts[-2] == "virtual-service":
        return f"VirtualService {parts[-3]}/{parts[-1]}"
    return path


def _virtual_host(
    table: route_pb2.RouteConfiguration, request: Request
) -> tuple[route_components_pb2.VirtualHost | None, str]:
    """Envoy's order: an exact domain, then the longest suffix wildcard, then prefix wildcards, then `*`."""
    for candidate in (f"{request.host}:{request.port}", request.host):
        for vhost in table.virtual_hosts:
            if candidate in vhost.domains:
                return vhost, f"its domains include {candidate!r} exactly"
    best: tuple[int, route_components_pb2.VirtualHost, str] | None = None
    for vhost in table.virtual_hosts:
        for domain in vhost.domains:
            covers = domain.startswith("*") and domain != "*" and request.host.endswith(domain[1:])
            if covers and (best is None or len(domain) > best[0]):
                best = (len(domain), vhost, domain)
    if best is not None:
        return best[1], f"its wildcard domain {best[2]!r} is the longest that covers {request.host!r}"
    for vhost in table.virtual_hosts:
        if "*" in vhost.domains:
            return vhost, "no domain names the host: the catch-all `*`"
    return None, f"no virtual host of {table.name} has a domain for {request.host!r}"


def _matches(match: route_components_pb2.RouteMatch, request: Request) -> tuple[bool, str]:
    path = request.path.split("?", 1)[0]
    which = match.WhichOneof("path_specifier")
    insensitive = match.HasField("case_sensitive") and not match.case_sensitive.value
    subject = path.lower() if insensitive else path
    why = []
    if which == "prefix":
        want = match.prefix.lower() if insensitive else match.prefix
        if not subject.startswith(want):
            return False, ""
        why.append(f"path starts with {match.prefix!r}")
    elif which == "path":
        want = match.path.lower() if insensitive else match.path
        if subject != want:
            return False, ""
        why.append(f"path is {match.path!r}")
    elif which == "safe_regex":
        if re.fullmatch(match.safe_regex.regex, path) is None:
            return False, ""
        why.append(f"path matches /{match.safe_regex.regex}/")
    elif which == "path_separated_prefix":
        p = match.path_separated_prefix
        if not (path == p or path.startswith(p + "/") or path.startswith(p + "?")):
            return False, ""
        why.append(f"path is under {p!r}")
    headers = {k.lower(): v for k, v in request.headers.items()} | {
        ":method": request.method,
        ":authority": request.host,
    }
    for header in match.headers:
        ok, text = _header(header, headers)
        if not ok:
            return False, ""
        why.append(text)
    if match.query_parameters:
        return False, ""  # query parameters are not part of what explain is given
    return True, ", ".join(why) or "it matches everything"


def _header(header: route_components_pb2.HeaderMatcher, headers: Mapping[str, str]) -> tuple[bool, str]:
    value = headers.get(header.name.lower())
    which = header.WhichOneof("header_match_specifier")
    if which == "present_match":
        ok = (value is not None) == header.present_match
        text = f"header {header.name} {'present' if header.present_match else 'absent'}"
    elif which == "string_match" and value is not None:
        sm = header.string_match
        kind = sm.WhichOneof("match_pattern")
        pattern = getattr(sm, kind) if kind != "safe_regex" else sm.safe_regex.regex
        if kind == "exact":
            ok = value == pattern
        elif kind == "prefix":
            ok = value.startswith(pattern)
        elif kind == "suffix":
            ok = value.endswith(pattern)
        elif kind == "contains":
            ok = pattern in value
        else:
            ok = re.fullmatch(pattern, value) is not None
        text = f"header {header.name} {kind} {pattern!r}"
    elif which is None:
        ok, text = value is not None, f"header {header.name} present"
    else:
        ok, text = False, f"header {header.name}"
    if header.invert_match:
        return not ok, f"not ({text})"
    return ok, text


def _destinations(
    config: Mapping[str, Sequence[message.Message]], weighted: Sequence[tuple[str, int]], out: Explanation
) -> None:
    clusters = {m.name: m for m in config.get("clusters", ()) if isinstance(m, cluster_pb2.Cluster)}
    assignments = {
        m.cluster_name: m for m in config.get("endpoints", ()) if isinstance(m, endpoint_pb2.ClusterLoadAssignment)
    }
    for name, weight in weighted:
        cluster = clusters.get(name)
        endpoints = []
        cla = cluster.load_assignment if cluster is not None and cluster.HasField("load_assignment") else None
        cla = assignments.get(name, cla)
        if cla is not None:
            for locality in cla.endpoints:
                for lb in locality.lb_endpoints:
                    sa = lb.endpoint.address.socket_address
                    w = lb.load_balancing_weight.value if lb.HasField("load_balancing_weight") else 1
                    endpoints.append(f"{sa.address}:{sa.port_value} (weight {w})")
        out.destinations.append(
            {
                "cluster": name,
                "weight": weight,
                "tls": _tls(cluster) if cluster is not None else "unknown cluster",
                "lb": cluster_pb2.Cluster.LbPolicy.Name(cluster.lb_policy) if cluster is not None else "-",
                "endpoints": endpoints,
            }
        )


def _tls(cluster: cluster_pb2.Cluster) -> str:
    sockets = [cluster.transport_socket] if cluster.HasField("transport_socket") else []
    sockets += [m.transport_socket for m in cluster.transport_socket_matches]
    for socket in sockets:
        if socket.name.endswith("tls") or socket.typed_config.type_url.endswith("UpstreamTlsContext"):
            context = tls_pb2.UpstreamTlsContext()
            if socket.typed_config.Unpack(context):
                validation = context.common_tls_context.combined_validation_context.default_validation_context
                sans = [m.matcher.exact or m.matcher.prefix for m in validation.match_typed_subject_alt_names]
                spiffe = [s for s in sans if s.startswith("spiffe://")]
                if spiffe:
                    auto = " (auto mTLS: to endpoints with a sidecar)" if cluster.transport_socket_matches else ""
                    return f"mutual TLS, peer must be {', '.join(spiffe)}{auto}"
                return f"TLS (SNI {context.sni or '-'})"
    return "plaintext"
