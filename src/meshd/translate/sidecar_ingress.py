"""A Sidecar's `ingress` listeners: the inbound ports of its workloads, each forwarded to the application at
`defaultEndpoint` (`127.0.0.1:PORT`, `0.0.0.0:PORT` = the workload's own address, or a Unix socket) through
the cluster `inbound|<port>||`, optionally terminating TLS with certificate files (SIMPLE, or MUTUAL
verifying client certificates), with the listener's `connectionPool` (else the Sidecar's
`inboundConnectionPool`, which also applies to the automatic inbound clusters). As Istio does, declared
ingress listeners replace the inbound side derived from the services the workload backs.

Where the listener lives: with traffic capture, a chain of `virtualInbound` matched by the port (the
PeerAuthentication mode of the port decides mTLS / plaintext where no `tls` is given); without capture,
or with `captureMode: NONE`, a listener bound on `bind` (default: the workload's address) and the port.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import address_pb2, base_pb2
from envoy.config.endpoint.v3 import endpoint_components_pb2, endpoint_pb2
from envoy.config.listener.v3 import listener_components_pb2, listener_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2
from envoy.extensions.transport_sockets.tls.v3 import common_pb2, tls_pb2
from envoy.type.matcher.v3 import string_pb2

from meshd.api.networking import Sidecar
from meshd.api.sidecar_ingress import IngressTLSSettings
from meshd.model.services import is_http, protocol_of
from meshd.translate import naming
from meshd.translate.authz.inbound import NO_AUTHZ, InboundAuthz
from meshd.translate.cluster_policy import inbound_pool
from meshd.translate.clusters import CONNECT_TIMEOUT, set_upstream_protocol, socket_address
from meshd.translate.http_filters import inbound_http_filters
from meshd.translate.jwt_authn import JwtProviders
from meshd.translate.listener_plan import RESERVED_PORTS
from meshd.translate.listeners import (
    admits,
    catch_all_routes,
    hcm_filter,
    normalize_paths,
    split_by_transport,
    tcp_filters,
    tls_inspector,
)
from meshd.translate.metrics import DESTINATION, http_stats_loggers, inbound_exchange_filters
from meshd.translate.mtls import downstream_context, tls_socket
from meshd.translate.peer_auth import InboundMtls, mtls_metadata
from meshd.translate.proxy import Proxy
from meshd.translate.spec import Ident, Spec

LOCAL_SOURCE = "127.0.0.6"  # the source of a captured sidecar's connections to its own app (capture.py)
_VERSIONS = {
    "TLSV1_0": common_pb2.TlsParameters.TLSv1_0,
    "TLSV1_1": common_pb2.TlsParameters.TLSv1_1,
    "TLSV1_2": common_pb2.TlsParameters.TLSv1_2,
    "TLSV1_3": common_pb2.TlsParameters.TLSv1_3,
}


@dataclass(frozen=True)
class IngressPort:
    """One ingress listener as translation needs it (hashable; settings compared by identity: an unchanged
    Sidecar keeps its objects)."""

    port: int
    protocol: str
    bind: str
    capture_mode: str
    endpoint: tuple[str, int] | str  # (127.0.0.1 | 0.0.0.0 | ::1 | ::, port) or a Unix socket path
    tls: Ident | None  # IngressTLSSettings
    pool: Ident | None  # ConnectionPoolSettings: the listener's, else the Sidecar's inboundConnectionPool

    @property
    def http(self) -> bool:
        return is_http(self.protocol)

    @property
    def captured(self) -> bool:
        """Served by the capture listener (virtualInbound) rather than a listener of its own."""
        return self.capture_mode != "NONE"


@dataclass(frozen=True)
class SidecarInbound:
    """What a Sidecar says about its proxies' inbound side; `ingress` None: Istio's automatic inbound."""

    ingress: tuple[IngressPort, ...] | None = None
    pool: Ident | None = None  # inboundConnectionPool (every inbound cluster)


AUTOMATIC = SidecarInbound()


def sidecar_inbound(sidecar: Sidecar | None, *, missing: frozenset[str]) -> SidecarInbound:
    """The inbound settings of a Sidecar; ingress listeners on Envoy's own ports or opening a file in
    `missing` are left out (both reported by `generate/checks.py` and `generate/tls_files.py`)."""
    if sidecar is None:
        return AUTOMATIC
    spec = sidecar.spec
    pool = Ident(spec.inbound_connection_pool) if spec.inbound_connection_pool is not None else None
    if not spec.ingress:
        return SidecarInbound(pool=pool)
    ports = []
    for listener in spec.ingress:
        tls = listener.tls
        if tls is not None and missing & {tls.server_certificate, tls.private_key, tls.ca_certificates, tls.ca_crl}:
            continue
        if listener.port.number in RESERVED_PORTS:
            continue
        port = listener.port
        ports.append(
            IngressPort(
                port=port.number,
                protocol=protocol_of(name=port.name, declared=port.protocol or None),
                bind=listener.bind,
                capture_mode=listener.capture_mode,
                endpoint=listener.endpoint(),
                tls=Ident(tls) if tls is not None else None,
                pool=Ident(listener.connection_pool) if listener.connection_pool is not None else pool,
            )
        )
    return SidecarInbound(ingress=tuple(ports), pool=pool)


def plaintext_ports(inbound: SidecarInbound) -> frozenset[int]:
    """Ingress ports without TLS of their own: the ones mesh peers may also reach through the automatic
    inbound listener of a proxy without capture."""
    return frozenset(p.port for p in inbound.ingress or () if p.tls is None)


# --- clusters --------------------------------------------------------------------------------------


def _endpoint_address(port: IngressPort, address: str) -> address_pb2.Address:
    endpoint = port.endpoint
    if isinstance(endpoint, str):
        return address_pb2.Address(pipe=address_pb2.Pipe(path=endpoint))
    host, number = endpoint
    return socket_address(address if host in ("0.0.0.0", "::") else host, number)


def _ingress_cluster(port: IngressPort, address: str, capture: bool) -> cluster_pb2.Cluster:
    name = naming.inbound_cluster(port=port.port)
    target = _endpoint_address(port, address)
    cluster = cluster_pb2.Cluster(
        name=name,
        type=cluster_pb2.Cluster.STATIC,
        connect_timeout=CONNECT_TIMEOUT,
        load_assignment=endpoint_pb2.ClusterLoadAssignment(
            cluster_name=name,
            endpoints=[
                endpoint_components_pb2.LocalityLbEndpoints(
                    lb_endpoints=[
                        endpoint_components_pb2.LbEndpoint(endpoint=endpoint_components_pb2.Endpoint(address=target))
                    ]
                )
            ],
        ),
    )
    if capture and not isinstance(port.endpoint, str) and port.endpoint[0] in ("0.0.0.0", "::"):
        # to the workload's own address: from 127.0.0.6, which the capture rules do not send back to 15006
        cluster.upstream_bind_config.source_address.CopyFrom(
            address_pb2.SocketAddress(address=LOCAL_SOURCE, port_value=0)
        )
    set_upstream_protocol(cluster, port.protocol)  # the app's own protocol (h2c for HTTP2/gRPC)
    inbound_pool(cluster, port.pool, port=port.port, protocol=port.protocol)
    return cluster


def ingress_cluster_specs(inbound: SidecarInbound, *, address: str, capture: bool) -> Iterator[Spec]:
    """`inbound|<port>||` per ingress listener: a static cluster to its defaultEndpoint."""
    for port in inbound.ingress or ():
        yield Spec(
            naming.inbound_cluster(port=port.port),
            ("cds-ingress", address, port, capture),
            partial(_ingress_cluster, port, address, capture),
        )


# --- chains and listeners --------------------------------------------------------------------------


def _file(path: str) -> base_pb2.DataSource:
    return base_pb2.DataSource(filename=path)


def server_tls_context(tls: IngressTLSSettings, *, http: bool) -> tls_pb2.DownstreamTlsContext:
    """TLS terminated with the listener's own certificate files (MUTUAL: client certificates verified)."""
    context = tls_pb2.DownstreamTlsContext()
    common = context.common_tls_context
    common.tls_certificates.append(
        common_pb2.TlsCertificate(certificate_chain=_file(tls.server_certificate), private_key=_file(tls.private_key))
    )
    params = common.tls_params
    if tls.min_protocol_version != "TLS_AUTO":
        params.tls_minimum_protocol_version = _VERSIONS[tls.min_protocol_version]
    if tls.max_protocol_version != "TLS_AUTO":
        params.tls_maximum_protocol_version = _VERSIONS[tls.max_protocol_version]
    params.cipher_suites.extend(tls.cipher_suites)
    if http:
        common.alpn_protocols.extend(("h2", "http/1.1"))
    if tls.mode == "MUTUAL":
        context.require_client_certificate.value = True
        validation = common.validation_context
        validation.trusted_ca.CopyFrom(_file(tls.ca_certificates))
        if tls.ca_crl:
            validation.crl.CopyFrom(_file(tls.ca_crl))
        san = common_pb2.SubjectAltNameMatcher
        for name in tls.subject_alt_names:
            validation.match_typed_subject_alt_names.append(
                san(san_type=san.URI if "://" in name else san.DNS, matcher=string_pb2.StringMatcher(exact=name))
            )
        validation.verify_certificate_spki.extend(tls.verify_certificate_spki)
        validation.verify_certificate_hash.extend(tls.verify_certificate_hash)
    return context


def _http_filter(
    port: IngressPort, *, peer_identity: bool, jwt: JwtProviders, authz: InboundAuthz, mtls: bool
) -> listener_components_pb2.Filter:
    cluster = naming.inbound_cluster(port=port.port)
    routes = catch_all_routes(cluster, vhost=f"{cluster}default", cluster=cluster)
    hcm = hcm_pb2.HttpConnectionManager(stat_prefix=cluster, route_config=routes)
    normalize_paths(hcm, authz.normalization)
    hcm.access_log.extend(http_stats_loggers(reporter=DESTINATION, mtls=mtls))
    if peer_identity:
        hcm.forward_client_cert_details = hcm_pb2.HttpConnectionManager.APPEND_FORWARD
        details = hcm.set_current_client_cert_details
        details.subject.value = True
        details.uri = True
        details.dns = True
    return hcm_filter(hcm, [*inbound_exchange_filters(), *inbound_http_filters(jwt=jwt, authz=authz.http_filters)])


def ingress_chain(
    port: IngressPort, *, mtls: bool, peer_identity: bool, jwt: JwtProviders = (), authz: InboundAuthz = NO_AUTHZ
) -> listener_components_pb2.FilterChain:
    """One chain of an ingress port: its own TLS if it has any, else Istio mTLS (`mtls`) or plaintext; with the
    workload's RequestAuthentications (jwt_authn, HTTP) and AuthorizationPolicies (RBAC / ext_authz filters,
    HTTP or network), as on the automatic inbound side."""
    tls = port.tls.obj if port.tls is not None else None
    identity = peer_identity and (mtls or (isinstance(tls, IngressTLSSettings) and tls.mode == "MUTUAL"))
    if port.http:
        filters = [_http_filter(port, peer_identity=identity, jwt=jwt, authz=authz, mtls=mtls and tls is None)]
    else:
        cluster = naming.inbound_cluster(port=port.port)
        filters = [*authz.network_filters, *tcp_filters(cluster, port.protocol, reporter=DESTINATION, mtls=mtls)]
    transport = "tls" if tls is not None else "mtls" if mtls else "plaintext"
    chain = listener_components_pb2.FilterChain(
        name=f"{naming.inbound_cluster(port=port.port)}{transport}", filters=filters
    )
    if isinstance(tls, IngressTLSSettings):
        chain.transport_socket.CopyFrom(tls_socket(server_tls_context(tls, http=port.http)))
    elif mtls:
        chain.transport_socket.CopyFrom(tls_socket(downstream_context()))
    return chain


def ingress_chains(
    port: IngressPort, *, modes: InboundMtls, sds: bool, jwt: JwtProviders = (), authz: InboundAuthz = NO_AUTHZ
) -> tuple[list[listener_components_pb2.FilterChain], bool]:
    """The chains of one ingress port and whether TLS inspection tells them apart: its own TLS, else one
    chain per transport its PeerAuthentication mode admits."""
    if port.tls is not None:
        return [ingress_chain(port, mtls=False, peer_identity=sds, jwt=jwt, authz=authz)], False
    chains = [
        (mtls, ingress_chain(port, mtls=mtls, peer_identity=sds, jwt=jwt, authz=authz))
        for mtls in (True, False)
        if admits(modes.for_port(port.port), mtls=mtls, sds=sds)
    ]
    inspect = split_by_transport(chains)
    return [chain for _, chain in chains], inspect


def _bound_listener(
    port: IngressPort, address: str, modes: InboundMtls, sds: bool, jwt: JwtProviders, authz: InboundAuthz
) -> listener_pb2.Listener:
    listener = listener_pb2.Listener(
        name=naming.outbound_listener(ip=address, port=port.port),
        address=socket_address(address, port.port),
        traffic_direction=1,  # INBOUND
    )
    listener.metadata.CopyFrom(mtls_metadata(modes))
    chains, inspect = ingress_chains(port, modes=modes, sds=sds, jwt=jwt, authz=authz)
    listener.filter_chains.extend(chains)
    if inspect:
        listener.listener_filters.append(tls_inspector())
    return listener


def bound_ingress_listener_specs(
    inbound: SidecarInbound,
    proxy: Proxy,
    *,
    modes: InboundMtls,
    capture: bool,
    jwt: JwtProviders = (),
    authz: InboundAuthz = NO_AUTHZ,
) -> Iterator[Spec]:
    """Listeners bound on `bind` (default: the proxy's address) at each ingress port that traffic capture
    does not bring to virtualInbound (every port without capture; `captureMode: NONE` ports with it)."""
    for port in inbound.ingress or ():
        if capture and port.captured:
            continue
        address = port.bind or proxy.ip
        key = ("lds-ingress", address, port, modes, proxy.sds, jwt, authz)
        yield Spec(
            naming.outbound_listener(ip=address, port=port.port),
            key,
            partial(_bound_listener, port, address, modes, proxy.sds, jwt, authz),
        )


def bound_ports(inbound: SidecarInbound, proxy: Proxy, *, capture: bool) -> frozenset[tuple[str, int]]:
    """The (address, port) the ingress listeners bind: no outbound listener may bind them too."""
    return frozenset(
        (port.bind or proxy.ip, port.port) for port in inbound.ingress or () if not (capture and port.captured)
    )
