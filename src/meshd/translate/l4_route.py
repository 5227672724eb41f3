"""VirtualService `tcp` and `tls` routes -> Envoy's tcp_proxy: the route's destinations as one cluster or
weighted clusters (weights relative, as for http routes), and which of their matches apply where the
routes are built (port, gateways, sourceLabels, sourceNamespace: `http_match.applies`). A tls match's
`sniHosts` become the SNI a filter chain matches; `destinationSubnets` / `sourceSubnet` its address ranges.

Kept apart from the HTTP route code so gateways and sidecars share it.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

from envoy.config.core.v3 import address_pb2
from envoy.config.listener.v3 import listener_components_pb2
from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2
from google.protobuf import wrappers_pb2

from meshd.api.virtualservice import TCPRoute, TLSRoute
from meshd.translate.http_route import RouteContext, destination_cluster
from meshd.translate.proto import duration, pack

TCP_PROXY = "envoy.filters.network.tcp_proxy"


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
