"""What translating a VirtualService's TCP or TLS routes needs, shared by sidecars (`translate/tcp_route.py`,
`translate/tls_route.py`: the context (listener port, which matches apply to the proxy, the destination ranges a
match without `destinationSubnets` stands for), weighted destinations as L4 chains with the per-destination
policy a chain carries, DestinationRule tcp idleTimeout and tunnel) and gateways (`route_clusters`,
`tcp_proxy`, `cidr_ranges`: the route's destinations as one cluster or weighted clusters, and
`destinationSubnets` / `sourceSubnet` as Envoy CIDR ranges).

A reference the route cannot honour (undefined subset, port not on the service, destinations whose
tunnels differ) raises InvalidResource naming the VirtualService and field.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from envoy.config.core.v3 import address_pb2
from envoy.config.listener.v3 import listener_components_pb2
from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2
from google.protobuf import wrappers_pb2

from meshd.api.destinationrule import DestinationRule
from meshd.api.l4route import L4MatchAttributes, RouteDestination, TLSMatchAttributes, effective_weights
from meshd.api.meta import InvalidResource, ResourceKey
from meshd.api.virtualservice import TCPRoute, TLSRoute, VirtualService
from meshd.model.services import MeshService
from meshd.translate.http_match import MESH_GATEWAY, MatchContext
from meshd.translate.http_route import RouteContext, destination_cluster
from meshd.translate.l4_chain import L4Chain, Tunnel, normalise_cidr, tunnel_of
from meshd.translate.metrics import SOURCE, tcp_metrics
from meshd.translate.policy import effective_policy
from meshd.translate.proto import duration, pack

L4Match = L4MatchAttributes | TLSMatchAttributes
TCP_PROXY = "envoy.filters.network.tcp_proxy"


@dataclass(frozen=True)
class L4Context:
    """Where the TCP/TLS routes of one VirtualService are translated."""

    key: ResourceKey  # the VirtualService (errors name it)
    namespace: str  # where its short destination hosts resolve
    port: int  # the listener's port
    resolve: Callable[[str], tuple[str, MeshService | None]]  # host -> (FQDN, service if known)
    rule_for: Callable[[str], DestinationRule | None]
    applies: Callable[[L4Match], bool]  # whether a match exists for this proxy and port
    # the destination ranges a match without destinationSubnets stands for (the routed service's addresses,
    # where the listener tells services apart by address), normalised
    addresses: tuple[str, ...] = ()


def sidecar_applies(
    vs: VirtualService, *, port: int, namespace: str, source_matches: Callable[[dict[str, str]], bool]
) -> Callable[[L4Match], bool]:
    """Istio's rules for a sidecar: the match's port (if any) is the listener's; its gateways (else the
    VirtualService's, else `mesh`) include `mesh`; sourceNamespace and sourceLabels are the proxy's."""
    vs_gateways = vs.spec.gateways or [MESH_GATEWAY]

    def applies(match: L4Match) -> bool:
        if match.port is not None and match.port != port:
            return False
        if MESH_GATEWAY not in (match.gateways or vs_gateways):
            return False
        if match.source_namespace and match.source_namespace != namespace:
            return False
        return not match.source_labels or source_matches(match.source_labels)

    return applies


def validating(_: L4Match) -> bool:
    """Every match applies: references are checked whichever proxies would see them."""
    return True


def subnets(match: L4Match | None, ctx: L4Context) -> tuple[str, ...]:
    if match is not None and match.destination_subnets:
        return tuple(normalise_cidr(s) for s in match.destination_subnets)
    return ctx.addresses


def sources(match: L4Match | None) -> tuple[str, ...]:
    """The match's `sourceSubnet` as a source range of the chain (the address of the connection's peer)."""
    if not isinstance(match, L4MatchAttributes) or not match.source_subnet:
        return ()  # TLS matches have no sourceSubnet
    return (normalise_cidr(match.source_subnet),)


def sni_names(match: TLSMatchAttributes) -> tuple[str, ...]:
    """The match's `sniHosts` as Envoy server names; `*` (any SNI) leaves the names unrestricted."""
    if "*" in match.sni_hosts:
        return ()
    return tuple(dict.fromkeys(match.sni_hosts))


def chain_policy(rule_for: Callable[[str], DestinationRule | None], cluster: str) -> tuple[str | None, Tunnel | None]:
    """(tcp idleTimeout, tunnel) the DestinationRule of `outbound|port|subset|host` sets."""
    _, port, subset, host = cluster.split("|", 3)
    policy = effective_policy(rule_for(host), port=int(port), subset=subset)
    pool = policy.connection_pool
    idle = pool.tcp.idle_timeout if pool is not None and pool.tcp is not None else None
    return idle, tunnel_of(policy.tunnel)


def route_chain(
    ctx: L4Context,
    route: Sequence[RouteDestination],
    field: str,
    *,
    server_names: tuple[str, ...] = (),
    prefix_ranges: tuple[str, ...] = (),
    source_ranges: tuple[str, ...] = (),
) -> L4Chain:
    """A chain sending to the route's weighted destinations (zero weights left out)."""
    rctx = RouteContext(
        key=ctx.key,
        namespace=ctx.namespace,
        resolve=ctx.resolve,
        rule_for=ctx.rule_for,
        match=MatchContext(port=ctx.port, namespace=ctx.namespace, source_matches=lambda _: True),
    )
    clusters = [
        (destination_cluster(rctx, d.destination, f"{field}[{i}].destination"), weight)
        for i, (d, weight) in enumerate(zip(route, effective_weights(route), strict=True))
    ]
    kept = tuple((c, w) for c, w in clusters if w > 0)
    policies = {chain_policy(ctx.rule_for, c) for c, _ in kept}
    tunnels = {tunnel for _, tunnel in policies}
    if len(tunnels) > 1:
        raise InvalidResource(
            ctx.key, field, "weighted destinations whose DestinationRules set different tunnels cannot share a route"
        )
    idle, tunnel = chain_policy(ctx.rule_for, kept[0][0])
    return L4Chain(
        name=kept[0][0] if len(kept) == 1 else f"{ctx.key.namespace}/{ctx.key.name}.{field}",
        clusters=kept,
        server_names=server_names,
        prefix_ranges=prefix_ranges,
        source_ranges=source_ranges,
        idle_timeout=idle,
        tunnel=tunnel,
    )


# --- gateways -------------------------------------------------------------------------------------


def route_clusters(ctx: RouteContext, route: TCPRoute | TLSRoute, field: str) -> list[tuple[str, int]]:
    """(cluster, weight) of each destination with a weight (ports and subsets checked: InvalidResource)."""
    out = []
    for j, (dest, weight) in enumerate(zip(route.route, route.weights(), strict=True)):
        cluster = destination_cluster(ctx, dest.destination, f"{field}.route[{j}].destination")
        if weight:
            out.append((cluster, weight))
    return out


def tcp_proxy(
    clusters: Sequence[tuple[str, int]], *, stat_prefix: str, idle_timeout: str | None = None
) -> listener_components_pb2.Filter:
    """tcp_proxy to one cluster, or to weighted clusters (each new connection picks one)."""
    config = tcp_proxy_pb2.TcpProxy(stat_prefix=stat_prefix)
    tcp_metrics(config, reporter=SOURCE)
    if len(clusters) == 1:
        config.cluster = clusters[0][0]
    else:
        for name, weight in clusters:
            config.weighted_clusters.clusters.append(
                tcp_proxy_pb2.TcpProxy.WeightedCluster.ClusterWeight(name=name, weight=weight)
            )
    if idle_timeout is not None:
        config.idle_timeout.CopyFrom(duration(idle_timeout))
    return listener_components_pb2.Filter(name=TCP_PROXY, typed_config=pack(config))


def cidr_ranges(subnets: Sequence[str]) -> list[address_pb2.CidrRange]:
    """`destinationSubnets` / `sourceSubnet` as Envoy CIDR ranges (an address alone is a /32 or /128)."""
    out = []
    for subnet in subnets:
        network = ipaddress.ip_network(subnet, strict=False)
        out.append(
            address_pb2.CidrRange(
                address_prefix=str(network.network_address),
                prefix_len=wrappers_pb2.UInt32Value(value=network.prefixlen),
            )
        )
    return out
