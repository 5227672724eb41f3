"""Listeners of a gateway proxy: one per (address, port), `0.0.0.0_<port>` as Istio names it (or
`<address>_<port>` where a server binds an address, or where standalone gateways bind their own).

- HTTP ports: one filter chain, the HTTP connection manager with RDS `http.<port>`;
- TLS ports (`tls_inspector`): a chain per SNI set, never two for one SNI: a terminating server
  (its DownstreamTlsContext, then HTTP with RDS `https.<port>...` or TCP routes), a TLS route of a
  PASSTHROUGH server (its `sniHosts` met with the server's hosts; tcp_proxy), AUTO_PASSTHROUGH
  (SNI `outbound_.<port>_.<subset>_.<host>` to that cluster); an unknown SNI is closed;
- TCP ports: the first TCP route that applies (tcp_proxy, weighted).
The HTTP connection manager sets the client address (`use_remote_address`; from X-Forwarded-For when
`gatewayTopology.numTrustedProxies` is set) and, as Istio's gateways, sanitizes and sets
`x-forwarded-client-cert` from a verified client certificate. The gateway workload's
RequestAuthentications and AuthorizationPolicies apply as on a sidecar's inbound side: jwt_authn and the
authorization filters ahead of CORS, fault and the router (paths normalised per `pathNormalization`), the
network authorization filters ahead of every TCP chain's tcp_proxy.
"""

from __future__ import annotations

from collections.abc import Sequence

from envoy.config.listener.v3 import listener_components_pb2, listener_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2
from envoy.extensions.transport_sockets.tls.v3 import tls_pb2
from google.protobuf import duration_pb2

from meshd.translate.authz.inbound import NO_AUTHZ, InboundAuthz
from meshd.translate.clusters import ads_config_source, socket_address
from meshd.translate.http_filters import outbound_http_filters
from meshd.translate.jwt_authn import JwtProviders, jwt_authn_filter
from meshd.translate.listeners import normalize_paths, tls_inspector
from meshd.translate.metrics import SOURCE, http_stats_loggers, outbound_exchange_filters
from meshd.translate.mtls import tls_socket
from meshd.translate.proto import pack
from meshd.translate.protocol import allow_upgrades

HCM = "envoy.filters.network.http_connection_manager"
OUTBOUND = 2  # envoy.config.core.v3.TrafficDirection


def listener_name(address: str, port: int) -> str:
    return f"{address}_{port}"


def http_filter(
    *,
    route_name: str,
    stat_prefix: str,
    authz: InboundAuthz = NO_AUTHZ,
    jwt: JwtProviders = (),
    trusted_hops: int = 0,
) -> listener_components_pb2.Filter:
    hcm = hcm_pb2.HttpConnectionManager(
        stat_prefix=stat_prefix,
        codec_type=hcm_pb2.HttpConnectionManager.AUTO,
        rds=hcm_pb2.Rds(config_source=ads_config_source(), route_config_name=route_name),
        stream_idle_timeout=duration_pb2.Duration(seconds=0),
    )
    hcm.access_log.extend(http_stats_loggers(reporter=SOURCE))  # Istio's gateways report as the source
    # as Istio's gateways: the peer exchange, jwt_authn, the authorization filters (they read its payload), CORS,
    # fault, router
    hcm.http_filters.extend(outbound_exchange_filters())
    hcm.http_filters.extend([jwt_authn_filter(jwt)] if jwt else [])
    hcm.http_filters.extend(authz.http_filters)
    hcm.http_filters.extend(outbound_http_filters())
    normalize_paths(hcm, authz.normalization)
    allow_upgrades(hcm)  # WebSocket through the gateway, as Istio's gateways allow it
    hcm.use_remote_address.value = True
    # gatewayTopology.numTrustedProxies: the client address (RBAC's remote_ip) is taken from
    # X-Forwarded-For, that many hops from the right
    hcm.xff_num_trusted_hops = trusted_hops
    hcm.forward_client_cert_details = hcm_pb2.HttpConnectionManager.SANITIZE_SET
    details = hcm.set_current_client_cert_details
    details.subject.value = True
    details.uri = True
    details.dns = True
    return listener_components_pb2.Filter(name=HCM, typed_config=pack(hcm))


def chain(
    name: str,
    network_filter: listener_components_pb2.Filter,
    *,
    server_names: Sequence[str] = (),
    tls: tls_pb2.DownstreamTlsContext | None = None,
    destination_ranges: Sequence[object] = (),
    source_ranges: Sequence[object] = (),
    before: Sequence[listener_components_pb2.Filter] = (),
) -> listener_components_pb2.FilterChain:
    """A filter chain ending in `network_filter`; `before`: the network filters ahead of it (a TCP
    chain's authorization)."""
    out = listener_components_pb2.FilterChain(name=name, filters=[*before, network_filter])
    if server_names or destination_ranges or source_ranges:
        match = out.filter_chain_match
        match.server_names.extend(sorted(server_names))
        match.prefix_ranges.extend(destination_ranges)
        match.source_prefix_ranges.extend(source_ranges)
    if tls is not None:
        out.transport_socket.CopyFrom(tls_socket(tls))
    return out


def listener(
    *, address: str, port: int, chains: Sequence[listener_components_pb2.FilterChain], inspect_tls: bool
) -> listener_pb2.Listener:
    out = listener_pb2.Listener(
        name=listener_name(address, port),
        address=socket_address(address, port),
        filter_chains=chains,
        traffic_direction=OUTBOUND,
    )
    if inspect_tls:
        out.listener_filters.append(tls_inspector())
    return out
