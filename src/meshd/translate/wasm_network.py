"""Where a WasmPlugin of `type: NETWORK` goes: Envoy's Wasm network filter in the filter chains of a proxy's
listeners, by Istio's rules (translate/wasm_plugin.py builds the filter and its ECDS config).

Which chains: on a sidecar, every chain that carries a service's traffic, inbound (SERVER) and outbound
(CLIENT), TCP (tcp_proxy) and HTTP (ahead of the HTTP connection manager) alike, the inbound passthrough
chains included; not the chains of traffic to no service (the outbound catch-all and unknown-destination
chains to PassthroughCluster / BlackHoleCluster, the loop guards), as Istio builds those without plugins. On
a gateway, as Istio's, the TCP and TLS route chains (tcp_proxy, mode CLIENT); a gateway's HTTP servers get
HTTP plugins only. The port `match` compares is the chain's destination port, else the listener's.

Order among the chain's network filters, by `phase` (Istio's): AUTHN and AUTHZ before the authorization
filters (RBAC, ext_authz: meshd has no network authentication filter), STATS after them, unspecified right
before the terminal filters (a protocol filter such as mongo_proxy, tcp_proxy, the HTTP connection manager);
within a phase in the order given (priority, then namespace and name)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from envoy.config.listener.v3.listener_components_pb2 import Filter, FilterChain
from envoy.config.listener.v3.listener_pb2 import Listener
from envoy.extensions.filters.network.rbac.v3 import rbac_pb2 as network_rbac_pb2
from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2

from meshd.translate.envoyfilter import match as m
from meshd.translate.envoyfilter.merge import unpack
from meshd.translate.naming import BLACKHOLE, PASSTHROUGH

NETWORK_WASM_TYPE = "type.googleapis.com/envoy.extensions.filters.network.wasm.v3.Wasm"
TCP_PROXY = "envoy.filters.network.tcp_proxy"
# the clusters of traffic to no service: chains ending there get no plugin
_NO_SERVICE = frozenset({PASSTHROUGH, BLACKHOLE})
_AUTHZ_PREFIXES = ("envoy.filters.network.rbac", "envoy.filters.network.ext_authz")
# where meshd's own network filters stand; a phase goes before the first filter ranked above it
_PHASE_RANK = {"AUTHN": 1, "AUTHZ": 3, "STATS": 5, "UNSPECIFIED_PHASE": 7}
# a NETWORK plugin's filter until its Wasm config is accepted, for FAIL_OPEN: network RBAC without rules
PASS_THROUGH = network_rbac_pb2.RBAC(stat_prefix="wasm_fail_open")


def plugin_chains(listener: Listener, *, router: bool) -> Iterator[tuple[FilterChain, str, int]]:
    """The listener's chains that take NETWORK plugins, each with its direction (CLIENT, SERVER) and port."""
    direction = "CLIENT" if router or m.listener_context(listener, router=False) == m.OUTBOUND else "SERVER"
    listener_port = int(listener.address.socket_address.port_value)
    for chain in m.chains_of(listener):
        if not chain.filters or _to_no_service(chain):
            continue
        if router and chain.filters[-1].name != TCP_PROXY:
            continue
        yield chain, direction, chain.filter_chain_match.destination_port.value or listener_port


def _to_no_service(chain: FilterChain) -> bool:
    last = chain.filters[-1]
    if last.name != TCP_PROXY or not last.HasField("typed_config"):
        return False
    proxy = unpack(last.typed_config)
    return isinstance(proxy, tcp_proxy_pb2.TcpProxy) and proxy.cluster in _NO_SERVICE


def _rank(name: str) -> int:
    if name.startswith(_AUTHZ_PREFIXES):
        return 4
    return 8  # terminal and protocol filters


def place(chain: FilterChain, plugins: Sequence[tuple[str, Filter]]) -> None:
    """Inserts the plugins' filters (`(phase, filter)`, in priority order) among the chain's filters."""
    ranked = [(_rank(f.name), f) for f in chain.filters]
    for phase, rank in _PHASE_RANK.items():
        at = next((i for i, (r, _) in enumerate(ranked) if r > rank), len(ranked))
        for wanted, flt in plugins:
            if wanted == phase:
                ranked.insert(at, (rank, flt))
                at += 1
    del chain.filters[:]
    chain.filters.extend(f for _, f in ranked)
