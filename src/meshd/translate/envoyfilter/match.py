"""What an EnvoyFilter patch's `match` selects in a proxy's config, by Istio's rules.

Context: a gateway proxy's config is all GATEWAY; a sidecar's listeners are SIDECAR_INBOUND when their
traffic direction is INBOUND, else SIDECAR_OUTBOUND; its clusters `inbound|...` are inbound, the rest
outbound; its route configurations served over RDS are outbound, those inline in an inbound listener's
HTTP connection manager inbound. A listener's `portNumber` is its address's port or, for a listener that
tells chains apart by destination port (capture mode's virtualInbound), a chain's destination port. A
route configuration's port is read from its name as meshd (and istiod) names them: `80`, `host:80`,
`http.80`, `https.443....`, for an inline one the inbound port of its routes' `inbound|<port>||` clusters.
Istio names an inbound virtual host `inbound|http|<port>`: that name matches the inbound virtual hosts
whose routes go to port `<port>` (meshd names them after the service), so Istio's documents apply as written.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

from envoy.config.cluster.v3.cluster_pb2 import Cluster
from envoy.config.listener.v3.listener_components_pb2 import Filter, FilterChain
from envoy.config.listener.v3.listener_pb2 import Listener
from envoy.config.route.v3.route_components_pb2 import Route, VirtualHost
from envoy.config.route.v3.route_pb2 import RouteConfiguration

from meshd.api.envoyfilter import (
    ClusterMatch,
    FilterChainMatch,
    ListenerMatch,
    PatchMatch,
    RouteConfigurationMatch,
    RouteMatch,
    VirtualHostMatch,
)

INBOUND, OUTBOUND, GATEWAY = "SIDECAR_INBOUND", "SIDECAR_OUTBOUND", "GATEWAY"
HCM = "envoy.filters.network.http_connection_manager"
_INBOUND_CLUSTER = re.compile(r"^inbound\|(\d+)\|")
_ISTIO_INBOUND_VHOST = re.compile(r"^inbound\|http\|(\d+)$")
_ROUTE_PORT = re.compile(r"^(?:(\d+)|[^:]+:(\d+)|http\.(\d+)|https\.(\d+)\..*)$")


def context_ok(wanted: str, actual: str) -> bool:
    return wanted == "ANY" or wanted == actual


def proxy_ok(match: PatchMatch, *, metadata: Mapping[str, str]) -> bool:
    proxy = match.proxy
    if proxy is None:
        return True
    if proxy.proxy_version and re.search(proxy.proxy_version, metadata.get("ISTIO_VERSION", "")) is None:
        return False
    return all(metadata.get(k) == v for k, v in proxy.metadata.items())


def listener_context(listener: Listener, *, router: bool) -> str:
    if router:
        return GATEWAY
    return INBOUND if listener.traffic_direction == 1 else OUTBOUND  # core.v3.TrafficDirection INBOUND = 1


def _port_of(listener: Listener) -> int:
    return int(listener.address.socket_address.port_value)


def listener_ok(match: ListenerMatch | None, listener: Listener) -> bool:
    if match is None:
        return True
    if match.name and listener.name != match.name:
        return False
    if match.listener_filter and not any(f.name == match.listener_filter for f in listener.listener_filters):
        return False
    if (
        match.port_number is not None
        and _port_of(listener) != match.port_number
        and not any(c.filter_chain_match.destination_port.value == match.port_number for c in listener.filter_chains)
    ):
        return False
    if match.filter_chain is not None:
        return any(chain_ok(match, chain, listener) for chain in chains_of(listener))
    return True


def chains_of(listener: Listener) -> Iterable[FilterChain]:
    yield from listener.filter_chains
    if listener.HasField("default_filter_chain"):
        yield listener.default_filter_chain


def chain_ok(match: ListenerMatch | None, chain: FilterChain, listener: Listener) -> bool:
    if match is None:
        return True
    if match.port_number is not None and _port_of(listener) != match.port_number:
        port = chain.filter_chain_match.destination_port.value
        if port != match.port_number:
            return False
    fc: FilterChainMatch | None = match.filter_chain
    if fc is None:
        return True
    cm = chain.filter_chain_match
    if fc.name and chain.name != fc.name:
        return False
    if fc.sni and fc.sni not in cm.server_names:
        return False
    if fc.transport_protocol and cm.transport_protocol != fc.transport_protocol:
        return False
    if fc.application_protocols:
        wanted = [p.strip() for p in fc.application_protocols.split(",") if p.strip()]
        if not all(p in cm.application_protocols for p in wanted):
            return False
    if fc.destination_port is not None and cm.destination_port.value != fc.destination_port:
        return False
    if fc.filter is not None:
        return any(filter_ok(match, f) for f in chain.filters)
    return True


def filter_ok(match: ListenerMatch | None, found: Filter) -> bool:
    """A network filter matches `filterChain.filter.name` (the subFilter is looked at by the HTTP patches)."""
    wanted = match.filter_chain.filter if match is not None and match.filter_chain is not None else None
    if wanted is None or not wanted.name:
        return True
    return bool(found.name == wanted.name)


def cluster_context(name: str, *, router: bool) -> str:
    if router:
        return GATEWAY
    return INBOUND if name.startswith("inbound|") else OUTBOUND


def cluster_ok(match: ClusterMatch | None, cluster: Cluster) -> bool:
    if match is None:
        return True
    name = cluster.name
    if match.name and name != match.name:
        return False
    parts = name.split("|")
    port = int(parts[1]) if len(parts) >= 2 and parts[1].isdigit() else None
    if match.port_number is not None and port != match.port_number:
        return False
    if match.subset and (len(parts) != 4 or parts[2] != match.subset):
        return False
    return not (match.service and (len(parts) != 4 or parts[3] != match.service))


def route_config_port(config: RouteConfiguration) -> set[int]:
    m = _ROUTE_PORT.match(config.name)
    if m is not None:
        return {int(next(g for g in m.groups() if g))}
    return {p for vhost in config.virtual_hosts for p in _vhost_ports(vhost)}


def _vhost_ports(vhost: VirtualHost) -> set[int]:
    ports = set()
    for route in vhost.routes:
        m = _INBOUND_CLUSTER.match(route.route.cluster)
        if m is not None:
            ports.add(int(m.group(1)))
    return ports


def route_config_ok(match: RouteConfigurationMatch | None, config: RouteConfiguration) -> bool:
    if match is None:
        return True
    if match.name and config.name != match.name:
        return False
    if match.port_number is not None and match.port_number not in route_config_port(config):
        return False
    if match.vhost is not None:
        return any(vhost_ok(match.vhost, v) for v in config.virtual_hosts)
    return True


def vhost_ok(match: VirtualHostMatch | None, vhost: VirtualHost) -> bool:
    if match is None:
        return True
    if match.name and vhost.name != match.name:
        alias = _ISTIO_INBOUND_VHOST.match(match.name)
        if alias is None or int(alias.group(1)) not in _vhost_ports(vhost):
            return False
    if match.route is not None:
        return any(route_ok(match.route, r) for r in vhost.routes)
    return True


def route_ok(match: RouteMatch | None, route: Route) -> bool:
    if match is None:
        return True
    if match.name and route.name != match.name:
        return False
    action = route.WhichOneof("action")
    wanted = {"ROUTE": "route", "REDIRECT": "redirect", "DIRECT_RESPONSE": "direct_response"}.get(match.action)
    return wanted is None or action == wanted
