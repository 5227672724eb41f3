"""Listeners and clusters for a sidecar whose traffic iptables captures (Istio's interception mode
REDIRECT, node metadata `INTERCEPTION_MODE: REDIRECT`), as Istio lays them out:

- `virtualOutbound` on 0.0.0.0:15001 (where iptables redirects the app's outbound TCP) hands each
  connection to the listener of its original destination (`use_original_dst`): `0.0.0.0_<port>`,
  not bound (`bind_to_port: false`). HTTP ports: the HTTP connection manager with route table
  `<port>`; TCP and TLS ports: the L4 chains of the scope's listener plan (`translate/listener_plan.py`:
  VirtualService tcp/tls routes, services matched by their addresses or CIDR ranges, TLS services by
  SNI, with the tls_inspector). Destinations no listener or chain knows go to `PassthroughCluster`
  (the original destination) with `outboundTrafficPolicy` ALLOW_ANY, to `BlackHoleCluster` with
  REGISTRY_ONLY. A connection made to 15001 itself is black-holed (no loop).
- `virtualInbound` on 0.0.0.0:15006 (where iptables redirects inbound TCP): `virtual_inbound.py`.
- Inbound clusters `inbound|<port>||` and `InboundPassthroughCluster` send to the original destination
  (the pod's own address and port) from source address 127.0.0.6, as Istio does since 1.10: the
  capture rules let traffic from 127.0.0.6 reach the app instead of redirecting it to 15006 again,
  and the app sees a connection from outside localhost (it must listen on the pod address or 0.0.0.0).

Envoy's own ports (15000 admin, 15001, 15006, 15020, 15021 health, 15090 Prometheus) are never given
a listener or an inbound chain: services on them are reported by the listener plan, and the capture
rules (`meshd iptables`) leave them alone.
"""

from __future__ import annotations

from collections.abc import Iterator
from functools import partial

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import address_pb2
from envoy.config.listener.v3 import listener_components_pb2, listener_pb2
from google.protobuf import wrappers_pb2

from meshd.translate import naming
from meshd.translate.authz.inbound import NO_AUTHZ, InboundAuthz
from meshd.translate.cluster_policy import inbound_pool
from meshd.translate.clusters import CONNECT_TIMEOUT, set_upstream_protocol, socket_address
from meshd.translate.inbound_splice import LISTENER_TYPE, Skeletons, build_skeleton
from meshd.translate.jwt_authn import JwtProviders
from meshd.translate.l4_chain import cidr_range, filter_chain
from meshd.translate.listener_plan import ListenerPlan, PortPlan
from meshd.translate.listeners import (
    InboundEntry,
    outbound_http_chain,
    tcp_proxy_filter,
    tls_inspector,
)
from meshd.translate.metrics import SOURCE
from meshd.translate.naming import ANY_ADDRESS, BLACKHOLE, INBOUND_PASSTHROUGH, PASSTHROUGH
from meshd.translate.peer_auth import InboundMtls
from meshd.translate.protocol import match_sniffed_http, sniff
from meshd.translate.sidecar_ingress import (
    AUTOMATIC,
    SidecarInbound,
    ingress_cluster_specs,
)
from meshd.translate.spec import Ident, Spec
from meshd.translate.virtual_inbound import assembled_inbound, served_ports, target_protocol

VIRTUAL_OUTBOUND = "virtualOutbound"
OUTBOUND_CAPTURE_PORT = 15001
INBOUND_SOURCE = "127.0.0.6"  # the source of the sidecar's connections to its own app
ALLOW_ANY, REGISTRY_ONLY = "ALLOW_ANY", "REGISTRY_ONLY"
OUTBOUND = 2  # envoy.config.core.v3.TrafficDirection


def _tcp_chain(name: str, cluster: str) -> listener_components_pb2.FilterChain:
    return listener_components_pb2.FilterChain(name=name, filters=[tcp_proxy_filter(cluster, reporter=SOURCE)])


def unknown_destination_cluster(outbound_mode: str) -> str:
    return BLACKHOLE if outbound_mode == REGISTRY_ONLY else PASSTHROUGH


# --- outbound --------------------------------------------------------------------------------------


def _virtual_outbound(port: int, outbound_mode: str) -> listener_pb2.Listener:
    loop = _tcp_chain("virtualOutbound-blackhole", BLACKHOLE)
    loop.filter_chain_match.destination_port.value = port
    return listener_pb2.Listener(
        name=VIRTUAL_OUTBOUND,
        address=socket_address(ANY_ADDRESS, port),
        use_original_dst=wrappers_pb2.BoolValue(value=True),
        filter_chains=[loop],
        default_filter_chain=_tcp_chain("virtualOutbound-catchall-tcp", unknown_destination_cluster(outbound_mode)),
        traffic_direction=OUTBOUND,
    )


def _unbound(name: str, port: int) -> listener_pb2.Listener:
    return listener_pb2.Listener(
        name=name,
        address=socket_address(ANY_ADDRESS, port),
        bind_to_port=wrappers_pb2.BoolValue(value=False),
        traffic_direction=OUTBOUND,
    )


def _outbound(plan: PortPlan, outbound_mode: str) -> listener_pb2.Listener:
    """The port's L4 chains (by address and SNI), and the HTTP of sniffed services with addresses (by address);
    other destinations: the HTTP connection manager where some service on the port declares HTTP, else HTTP
    detected for the route table where some service is sniffed, and the rest to the chain that takes the rest
    of the port (a service without addresses), else to the unknown-destination cluster."""
    port = plan.port
    listener = _unbound(naming.outbound_listener(ip=ANY_ADDRESS, port=port), port)
    detect = False
    for cluster, ranges in plan.sniffed_ranges:
        http = match_sniffed_http(outbound_http_chain(port))
        http.name = f"{cluster}|http"
        http.filter_chain_match.prefix_ranges.extend(cidr_range(r) for r in ranges)
        listener.filter_chains.append(http)
        detect = True
    listener.filter_chains.extend(filter_chain(c) for c in plan.chains)
    if plan.http:
        listener.default_filter_chain.CopyFrom(outbound_http_chain(port))
    else:
        if plan.sniff:
            http = match_sniffed_http(outbound_http_chain(port))
            http.name = f"{port}-http"
            listener.filter_chains.append(http)
            detect = True
        if plan.default is not None:
            listener.default_filter_chain.CopyFrom(filter_chain(plan.default))
        else:
            cluster = unknown_destination_cluster(outbound_mode)
            listener.default_filter_chain.CopyFrom(_tcp_chain(f"{port}-unknown-destination", cluster))
    if plan.inspects_tls:
        listener.listener_filters.append(tls_inspector())
    if detect:
        sniff(listener, timeout_s=plan.detection_timeout)
    return listener


# --- clusters --------------------------------------------------------------------------------------


def _original_destination(
    name: str, *, bind: str | None, protocol: str = "TCP", pool: Ident | None = None, port: int = 0
) -> cluster_pb2.Cluster:
    cluster = cluster_pb2.Cluster(
        name=name,
        type=cluster_pb2.Cluster.ORIGINAL_DST,
        lb_policy=cluster_pb2.Cluster.CLUSTER_PROVIDED,
        connect_timeout=CONNECT_TIMEOUT,
    )
    if bind is not None:
        cluster.upstream_bind_config.CopyFrom(address_pb2.BindConfig(source_address=_source(bind)))
    set_upstream_protocol(cluster, protocol)  # the app's own protocol (h2c for gRPC)
    inbound_pool(cluster, pool, port=port, protocol=protocol)  # a Sidecar's inboundConnectionPool
    return cluster


def _source(address: str) -> address_pb2.SocketAddress:
    return address_pb2.SocketAddress(address=address, port_value=0)


def _blackhole() -> cluster_pb2.Cluster:
    """No endpoints: every connection fails at once (Istio's BlackHoleCluster)."""
    return cluster_pb2.Cluster(name=BLACKHOLE, type=cluster_pb2.Cluster.STATIC, connect_timeout=CONNECT_TIMEOUT)


# --- specs -----------------------------------------------------------------------------------------


def capture_listener_specs(
    *,
    plan: ListenerPlan,
    served: tuple[InboundEntry, ...],
    modes: InboundMtls,
    sds: bool,
    outbound_mode: str,
    inbound_port: int,
    jwt: JwtProviders = (),
    authz: InboundAuthz = NO_AUTHZ,
    inbound: SidecarInbound = AUTOMATIC,
    skeletons: Skeletons = build_skeleton,
) -> Iterator[Spec]:
    """Every listener of a capture-mode proxy. Nothing is bound to its address: proxies of a scope
    with the same served ports and modes get the same listeners. `skeletons` builds virtualInbound's
    skeleton (`inbound_splice.py`; the cache layer passes one sharing it through its memo)."""
    yield Spec(
        VIRTUAL_OUTBOUND,
        ("lds-cap-out", OUTBOUND_CAPTURE_PORT, outbound_mode),
        partial(_virtual_outbound, OUTBOUND_CAPTURE_PORT, outbound_mode),
    )
    for port_plan in plan.ports:
        name = naming.outbound_listener(ip=ANY_ADDRESS, port=port_plan.port)
        yield Spec(name, ("lds-cap-port", port_plan, outbound_mode), partial(_outbound, port_plan, outbound_mode))
    timeout, ingress = plan.detection_timeout, inbound.ingress
    inbound_key = ("lds-cap-in", served, inbound_port, modes, sds, jwt, timeout, authz, ingress)
    build = partial(assembled_inbound, served, inbound_port, modes, sds, jwt, timeout, authz, ingress, skeletons)
    yield Spec(naming.VIRTUAL_INBOUND, inbound_key, build, LISTENER_TYPE)


def capture_cluster_specs(
    *, served: tuple[InboundEntry, ...], inbound: SidecarInbound = AUTOMATIC, address: str = ""
) -> Iterator[Spec]:
    """PassthroughCluster, BlackHoleCluster, InboundPassthroughCluster and `inbound|<port>||` per served
    port: original-destination clusters (the inbound ones from 127.0.0.6); with a Sidecar's ingress, its
    clusters to the application instead (`translate/sidecar_ingress.py`)."""
    yield Spec(PASSTHROUGH, ("cds-cap", PASSTHROUGH), partial(_original_destination, PASSTHROUGH, bind=None))
    yield Spec(BLACKHOLE, ("cds-cap", BLACKHOLE), _blackhole)
    yield Spec(
        INBOUND_PASSTHROUGH,
        ("cds-cap", INBOUND_PASSTHROUGH),
        partial(_original_destination, INBOUND_PASSTHROUGH, bind=INBOUND_SOURCE),
    )
    if inbound.ingress is not None:
        yield from ingress_cluster_specs(inbound, address=address, capture=True)
        return
    pool = inbound.pool
    for target, entries in served_ports(served).items():
        name = naming.inbound_cluster(port=target)
        protocol = target_protocol(entries)
        yield Spec(
            name,
            ("cds-cap-in", target, protocol, pool),
            partial(_original_destination, name, bind=INBOUND_SOURCE, protocol=protocol, pool=pool, port=target),
        )
