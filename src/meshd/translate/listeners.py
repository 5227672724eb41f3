"""Listeners for a sidecar without traffic capture (Istio's captureMode NONE with `bind`):
outbound listeners bound on the sidecar's own address at each service port (HTTP via RDS,
TCP via tcp_proxy), and one inbound listener that forwards to the local app."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from functools import partial

from envoy.config.listener.v3 import listener_components_pb2, listener_pb2
from envoy.config.route.v3 import route_components_pb2, route_pb2
from envoy.extensions.filters.listener.tls_inspector.v3 import tls_inspector_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2
from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2
from google.protobuf import duration_pb2

from meshd.api.destinationrule import DestinationRule
from meshd.api.meta import InvalidResource, ResourceKey
from meshd.model.services import MeshService, ServicePort, is_http, is_served, is_sniffed
from meshd.model.world import World
from meshd.translate import naming
from meshd.translate.clusters import ads_config_source, socket_address
from meshd.translate.http_filters import outbound_http_filters, router
from meshd.translate.mtls import MTLS_ALPNS, downstream_context, tls_socket
from meshd.translate.peer_auth import DISABLE, PERMISSIVE, STRICT, InboundMtls
from meshd.translate.policy import effective_policy
from meshd.translate.proto import duration, pack
from meshd.translate.protocol import allow_upgrades, match_sniffed_http, mongo_filter, sniff
from meshd.translate.proxy import Proxy
from meshd.translate.spec import Spec

RESERVED_PORTS = frozenset({15000, 15001, 15004, 15006, 15008, 15020, 15021, 15090})
DEFAULT_INBOUND = InboundMtls()


def _hcm_filter(
    hcm: hcm_pb2.HttpConnectionManager, filters: list[hcm_pb2.HttpFilter] | None = None
) -> listener_components_pb2.Filter:
    hcm.codec_type = hcm_pb2.HttpConnectionManager.AUTO
    hcm.http_filters.extend(filters if filters is not None else [router()])
    hcm.stream_idle_timeout.CopyFrom(duration_pb2.Duration(seconds=0))
    allow_upgrades(hcm)
    return listener_components_pb2.Filter(name="envoy.filters.network.http_connection_manager", typed_config=pack(hcm))


def tcp_proxy_filter(cluster: str, idle_timeout: str | None = None) -> listener_components_pb2.Filter:
    proxy_filter = tcp_proxy_pb2.TcpProxy(stat_prefix=cluster, cluster=cluster)
    if idle_timeout is not None:  # DestinationRule connectionPool.tcp.idleTimeout (0s: none)
        proxy_filter.idle_timeout.CopyFrom(duration(idle_timeout))
    return listener_components_pb2.Filter(name="envoy.filters.network.tcp_proxy", typed_config=pack(proxy_filter))


def tcp_filters(cluster: str, protocol: str, idle_timeout: str | None = None) -> list[listener_components_pb2.Filter]:
    """The TCP proxy to `cluster`, behind the Mongo proxy filter on a mongo port (Istio's default)."""
    filters = [mongo_filter(cluster)] if protocol == "MONGO" else []
    return [*filters, tcp_proxy_filter(cluster, idle_timeout)]


def outbound_tcp_chain(
    port: int, service: MeshService, idle_timeout: str | None
) -> listener_components_pb2.FilterChain:
    """tcp_proxy to the service's cluster at this port."""
    cluster = naming.outbound_cluster(port=port, host=service.hostname)
    sp = service.port(port)
    return listener_components_pb2.FilterChain(
        filters=tcp_filters(cluster, sp.protocol if sp is not None else "TCP", idle_timeout)
    )


def outbound_http_chain(port: int) -> listener_components_pb2.FilterChain:
    """The HTTP connection manager with the route table of this port (RDS `<port>`)."""
    hcm = hcm_pb2.HttpConnectionManager(
        stat_prefix=f"outbound_{port}",
        rds=hcm_pb2.Rds(config_source=ads_config_source(), route_config_name=naming.route_config(port=port)),
    )
    return listener_components_pb2.FilterChain(filters=[_hcm_filter(hcm, outbound_http_filters())])


def _outbound(proxy: Proxy, port: int, entry: PortPlan) -> listener_pb2.Listener:
    """Bound on the proxy's address: the HTTP connection manager for a port with HTTP services only, the
    TCP proxy to the (oldest) TCP service of a port without; both on a port with both kinds or sniffed
    services (HTTP told from the rest by http_inspector)."""
    listener = listener_pb2.Listener(
        name=naming.outbound_listener(ip=proxy.ip, port=port),
        address=socket_address(proxy.ip, port),
        traffic_direction=2,  # OUTBOUND
    )
    if not entry.tcp:
        listener.filter_chains.append(outbound_http_chain(port))
        return listener
    service, idle = entry.tcp[0]
    tcp = outbound_tcp_chain(port, service, idle)
    if not entry.http and not entry.sniff:
        listener.filter_chains.append(tcp)
        return listener
    listener.filter_chains.append(match_sniffed_http(outbound_http_chain(port)))
    listener.default_filter_chain.CopyFrom(tcp)
    sniff(listener, timeout_s=entry.detection_timeout)
    return listener


def tcp_port_shared(port: int, holder: str) -> str:
    return (
        f"TCP port {port} is already used by {holder}: not served to proxies without traffic capture"
        " (captured proxies tell the services apart by address)"
    )


def _protocol(service: MeshService, port: int) -> str:
    sp = service.port(port)
    return sp.protocol if sp is not None else "TCP"


@dataclass(frozen=True)
class PortPlan:
    """One outbound port: `http` (some service declares HTTP: the HTTP connection manager with RDS
    `<port>`), `sniff` (some service declares nothing: HTTP detected per connection), `tcp` (the services
    whose non-HTTP traffic the port carries, TCP and sniffed ones, oldest first, each with its
    DestinationRule's tcp idleTimeout), and how long detection waits (protocolDetectionTimeout)."""

    http: bool
    sniff: bool
    tcp: tuple[tuple[MeshService, str | None], ...]
    detection_timeout: float = 0.0


class ListenerPlan:
    """The outbound listeners of a scope: per port, its PortPlan. What cannot be served is reported
    (naming the Service and port). Proxies of the scope differ only in the address they bind.

    Rule for one port number shared by services of different kinds: proxies with traffic capture tell
    TCP services apart by their ClusterIPs (per destination address) and serve every one; proxies without
    capture (one listener per port) detect HTTP and send the rest to the oldest TCP service: younger TCP
    services on that port are not served to them (a warning naming the port)."""

    def __init__(
        self,
        services: Sequence[tuple[MeshService, Sequence[ServicePort]]],
        *,
        rule_for: Callable[[str], DestinationRule | None] | None = None,
        detection_timeout: float = 0.0,
    ) -> None:
        self.errors: list[InvalidResource] = []
        self._rule_for = rule_for
        self.detection_timeout = detection_timeout
        self.ports: list[tuple[int, PortPlan]] = []
        by_port: dict[int, list[MeshService]] = {}
        for service, ports in services:
            for sp in ports:
                by_port.setdefault(sp.number, []).append(service)
        for port, on_port in sorted(by_port.items()):
            self._plan_port(port, on_port)
        self.signature = (tuple(self.ports), detection_timeout)  # equal plans: equal listeners

    @property
    def tcp_services(self) -> dict[int, tuple[tuple[MeshService, str | None], ...]]:
        """Per port, the TCP (and sniffed) services on it with their idle timeouts, oldest first."""
        return {port: entry.tcp for port, entry in self.ports if entry.tcp}

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ListenerPlan) and other.signature == self.signature

    def __hash__(self) -> int:
        return hash(self.signature)

    def _reject(self, service: MeshService, message: str, *, severity: str = "error") -> None:
        key = ResourceKey("Service", service.namespace, service.name)
        self.errors.append(InvalidResource(key, "spec.ports", message, severity=severity))

    def _plan_port(self, port: int, services: list[MeshService]) -> None:
        if port in RESERVED_PORTS:
            for s in services:
                self._reject(s, f"port {port} is reserved for the sidecar")
            return
        served = []
        for s in services:
            protocol = _protocol(s, port)
            if is_served(protocol):
                served.append(s)
            else:
                self._reject(s, f"{protocol} port {port} is not proxied by the sidecar (TCP only)", severity="warning")
        http = [s for s in served if is_http(_protocol(s, port))]
        sniffed = [s for s in served if is_sniffed(_protocol(s, port))]
        tcp = [s for s in served if not is_http(_protocol(s, port)) and s.resolution != "NONE"]
        if not http and not tcp and not sniffed:
            return
        oldest = sorted(tcp, key=lambda s: (s.creation or "~", s.hostname))
        entry = PortPlan(
            http=bool(http),
            sniff=bool(sniffed),
            tcp=tuple((s, self._tcp_idle_timeout(s, port)) for s in oldest),
            detection_timeout=self.detection_timeout if (sniffed or (http and tcp)) else 0.0,
        )
        self.ports.append((port, entry))
        # Only proxies without capture (one listener per port) drop the younger services; captured
        # proxies (how injected pods run in Kubernetes) serve them all: a warning, not a rejection.
        for s in oldest[1:]:
            self._reject(s, tcp_port_shared(port, oldest[0].hostname), severity="warning")
        if http:
            for s in (s for s in oldest if not s.addresses):
                self._reject(
                    s,
                    f"{_protocol(s, port)} port {port} has no ClusterIP to tell it from the HTTP services on the"
                    " same port: captured proxies handle its traffic as HTTP",
                    severity="warning",
                )

    def _tcp_idle_timeout(self, service: MeshService, port: int) -> str | None:
        rule = self._rule_for(service.hostname) if self._rule_for is not None else None
        pool = effective_policy(rule, port=port).connection_pool
        return pool.tcp.idle_timeout if pool is not None and pool.tcp is not None else None

    def specs(self, proxy: Proxy) -> Iterator[Spec]:
        for port, entry in self.ports:
            name = naming.outbound_listener(ip=proxy.ip, port=port)
            yield Spec(name, ("lds-out", proxy.ip, port, entry), partial(_outbound, proxy, port, entry))


InboundEntry = tuple[MeshService, int, int]  # (service, service port, target port)


def inbound_index(world: World) -> dict[str, tuple[InboundEntry, ...]]:
    """For every workload address, the services it backs: what its sidecar's inbound side serves."""
    index: dict[str, list[InboundEntry]] = {}
    for (host, port), endpoints in world.endpoints.items():
        for address in dict.fromkeys(ep.address for ep in endpoints):
            target = next(ep.port for ep in endpoints if ep.address == address)
            index.setdefault(address, []).append((world.services[host], port, target))
    return {address: tuple(entries) for address, entries in index.items()}


def _inbound_routes(name: str, served: Sequence[InboundEntry]) -> route_pb2.RouteConfiguration:
    routes = route_pb2.RouteConfiguration(name=name)
    for service, port, target in served:
        routes.virtual_hosts.append(
            route_components_pb2.VirtualHost(
                name=f"inbound|{service.hostname}:{port}",
                domains=[
                    d for d in naming.service_domains(service, port=port, proxy_namespace=service.namespace) if ":" in d
                ],
                routes=[_inbound_route(target)],
            )
        )
    # Anything else (a Host without the port, an address) goes to the first service port.
    routes.virtual_hosts.append(
        route_components_pb2.VirtualHost(name="inbound|default", domains=["*"], routes=[_inbound_route(served[0][2])])
    )
    return routes


def inbound_http_chain(
    served: Sequence[InboundEntry], *, route_name: str, mtls: bool, peer_identity: bool
) -> listener_components_pb2.FilterChain:
    """An HTTP chain routing by Host to `inbound|<target>||` (XFCC with the peer's identity when the
    proxy has the agent's SDS); TLS with a required client certificate when `mtls`."""
    hcm = hcm_pb2.HttpConnectionManager(stat_prefix="inbound", route_config=_inbound_routes(route_name, served))
    if peer_identity:
        # The app sees who called: the peer's certificate (SPIFFE URI, subject, DNS) in x-forwarded-client-cert.
        hcm.forward_client_cert_details = hcm_pb2.HttpConnectionManager.APPEND_FORWARD
        details = hcm.set_current_client_cert_details
        details.subject.value = True
        details.uri = True
        details.dns = True
    chain = listener_components_pb2.FilterChain(filters=[_hcm_filter(hcm)])
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
            match.application_protocols.extend(MTLS_ALPNS)
        else:
            match.transport_protocol = "raw_buffer"
    return True


def tls_inspector() -> listener_components_pb2.ListenerFilter:
    return listener_components_pb2.ListenerFilter(
        name="envoy.filters.listener.tls_inspector", typed_config=pack(tls_inspector_pb2.TlsInspector())
    )


def _inbound_listener(
    proxy: Proxy, served: tuple[InboundEntry, ...], inbound_port: int, modes: InboundMtls, sds: bool
) -> listener_pb2.Listener:
    """One HTTP chain per transport the workload's PeerAuthentication admits: mTLS (STRICT, PERMISSIVE)
    and plaintext (PERMISSIVE, DISABLE), each routing only the ports whose mode admits it. Without SDS
    the proxy has no certificate: STRICT ports are not served at all."""
    listener = listener_pb2.Listener(
        name=naming.VIRTUAL_INBOUND,
        address=socket_address(proxy.ip, inbound_port),
        traffic_direction=1,  # INBOUND
    )
    chains = []
    for mtls in (True, False):
        entries = [e for e in served if admits(modes.for_port(e[2]), mtls=mtls, sds=sds)]
        if entries:
            route_name = f"inbound|{inbound_port}|mtls" if mtls else f"inbound|{inbound_port}"
            chain = inbound_http_chain(entries, route_name=route_name, mtls=mtls, peer_identity=sds)
            chains.append((mtls, chain))
    if split_by_transport(chains):  # before the chains are copied into the listener
        listener.listener_filters.append(tls_inspector())
    listener.filter_chains.extend(chain for _, chain in chains)
    return listener


def inbound_listener_specs(
    proxy: Proxy, served: tuple[InboundEntry, ...], *, inbound_port: int, modes: InboundMtls = DEFAULT_INBOUND
) -> Iterator[Spec]:
    """The inbound listener at <ip>:<inbound_port>, dispatching by Host to `inbound|<target>||`
    (none if the workload backs no service, or no port admits any client)."""
    sds = proxy.sds
    if any(sds or modes.for_port(t) != STRICT for _, _, t in served):
        key = ("lds-in", proxy.ip, inbound_port, served, modes, sds)
        yield Spec(naming.VIRTUAL_INBOUND, key, partial(_inbound_listener, proxy, served, inbound_port, modes, sds))


def _inbound_route(target: int) -> route_components_pb2.Route:
    return route_components_pb2.Route(
        name="default",
        match=route_components_pb2.RouteMatch(prefix="/"),
        route=route_components_pb2.RouteAction(
            cluster=naming.inbound_cluster(port=target), timeout=duration_pb2.Duration(seconds=0)
        ),
    )
