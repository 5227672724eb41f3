"""An outbound L4 filter chain as plain data (`L4Chain`: what it matches, where it sends the connection)
and its Envoy FilterChain: tcp_proxy to one cluster or to weighted clusters, optionally tunnelled over
HTTP (DestinationRule `tunnel`), matched by destination CIDR ranges, TLS server names (SNI) and source
CIDR ranges (a match's `sourceSubnet`).

The chains of a port are planned once per scope (`translate/listener_plan.py`) by the TCP and TLS route
translators (`translate/tcp_route.py`, `translate/tls_route.py`); bound and capture-mode listeners, and
later gateways, render the same chains.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from envoy.config.core.v3 import address_pb2
from envoy.config.listener.v3 import listener_components_pb2
from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2
from google.protobuf import wrappers_pb2

from meshd.api.destinationrule import TunnelSettings
from meshd.translate.metrics import SOURCE, tcp_metrics
from meshd.translate.proto import duration, pack
from meshd.translate.protocol import mongo_filter

TCP_PROXY = "envoy.filters.network.tcp_proxy"


@dataclass(frozen=True)
class Tunnel:
    """TCP tunnelled through an HTTP proxy: `CONNECT host:port` (or POST)."""

    target: str  # host:port
    post: bool = False


def tunnel_of(settings: TunnelSettings | None) -> Tunnel | None:
    if settings is None:
        return None
    host = settings.target_host
    if ":" in host:  # an IPv6 address
        host = f"[{host}]"
    return Tunnel(target=f"{host}:{settings.target_port}", post=settings.protocol == "POST")


@dataclass(frozen=True)
class L4Chain:
    """One outbound filter chain of a TCP or TLS port (hashable: plans compare and key listeners by it)."""

    name: str
    clusters: tuple[tuple[str, int], ...]  # (cluster, weight); a single entry is sent everything
    server_names: tuple[str, ...] = ()  # SNI; empty: any
    prefix_ranges: tuple[str, ...] = ()  # destination CIDR ranges (normalised); empty: any
    source_ranges: tuple[str, ...] = ()  # source CIDR ranges (the match's sourceSubnet); empty: any
    idle_timeout: str | None = None
    tunnel: Tunnel | None = None
    mongo: bool = False  # a mongo port: the Mongo proxy filter in front of the TCP proxy (Istio's default)

    @property
    def match_key(self) -> tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]:
        """What Envoy matches the chain by: two chains with equal keys cannot share a listener."""
        return tuple(sorted(self.server_names)), tuple(sorted(self.prefix_ranges)), tuple(sorted(self.source_ranges))

    @property
    def catch_all(self) -> bool:
        return not self.server_names and not self.prefix_ranges and not self.source_ranges


def normalise_cidr(text: str) -> str:
    """`10.0.0.7` -> `10.0.0.7/32`, `10.1.2.3/16` -> `10.1.0.0/16` (what Envoy's CidrRange means)."""
    return str(ipaddress.ip_network(text, strict=False))


def cidr_range(text: str) -> address_pb2.CidrRange:
    network = ipaddress.ip_network(text, strict=False)
    return address_pb2.CidrRange(
        address_prefix=str(network.network_address), prefix_len=wrappers_pb2.UInt32Value(value=network.prefixlen)
    )


def tcp_proxy(chain: L4Chain) -> tcp_proxy_pb2.TcpProxy:
    config = tcp_proxy_pb2.TcpProxy(stat_prefix=chain.name)
    tcp_metrics(config, reporter=SOURCE)
    if len(chain.clusters) == 1:
        config.cluster = chain.clusters[0][0]
    else:
        for cluster, weight in chain.clusters:
            config.weighted_clusters.clusters.append(
                tcp_proxy_pb2.TcpProxy.WeightedCluster.ClusterWeight(name=cluster, weight=weight)
            )
    if chain.idle_timeout is not None:  # DestinationRule connectionPool.tcp.idleTimeout (0s: none)
        config.idle_timeout.CopyFrom(duration(chain.idle_timeout))
    if chain.tunnel is not None:
        config.tunneling_config.hostname = chain.tunnel.target
        config.tunneling_config.use_post = chain.tunnel.post
    return config


def filter_chain(chain: L4Chain) -> listener_components_pb2.FilterChain:
    out = listener_components_pb2.FilterChain(name=chain.name)
    if chain.mongo:
        out.filters.append(mongo_filter(chain.name))
    out.filters.append(listener_components_pb2.Filter(name=TCP_PROXY, typed_config=pack(tcp_proxy(chain))))
    if chain.server_names:
        out.filter_chain_match.server_names.extend(chain.server_names)
    if chain.prefix_ranges:
        out.filter_chain_match.prefix_ranges.extend(cidr_range(c) for c in chain.prefix_ranges)
    if chain.source_ranges:
        out.filter_chain_match.source_prefix_ranges.extend(cidr_range(c) for c in chain.source_ranges)
    return out


def distinct(chains: list[L4Chain]) -> list[L4Chain]:
    """The first chain of each match key (Istio: the first matching route wins; Envoy refuses two chains
    with the same match)."""
    seen: set[tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]] = set()
    out = []
    for chain in chains:
        if chain.match_key not in seen:
            seen.add(chain.match_key)
            out.append(chain)
    return out
