"""Istio's peer identity on TCP connections, from what upstream Envoy provides.

Istio's sidecars swap workload labels over TCP with a metadata-exchange filter of their own, which upstream
Envoy does not have. meshd gives each side of a TCP connection between sidecars its peer's identity this way:

- **the client side** (reporter `source`) reads the server's from the endpoint it connected to: meshd puts
  the workload's identity in the endpoint's metadata (`meshd.peer` key `id`: workload, namespace, app,
  version, cluster packed in one value; only for endpoints with a sidecar, as istiod puts its
  `istio.workload` there), which the TCP stats loggers read (`%UPSTREAM_METADATA%`);
- **the server side** (reporter `destination`) reads the client's from a PROXY protocol v2 header the client
  sidecar sends ahead of the mTLS handshake, its packed identity in a TLV of the custom range (0xE0),
  filled from the agent's environment like the HTTP exchange header (Envoy's upstream PROXY protocol
  transport socket, `format_string`: the cluster stays the same for every proxy). The client sends it only
  toward endpoints whose sidecar captures their traffic (endpoint metadata, next to `tlsMode: istio`) and only
  on TCP ports (declared, neither HTTP nor sniffed: a PROXY header makes Envoy keep an upstream HTTP
  connection per downstream connection). The server's `virtualInbound` reads and strips it with the
  proxy_protocol listener filter (connections without one pass untouched), which writes the TLVs into the
  connection's dynamic metadata (`meshd.peer` key `id`), then restores the original destination the header
  overwrote (`original_dst` again: port matching, authorization ports and the inbound cluster see the
  real one). The connection's remote address becomes the address the client's app connected from (the
  client pod's own address); `ipBlocks` still match the connection's peer, and `remoteIpBlocks` the
  address a PROXY header gives, as Istio documents for them.

A peer without a sidecar stays `unknown` on both sides, as in Istio.
"""

from __future__ import annotations

from collections.abc import Sequence

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import base_pb2, proxy_protocol_pb2, substitution_format_string_pb2
from envoy.config.listener.v3 import listener_components_pb2
from envoy.extensions.filters.listener.original_dst.v3 import original_dst_pb2
from envoy.extensions.filters.listener.proxy_protocol.v3 import proxy_protocol_pb2 as listener_pp_pb2
from envoy.extensions.transport_sockets.proxy_protocol.v3 import upstream_proxy_protocol_pb2
from google.protobuf import struct_pb2

from meshd.model.services import Endpoint, is_http, is_sniffed
from meshd.translate.metrics import IDENTITY_ENV, PEER_KEY, PEER_METADATA, UNKNOWN, identity_id, identity_values
from meshd.translate.mtls import TLS_MODE_KEY, TRANSPORT_SOCKET_MATCH
from meshd.translate.proto import pack
from meshd.translate.protocol import any_port
from meshd.translate.proxy_protocol import UPSTREAM_PROXY_PROTOCOL

EXCHANGE_KEY = "meshdPeerExchange"  # endpoint metadata: its sidecar reads a PROXY v2 header
EXCHANGE_VALUE = "proxy-v2"
EXCHANGE_MATCH = "tlsMode-istio-peer-exchange"
PROXY_PROTOCOL_FILTER = "envoy.filters.listener.proxy_protocol"
ORIGINAL_DST_FILTER = "envoy.filters.listener.original_dst"
IDENTITY_TLV = 0xE0  # PP2_TYPE_MIN_CUSTOM


def exchanges_on(protocol: str) -> bool:
    """Whether a port's client sidecars send their identity in a PROXY header: TCP ports only."""
    return not is_http(protocol) and not is_sniffed(protocol)


# --- endpoints -----------------------------------------------------------------------------------------


def identity_metadata(endpoint: Endpoint, *, namespace: str, cluster_id: str) -> struct_pb2.Struct:
    """The workload's identity as its own sidecar reports it (`metrics.identity_values`, packed; the agent
    names a workload after its `app` label, else its pod)."""
    labels = dict(endpoint.labels)
    workload = labels.get("app") or endpoint.workload or UNKNOWN
    fields = struct_pb2.Struct()
    values = identity_values(labels, workload=workload, namespace=namespace, cluster=cluster_id)
    fields.update({PEER_KEY: identity_id(values)})
    return fields


def mark_endpoint(metadata: base_pb2.Metadata, endpoint: Endpoint, *, namespace: str, cluster_id: str) -> None:
    """On an endpoint with a sidecar: its identity (client-side labels), and whether its sidecar reads
    the client's PROXY header (a captured one: its virtualInbound does)."""
    metadata.filter_metadata[PEER_METADATA].CopyFrom(
        identity_metadata(endpoint, namespace=namespace, cluster_id=cluster_id)
    )
    if endpoint.captured:
        metadata.filter_metadata[TRANSPORT_SOCKET_MATCH].update({EXCHANGE_KEY: EXCHANGE_VALUE})


# --- the client's clusters -----------------------------------------------------------------------------


def _header(inner: base_pb2.TransportSocket) -> base_pb2.TransportSocket:
    config = proxy_protocol_pb2.ProxyProtocolConfig(version=proxy_protocol_pb2.ProxyProtocolConfig.V2)
    entry = config.added_tlvs.add(type=IDENTITY_TLV)
    entry.format_string.CopyFrom(
        substitution_format_string_pb2.SubstitutionFormatString(
            text_format_source=base_pb2.DataSource(inline_string=f"%ENVIRONMENT({IDENTITY_ENV})%")
        )
    )
    transport = upstream_proxy_protocol_pb2.ProxyProtocolUpstreamTransport(config=config, transport_socket=inner)
    return base_pb2.TransportSocket(name=UPSTREAM_PROXY_PROTOCOL, typed_config=pack(transport))


def add_exchange(cluster: cluster_pb2.Cluster, *, tls: base_pb2.TransportSocket) -> None:
    """Toward endpoints marked by `mark_endpoint` as captured sidecars: `tls` (the cluster's Istio mTLS
    socket) behind a PROXY v2 header with our identity; the cluster's other sockets stay as they are."""
    match = struct_pb2.Struct()
    match.update({TLS_MODE_KEY: "istio", EXCHANGE_KEY: EXCHANGE_VALUE})
    cluster.transport_socket_matches.insert(
        0, cluster_pb2.Cluster.TransportSocketMatch(name=EXCHANGE_MATCH, match=match, transport_socket=_header(tls))
    )


# --- the server's virtualInbound -----------------------------------------------------------------------


def exchange_listener_filters(
    *, mtls_by_default: bool, exceptions: Sequence[int]
) -> list[listener_components_pb2.ListenerFilter]:
    """After the first original_dst: the proxy_protocol filter on the ports that take mTLS (every port but
    `exceptions` when `mtls_by_default`, else only `exceptions`), then original_dst again. Empty where no
    port takes mTLS."""
    if not mtls_by_default and not exceptions:
        return []
    config = listener_pp_pb2.ProxyProtocol(allow_requests_without_proxy_protocol=True, stat_prefix="meshd_peer")
    rule = config.rules.add(tlv_type=IDENTITY_TLV)
    rule.on_tlv_present.metadata_namespace = PEER_METADATA
    rule.on_tlv_present.key = PEER_KEY
    reader = listener_components_pb2.ListenerFilter(name=PROXY_PROTOCOL_FILTER, typed_config=pack(config))
    if mtls_by_default and exceptions:
        reader.filter_disabled.CopyFrom(any_port(exceptions))
    elif not mtls_by_default:
        reader.filter_disabled.not_match.CopyFrom(any_port(exceptions))
    restore = listener_components_pb2.ListenerFilter(
        name=ORIGINAL_DST_FILTER, typed_config=pack(original_dst_pb2.OriginalDst())
    )
    return [reader, restore]
