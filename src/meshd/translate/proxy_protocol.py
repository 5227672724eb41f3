"""DestinationRule `trafficPolicy.proxyProtocol`: the proxy opens each upstream connection with a PROXY
protocol header (v1 text or v2 binary) carrying the downstream connection's addresses, through Envoy's
`envoy.transport_sockets.upstream_proxy_protocol`, which wraps the cluster's own transport socket
(plaintext, TLS, or each of auto mTLS's per-endpoint sockets)."""

from __future__ import annotations

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import base_pb2, proxy_protocol_pb2
from envoy.extensions.transport_sockets.proxy_protocol.v3 import upstream_proxy_protocol_pb2
from envoy.extensions.transport_sockets.raw_buffer.v3 import raw_buffer_pb2

from meshd.api.destinationrule import ProxyProtocol
from meshd.translate.proto import pack

UPSTREAM_PROXY_PROTOCOL = "envoy.transport_sockets.upstream_proxy_protocol"
RAW_BUFFER = "envoy.transport_sockets.raw_buffer"
_VERSIONS = {"V1": proxy_protocol_pb2.ProxyProtocolConfig.V1, "V2": proxy_protocol_pb2.ProxyProtocolConfig.V2}


def _plaintext() -> base_pb2.TransportSocket:
    return base_pb2.TransportSocket(name=RAW_BUFFER, typed_config=pack(raw_buffer_pb2.RawBuffer()))


def _wrapped(inner: base_pb2.TransportSocket, setting: ProxyProtocol) -> base_pb2.TransportSocket:
    transport = upstream_proxy_protocol_pb2.ProxyProtocolUpstreamTransport(
        config=proxy_protocol_pb2.ProxyProtocolConfig(version=_VERSIONS[setting.version]),
        transport_socket=inner if inner.name else _plaintext(),
    )
    return base_pb2.TransportSocket(name=UPSTREAM_PROXY_PROTOCOL, typed_config=pack(transport))


def apply_proxy_protocol(cluster: cluster_pb2.Cluster, setting: ProxyProtocol | None) -> None:
    """Wrap every transport socket of the cluster (set last, after TLS and mTLS)."""
    if setting is None:
        return
    cluster.transport_socket.CopyFrom(_wrapped(cluster.transport_socket, setting))
    for match in cluster.transport_socket_matches:
        match.transport_socket.CopyFrom(_wrapped(match.transport_socket, setting))
