"""`virtualInbound`, a capture-mode sidecar's listener on 0.0.0.0:15006 (where iptables redirects inbound
TCP), as Istio lays it out: the original destination restored by the `original_dst` listener filter; per
served port, chains matched by destination port (HTTP routing to `inbound|<port>||`, or TCP), split by the
PeerAuthentication mode of the port as the bound inbound listener does (`listeners.py` helpers); other ports
pass through to `InboundPassthroughCluster` (after the network authorization filters; plaintext HTTP to
them, sniffed, through jwt_authn and the HTTP authorization filters when the workload has any, as Istio's
passthrough HTTP chain); a connection made to 15006 itself is black-holed.

It is built as a skeleton shared by the proxies serving the same ports the same way, with each proxy's
services' routes set in (`inbound_splice.py`).
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

from envoy.config.listener.v3 import listener_components_pb2, listener_pb2
from envoy.extensions.filters.listener.original_dst.v3 import original_dst_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2

from meshd.model.services import is_http, is_sniffed, routes_http
from meshd.translate import naming
from meshd.translate.alpn import mesh_http, mesh_tcp
from meshd.translate.authz.inbound import NO_AUTHZ, InboundAuthz
from meshd.translate.clusters import socket_address
from meshd.translate.grpc_messages import message_count_filters
from meshd.translate.http_filters import inbound_http_filters
from meshd.translate.inbound_splice import Skeletons, assemble
from meshd.translate.jwt_authn import JwtProviders
from meshd.translate.listener_plan import RESERVED_PORTS
from meshd.translate.listeners import (
    InboundEntry,
    admits,
    catch_all_routes,
    hcm_filter,
    inbound_http_chain,
    normalize_paths,
    split_by_transport,
    tcp_filters,
    tcp_proxy_filter,
    tls_inspector,
)
from meshd.translate.metrics import DESTINATION, SOURCE, http_stats_loggers
from meshd.translate.mtls import downstream_context, tls_socket
from meshd.translate.naming import ANY_ADDRESS, BLACKHOLE, INBOUND_PASSTHROUGH
from meshd.translate.peer_auth import InboundMtls, mtls_metadata
from meshd.translate.peer_exchange import exchange_listener_filters
from meshd.translate.proto import pack
from meshd.translate.protocol import match_sniffed_http, port_protocol, sniff
from meshd.translate.sidecar_ingress import IngressPort, ingress_chains
from meshd.translate.spec import Partial, Spec

INBOUND = 1  # envoy.config.core.v3.TrafficDirection
InboundShape = tuple[tuple[int, str], ...]  # the served target ports and their protocols, in order


def _inbound_tcp_chain(
    target: int, *, mtls: bool, protocol: str = "TCP", authz: InboundAuthz = NO_AUTHZ
) -> listener_components_pb2.FilterChain:
    """tcp_proxy to the app's port, after the workload's network authorization filters."""
    cluster = naming.inbound_cluster(port=target)
    filters = [*authz.network_filters, *tcp_filters(cluster, protocol, reporter=DESTINATION, mtls=mtls)]
    chain = listener_components_pb2.FilterChain(filters=filters)
    if mtls:
        chain.transport_socket.CopyFrom(tls_socket(downstream_context()))
    return chain


def _passthrough_chain(*, mtls: bool, authz: InboundAuthz = NO_AUTHZ) -> listener_components_pb2.FilterChain:
    """Ports no service declares: to the original destination, after the network authorization filters
    (a policy covers every port of the workload, declared or not)."""
    chain = listener_components_pb2.FilterChain(
        name=f"{INBOUND_PASSTHROUGH}|{'mtls' if mtls else 'plaintext'}",
        filters=[*authz.network_filters, tcp_proxy_filter(INBOUND_PASSTHROUGH, reporter=DESTINATION, mtls=mtls)],
    )
    if mtls:
        chain.transport_socket.CopyFrom(tls_socket(downstream_context()))
    return chain


def _passthrough_http_chain(
    *, jwt: JwtProviders, authz: InboundAuthz, mtls: bool
) -> listener_components_pb2.FilterChain:
    """HTTP to a port no service declares, when the workload has RequestAuthentications or HTTP authorization
    filters (as Istio's inbound passthrough HTTP chains): plaintext HTTP (sniffed) or HTTP inside Istio mTLS
    (the client's ALPN says HTTP; the caller sets the match): jwt_authn, the HTTP authorization filters and the
    router to the original destination, so tokens are verified and HTTP rules apply there as on declared
    ports, instead of the TCP adaptation of the rules (`rules.py`)."""
    routes = catch_all_routes(INBOUND_PASSTHROUGH, vhost="inbound|passthrough", cluster=INBOUND_PASSTHROUGH)
    hcm = hcm_pb2.HttpConnectionManager(stat_prefix="inbound_passthrough", route_config=routes)
    normalize_paths(hcm, authz.normalization)
    hcm.access_log.extend(http_stats_loggers(reporter=DESTINATION, mtls=mtls))
    chain = listener_components_pb2.FilterChain(
        name=f"{INBOUND_PASSTHROUGH}|{'mtls' if mtls else 'plaintext'}-http",
        filters=[hcm_filter(hcm, [*message_count_filters(), *inbound_http_filters(jwt=jwt, authz=authz.http_filters)])],
    )
    if mtls:
        chain.transport_socket.CopyFrom(tls_socket(downstream_context()))
    return chain


def served_ports(served: Sequence[InboundEntry]) -> dict[int, list[InboundEntry]]:
    """The workload's target ports (not Envoy's own) with the service ports they back."""
    by_target: dict[int, list[InboundEntry]] = {}
    for entry in served:
        if entry[2] not in RESERVED_PORTS:
            by_target.setdefault(entry[2], []).append(entry)
    return dict(sorted(by_target.items()))


def target_protocol(entries: Sequence[InboundEntry]) -> str:
    """The protocol of a target port, from the service ports it backs (`protocol.port_protocol`)."""
    return port_protocol(sp.protocol for service, port, _ in entries if (sp := service.port(port)) is not None)


def inbound_protocols(served: Sequence[InboundEntry]) -> dict[int, str]:
    """Per target port of a workload, the protocol its inbound cluster speaks to the app."""
    by_target: dict[int, list[InboundEntry]] = {}
    for entry in served:
        by_target.setdefault(entry[2], []).append(entry)
    return {target: target_protocol(entries) for target, entries in sorted(by_target.items())}


def _ingress_chains(
    ingress: tuple[IngressPort, ...], modes: InboundMtls, sds: bool, jwt: JwtProviders, authz: InboundAuthz
) -> tuple[list[listener_components_pb2.FilterChain], bool]:
    """A Sidecar's ingress ports (those traffic capture brings here), each matched by its port."""
    chains: list[listener_components_pb2.FilterChain] = []
    inspect = False
    for port in ingress:
        if not port.captured:
            continue
        found, split = ingress_chains(port, modes=modes, sds=sds, jwt=jwt, authz=authz)
        for chain in found:
            chain.filter_chain_match.destination_port.value = port.port
        chains += found
        inspect |= split
    return chains, inspect


def _virtual_inbound(
    ports: InboundShape,
    inbound_port: int,
    modes: InboundMtls,
    sds: bool,
    jwt: JwtProviders,
    detection_timeout: float = 0.0,
    authz: InboundAuthz = NO_AUTHZ,
    ingress: tuple[IngressPort, ...] | None = None,
) -> listener_pb2.Listener:
    """The skeleton of virtualInbound: every HTTP chain's route configuration holds only its name
    (`inbound|<target>||`); the services' routes are set in by `inbound_splice.assemble`. So it depends on
    the served ports' targets and protocols, not on the services: proxies serving the same ports the
    same way share it."""
    listener = listener_pb2.Listener(
        name=naming.VIRTUAL_INBOUND, address=socket_address(ANY_ADDRESS, inbound_port), traffic_direction=INBOUND
    )
    listener.metadata.CopyFrom(mtls_metadata(modes))
    listener.listener_filters.append(
        listener_components_pb2.ListenerFilter(
            name="envoy.filters.listener.original_dst", typed_config=pack(original_dst_pb2.OriginalDst())
        )
    )
    # a mesh client's identity in a PROXY header ahead of mTLS, on the ports that take mTLS
    mtls_by_default = admits(modes.mode, mtls=True, sds=sds)
    exceptions = [port for port, mode in modes.ports if admits(mode, mtls=True, sds=sds) != mtls_by_default]
    listener.listener_filters.extend(exchange_listener_filters(mtls_by_default=mtls_by_default, exceptions=exceptions))
    loop = listener_components_pb2.FilterChain(
        name="virtualInbound-blackhole", filters=[tcp_proxy_filter(BLACKHOLE, reporter=SOURCE)]
    )
    loop.filter_chain_match.destination_port.value = inbound_port
    chains = [loop]
    inspect = False
    sniffed: list[int] = []
    if ingress is not None:  # a Sidecar's ingress replaces the ports derived from the services
        found, inspect = _ingress_chains(ingress, modes, sds, jwt, authz)
        chains += found
        ports = ()
    for target, protocol in ports:
        mode = modes.for_port(target)
        per_port = []
        for mtls in (True, False):
            if not admits(mode, mtls=mtls, sds=sds):
                continue
            kind = "mtls" if mtls else "plaintext"
            if routes_http(protocol):
                route_name = naming.inbound_cluster(port=target)
                chain = inbound_http_chain(
                    (), route_name=route_name, mtls=mtls, peer_identity=sds, jwt=jwt, authz=authz, routes=False
                )
                chain.name = f"{naming.inbound_cluster(port=target)}{kind}"
                chain.filter_chain_match.destination_port.value = target
                if is_sniffed(protocol):
                    # plaintext: what http_inspector detected; mTLS: the HTTP ALPNs of a mesh client
                    if mtls:
                        mesh_http(chain)
                    else:
                        match_sniffed_http(chain)
                    chain.name += "-http"
                    if not mtls:
                        sniffed.append(target)
                per_port.append((mtls, chain))
            if not is_http(protocol):
                chain = _inbound_tcp_chain(target, mtls=mtls, protocol=protocol, authz=authz)
                chain.name = f"{naming.inbound_cluster(port=target)}{kind}"
                chain.filter_chain_match.destination_port.value = target
                if mtls and is_sniffed(protocol):  # beside the HTTP chain: the rest of the TLS connections
                    mesh_tcp(chain, split=admits(mode, mtls=False, sds=sds))
                per_port.append((mtls, chain))
        inspect |= split_by_transport(per_port) or (is_sniffed(protocol) and admits(mode, mtls=True, sds=sds))
        chains += [chain for _, chain in per_port]
    # HTTP to undeclared ports: sniffed (plaintext) or told by a mesh client's ALPN (mTLS) when tokens or HTTP
    # rules must be checked there
    checks_http = bool(jwt) or bool(authz.http_filters)
    passthrough: list[tuple[bool, listener_components_pb2.FilterChain]] = []
    for mtls in (True, False):
        if not admits(modes.mode, mtls=mtls, sds=sds):
            continue
        chain = _passthrough_chain(mtls=mtls, authz=authz)
        if mtls and checks_http:
            mesh_tcp(chain, split=admits(modes.mode, mtls=False, sds=sds))
            passthrough.append((mtls, mesh_http(_passthrough_http_chain(jwt=jwt, authz=authz, mtls=True))))
        passthrough.append((mtls, chain))
    split = split_by_transport(passthrough)
    inspect |= split or (checks_http and admits(modes.mode, mtls=True, sds=sds))
    chains += [chain for _, chain in passthrough]
    passthrough_http = checks_http and admits(modes.mode, mtls=False, sds=sds)
    if passthrough_http:
        http = match_sniffed_http(_passthrough_http_chain(jwt=jwt, authz=authz, mtls=False))
        if split:
            http.filter_chain_match.transport_protocol = "raw_buffer"
        chains.append(http)
    if inspect:
        listener.listener_filters.append(tls_inspector())
    if passthrough_http:  # every port but the declared ones that need no detection (and 15006 itself)
        declared = {c.filter_chain_match.destination_port.value for c in chains}
        declared.discard(0)  # (chains without a port)
        sniff(listener, timeout_s=detection_timeout, skip_ports=sorted(declared - set(sniffed)))
    elif sniffed:
        sniff(listener, timeout_s=detection_timeout, ports=sniffed)
    listener.filter_chains.extend(chains)
    return listener


def assembled_inbound(
    served: tuple[InboundEntry, ...],
    inbound_port: int,
    modes: InboundMtls,
    sds: bool,
    jwt: JwtProviders,
    timeout: float,
    authz: InboundAuthz,
    ingress: tuple[IngressPort, ...] | None,
    skeletons: Skeletons,
) -> bytes | Partial:
    """virtualInbound: the skeleton of the served ports (shared through `skeletons`) with this proxy's
    services' routes set in."""
    by_target = served_ports(served if ingress is None else ())  # a Sidecar's ingress replaces them
    ports = tuple((target, target_protocol(entries)) for target, entries in by_target.items())
    skeleton = Spec(
        naming.VIRTUAL_INBOUND,
        ("lds-cap-in-skeleton", ports, inbound_port, modes, sds, jwt, timeout, authz, ingress),
        partial(_virtual_inbound, ports, inbound_port, modes, sds, jwt, timeout, authz, ingress),
    )
    routes = {
        naming.inbound_cluster(port=target): entries
        for (target, protocol), entries in zip(ports, by_target.values(), strict=True)
        if routes_http(protocol)
    }
    return assemble(skeleton, skeletons, routes)
