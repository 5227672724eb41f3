"""Listeners for a sidecar without traffic capture (Istio's captureMode NONE with `bind`):
outbound listeners bound on the sidecar's own address at each service port (HTTP via RDS, TCP and
TLS through the L4 chains of the scope's listener plan), and one inbound listener that forwards to
the local app."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from functools import partial

from envoy.config.listener.v3 import listener_components_pb2, listener_pb2
from envoy.config.route.v3 import route_components_pb2, route_pb2
from envoy.extensions.filters.listener.tls_inspector.v3 import tls_inspector_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2
from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2
from google.protobuf import duration_pb2

from meshd.model.services import MeshService
from meshd.model.world import World
from meshd.translate import naming
from meshd.translate.authz.inbound import NO_AUTHZ, InboundAuthz
from meshd.translate.authz.ports import per_route, port_dependent
from meshd.translate.clusters import ads_config_source, socket_address
from meshd.translate.http_filters import inbound_http_filters, outbound_http_filters, router
from meshd.translate.jwt_authn import JwtProviders
from meshd.translate.l4_chain import filter_chain
from meshd.translate.listener_plan import RESERVED_PORTS, ListenerPlan, PortPlan
from meshd.translate.metrics import (
    DESTINATION,
    SOURCE,
    http_stats_loggers,
    inbound_exchange_filters,
    outbound_exchange_filters,
    service_metadata,
    tcp_metrics,
)
from meshd.translate.mtls import MTLS_ALPNS, downstream_context, tls_socket
from meshd.translate.peer_auth import DISABLE, PERMISSIVE, STRICT, InboundMtls, mtls_metadata
from meshd.translate.proto import duration, pack
from meshd.translate.protocol import allow_upgrades, match_sniffed_http, mongo_filter, sniff
from meshd.translate.proxy import Proxy
from meshd.translate.spec import Spec

__all__ = ["RESERVED_PORTS", "ListenerPlan"]
DEFAULT_INBOUND = InboundMtls()


def hcm_filter(
    hcm: hcm_pb2.HttpConnectionManager, filters: list[hcm_pb2.HttpFilter] | None = None
) -> listener_components_pb2.Filter:
    hcm.codec_type = hcm_pb2.HttpConnectionManager.AUTO
    hcm.http_filters.extend(filters if filters is not None else [router()])
    hcm.stream_idle_timeout.CopyFrom(duration_pb2.Duration(seconds=0))
    allow_upgrades(hcm)
    return listener_components_pb2.Filter(name="envoy.filters.network.http_connection_manager", typed_config=pack(hcm))


def tcp_proxy_filter(
    cluster: str, idle_timeout: str | None = None, *, reporter: str, mtls: bool | None = None
) -> listener_components_pb2.Filter:
    """tcp_proxy to `cluster` with Istio's TCP metrics as `reporter` (`mtls`: the inbound chain's transport)."""
    proxy_filter = tcp_proxy_pb2.TcpProxy(stat_prefix=cluster, cluster=cluster)
    tcp_metrics(proxy_filter, reporter=reporter, mtls=mtls)
    if idle_timeout is not None:  # DestinationRule connectionPool.tcp.idleTimeout (0s: none)
        proxy_filter.idle_timeout.CopyFrom(duration(idle_timeout))
    return listener_components_pb2.Filter(name="envoy.filters.network.tcp_proxy", typed_config=pack(proxy_filter))


def tcp_filters(
    cluster: str, protocol: str, idle_timeout: str | None = None, *, reporter: str, mtls: bool | None = None
) -> list[listener_components_pb2.Filter]:
    """The TCP proxy to `cluster`, behind the Mongo proxy filter on a mongo port (Istio's default)."""
    filters = [mongo_filter(cluster)] if protocol == "MONGO" else []
    return [*filters, tcp_proxy_filter(cluster, idle_timeout, reporter=reporter, mtls=mtls)]


def outbound_http_chain(port: int) -> listener_components_pb2.FilterChain:
    """The HTTP connection manager with the route table of this port (RDS `<port>`), reporting Istio's
    metrics as the client side (`translate/metrics.py`)."""
    hcm = hcm_pb2.HttpConnectionManager(
        stat_prefix=f"outbound_{port}",
        rds=hcm_pb2.Rds(config_source=ads_config_source(), route_config_name=naming.route_config(port=port)),
    )
    hcm.access_log.extend(http_stats_loggers(reporter=SOURCE))
    filters = [*outbound_exchange_filters(), *outbound_http_filters()]
    return listener_components_pb2.FilterChain(filters=[hcm_filter(hcm, filters)])


def _outbound(proxy: Proxy, plan: PortPlan) -> listener_pb2.Listener:
    """Bound on the proxy's address: the HTTP connection manager for a port with HTTP services only; the L4
    chains of a port without (SNI read by the tls_inspector); both on a port with both kinds or sniffed
    services (HTTP told from the rest by the http_inspector, the L4 chain taking the rest as the default)."""
    listener = listener_pb2.Listener(
        name=naming.outbound_listener(ip=proxy.ip, port=plan.port),
        address=socket_address(proxy.ip, plan.port),
        traffic_direction=2,  # OUTBOUND
    )
    if not plan.l4:
        listener.filter_chains.append(outbound_http_chain(plan.port))
        return listener
    listener.filter_chains.extend(filter_chain(c) for c in plan.chains)
    if not plan.http and not plan.sniff:
        if plan.default is not None:
            listener.filter_chains.append(filter_chain(plan.default))
    else:
        listener.filter_chains.insert(0, match_sniffed_http(outbound_http_chain(plan.port)))
        if plan.default is not None:
            listener.default_filter_chain.CopyFrom(filter_chain(plan.default))
        sniff(listener, timeout_s=plan.detection_timeout)
    if plan.inspects_tls:
        listener.listener_filters.append(tls_inspector())
    return listener


def outbound_listener_specs(
    plan: ListenerPlan, proxy: Proxy, *, taken: frozenset[tuple[str, int]] = frozenset()
) -> Iterator[Spec]:
    """The outbound listeners of a proxy without traffic capture, bound on its address (except ports a
    Sidecar's ingress listener binds there: `taken`)."""
    for port_plan in plan.ports:
        if (proxy.ip, port_plan.port) in taken:
            continue
        name = naming.outbound_listener(ip=proxy.ip, port=port_plan.port)
        yield Spec(name, ("lds-out", proxy.ip, port_plan), partial(_outbound, proxy, port_plan))


InboundEntry = tuple[MeshService, int, int]  # (service, service port, target port)


def inbound_index(world: World) -> dict[str, tuple[InboundEntry, ...]]:
    """For every workload address, the services it backs: what its sidecar's inbound side serves."""
    index: dict[str, list[InboundEntry]] = {}
    for (host, port), endpoints in world.endpoints.items():
        for address in dict.fromkeys(ep.address for ep in endpoints):
            target = next(ep.port for ep in endpoints if ep.address == address)
            index.setdefault(address, []).append((world.services[host], port, target))
    return {address: tuple(entries) for address, entries in index.items()}


def inbound_route_config(
    name: str, served: Sequence[InboundEntry], port_filters: tuple[hcm_pb2.HttpFilter, ...] = ()
) -> route_pb2.RouteConfiguration:
    """An inbound chain's routes: a virtual host per served service port, to the app's target port.
    `port_filters`: RBAC filters testing the destination port, decided per route for its target port."""
    routes = route_pb2.RouteConfiguration(name=name)
    for service, port, target in served:
        routes.virtual_hosts.append(
            route_components_pb2.VirtualHost(
                name=f"inbound|{service.hostname}:{port}",
                domains=[
                    d for d in naming.service_domains(service, port=port, proxy_namespace=service.namespace) if ":" in d
                ],
                routes=[_inbound_route(target, port_filters, service)],
            )
        )
    # Anything else (a Host without the port, an address) goes to the first service port.
    routes.virtual_hosts.append(
        route_components_pb2.VirtualHost(
            name="inbound|default", domains=["*"], routes=[_inbound_route(served[0][2], port_filters, served[0][0])]
        )
    )
    return routes


def catch_all_routes(name: str, *, vhost: str, cluster: str) -> route_pb2.RouteConfiguration:
    """A route configuration sending every request, whatever its Host, to `cluster` (no timeout)."""
    route = route_components_pb2.Route(
        name="default",
        match=route_components_pb2.RouteMatch(prefix="/"),
        route=route_components_pb2.RouteAction(cluster=cluster, timeout=duration_pb2.Duration(seconds=0)),
    )
    return route_pb2.RouteConfiguration(
        name=name, virtual_hosts=[route_components_pb2.VirtualHost(name=vhost, domains=["*"], routes=[route])]
    )


_ESCAPED_SLASHES = hcm_pb2.HttpConnectionManager.PathWithEscapedSlashesAction


def normalize_paths(hcm: hcm_pb2.HttpConnectionManager, mode: str) -> None:
    """meshConfig.pathNormalization on an inbound connection manager, as Istio maps it: NONE leaves paths
    as received; BASE normalises them (RFC 3986: `.`/`..` segments, percent-encoded unreserved characters,
    backslashes); MERGE_SLASHES also merges `//`; DECODE_AND_MERGE_SLASHES also decodes `%2F` and `%5C`
    first. Authorization policies see (and the app receives) the normalised path."""
    hcm.normalize_path.value = mode != "NONE"  # explicit: Envoy's runtime default may change
    if mode == "NONE":
        return
    hcm.merge_slashes = mode in ("MERGE_SLASHES", "DECODE_AND_MERGE_SLASHES")
    hcm.path_with_escaped_slashes_action = (
        _ESCAPED_SLASHES.UNESCAPE_AND_FORWARD if mode == "DECODE_AND_MERGE_SLASHES" else _ESCAPED_SLASHES.KEEP_UNCHANGED
    )


def inbound_http_chain(
    served: Sequence[InboundEntry],
    *,
    route_name: str,
    mtls: bool,
    peer_identity: bool,
    authz: InboundAuthz = NO_AUTHZ,
    jwt: JwtProviders = (),
    shared_port: bool = False,
    routes: bool = True,
) -> listener_components_pb2.FilterChain:
    """An HTTP chain routing by Host to `inbound|<target>||` (XFCC with the peer's identity when the
    proxy has the agent's SDS), its HTTP filters `inbound_http_filters`: jwt_authn for the workload's
    RequestAuthentications, its authorization filters, the router; TLS with a
    required client certificate when `mtls`. `shared_port`: the chain serves several target ports on one
    listener port (bound mode), so RBAC port tests are decided per route (`authz/ports.py`).
    `routes` False: the route configuration holds only its name (`served` unused), for the services'
    routes to be set in later (`inbound_splice.py`)."""
    per_port = authz.http_filters if shared_port and port_dependent(authz.http_filters) else ()
    config = (
        inbound_route_config(route_name, served, per_port) if routes else route_pb2.RouteConfiguration(name=route_name)
    )
    hcm = hcm_pb2.HttpConnectionManager(stat_prefix="inbound", route_config=config)
    normalize_paths(hcm, authz.normalization)
    hcm.access_log.extend(http_stats_loggers(reporter=DESTINATION, mtls=mtls))
    if peer_identity:
        # The app sees who called: the peer's certificate (SPIFFE URI, subject, DNS) in x-forwarded-client-cert.
        hcm.forward_client_cert_details = hcm_pb2.HttpConnectionManager.APPEND_FORWARD
        details = hcm.set_current_client_cert_details
        details.subject.value = True
        details.uri = True
        details.dns = True
    filters = [*inbound_exchange_filters(), *inbound_http_filters(jwt=jwt, authz=authz.http_filters)]
    chain = listener_components_pb2.FilterChain(filters=[hcm_filter(hcm, filters)])
    if mtls:
        chain.transport_socket.CopyFrom(tls_socket(downstream_context()))
    if peer_identity:
        chain.name = "inbound-mtls" if mtls else "inbound-plaintext"
    return chain


def admits(mode: str, *, mtls: bool, sds: bool) -> bool:
    """Whether a PeerAuthentication mode admits mTLS (needs the agent's certificate) or plaintext clients."""
    return sds and mode in (STRICT, PERMISSIVE) if mtls else mode in (PERMISSIVE, DISABLE)


def split_by_transport(chains: Sequence[tuple[bool, listener_components_pb2.FilterChain]]) -> bool:
    """Where both an mTLS and a plaintext chain serve the same traffic, TLS inspection tells them
    apart (Istio's ALPNs mark a mesh client): sets their matches; returns whether it did."""
    if len({mtls for mtls, _ in chains}) < 2:
        return False
    for mtls, chain in chains:
        match = chain.filter_chain_match
        if mtls:
            match.transport_protocol = "tls"
            if not match.application_protocols:  # (a sniffed port's mTLS chains have theirs: `alpn.py`)
                match.application_protocols.extend(MTLS_ALPNS)
        else:
            match.transport_protocol = "raw_buffer"
    return True


def tls_inspector() -> listener_components_pb2.ListenerFilter:
    return listener_components_pb2.ListenerFilter(
        name="envoy.filters.listener.tls_inspector", typed_config=pack(tls_inspector_pb2.TlsInspector())
    )


def _inbound_listener(
    proxy: Proxy,
    served: tuple[InboundEntry, ...],
    inbound_port: int,
    modes: InboundMtls,
    sds: bool,
    jwt: JwtProviders,
    authz: InboundAuthz,
) -> listener_pb2.Listener:
    """One HTTP chain per transport the workload's PeerAuthentication admits: mTLS (STRICT, PERMISSIVE)
    and plaintext (PERMISSIVE, DISABLE), each routing only the ports whose mode admits it. Without SDS
    the proxy has no certificate: STRICT ports are not served at all."""
    listener = listener_pb2.Listener(
        name=naming.VIRTUAL_INBOUND,
        address=socket_address(proxy.ip, inbound_port),
        traffic_direction=1,  # INBOUND
    )
    listener.metadata.CopyFrom(mtls_metadata(modes))
    chains = []
    for mtls in (True, False):
        entries = [e for e in served if admits(modes.for_port(e[2]), mtls=mtls, sds=sds)]
        if entries:
            route_name = f"inbound|{inbound_port}|mtls" if mtls else f"inbound|{inbound_port}"
            chain = inbound_http_chain(
                entries, route_name=route_name, mtls=mtls, peer_identity=sds, authz=authz, jwt=jwt, shared_port=True
            )
            chains.append((mtls, chain))
    if split_by_transport(chains):  # before the chains are copied into the listener
        listener.listener_filters.append(tls_inspector())
    listener.filter_chains.extend(chain for _, chain in chains)
    return listener


def inbound_listener_specs(
    proxy: Proxy,
    served: tuple[InboundEntry, ...],
    *,
    inbound_port: int,
    modes: InboundMtls = DEFAULT_INBOUND,
    jwt: JwtProviders = (),
    authz: InboundAuthz = NO_AUTHZ,
) -> Iterator[Spec]:
    """The inbound listener at <ip>:<inbound_port>, dispatching by Host to `inbound|<target>||`
    (none if the workload backs no service, or no port admits any client)."""
    sds = proxy.sds
    if any(sds or modes.for_port(t) != STRICT for _, _, t in served):
        key = ("lds-in", proxy.ip, inbound_port, served, modes, sds, jwt, authz)
        build = partial(_inbound_listener, proxy, served, inbound_port, modes, sds, jwt, authz)
        yield Spec(naming.VIRTUAL_INBOUND, key, build)


def _inbound_route(
    target: int, port_filters: tuple[hcm_pb2.HttpFilter, ...], service: MeshService
) -> route_components_pb2.Route:
    """To the app's port; the route's metadata names the service (the destination_service labels)."""
    route = route_components_pb2.Route(
        name="default",
        match=route_components_pb2.RouteMatch(prefix="/"),
        route=route_components_pb2.RouteAction(
            cluster=naming.inbound_cluster(port=target), timeout=duration_pb2.Duration(seconds=0)
        ),
        metadata=service_metadata(host=service.hostname, name=service.name, namespace=service.namespace),
    )
    for name, config in per_route(port_filters, target).items() if port_filters else ():
        route.typed_per_filter_config[name].CopyFrom(config)
    return route
