"""Istio's HTTP ALPNs over mTLS (`translate/alpn.py`): what a cluster announces per downstream protocol, the
client filter that reads it, and the server chains it selects."""

from __future__ import annotations

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.listener.v3 import listener_components_pb2
from envoy.extensions.filters.http.set_filter_state.v3 import set_filter_state_pb2

from meshd.translate.alpn import (
    APPLICATION_PROTOCOLS,
    MTLS_HTTP_ALPNS,
    MTLS_TCP_ALPNS,
    alpn_by_protocol,
    alpn_filter,
    mark_cluster,
    mesh_http,
    mesh_tcp,
)
from meshd.translate.http_filters import outbound_http_filters
from meshd.translate.mtls import MTLS_ALPNS, apply_istio_mutual


def test_alpn_by_upstream_protocol_as_istio() -> None:
    h11, h2 = "istio-http/1.1,istio,http/1.1", "istio-h2,istio,h2"
    assert alpn_by_protocol("HTTP") == {"HTTP/1.0": h11, "HTTP/1.1": h11, "HTTP/2": h11}
    assert set(alpn_by_protocol("GRPC").values()) == set(alpn_by_protocol("HTTP2").values()) == {h2}
    assert alpn_by_protocol("UNKNOWN") == {"HTTP/1.0": "istio-http/1.0,istio,http/1.0", "HTTP/1.1": h11, "HTTP/2": h2}
    for protocol in ("TCP", "TLS", "HTTPS", "MONGO"):
        assert alpn_by_protocol(protocol) == {}
    # every list starts with the ALPN that selects a server's HTTP chain, then `istio`
    for lists in (alpn_by_protocol("UNKNOWN"), alpn_by_protocol("GRPC")):
        for value in lists.values():
            first, second, _ = value.split(",")
            assert first in MTLS_HTTP_ALPNS and second == "istio"


def test_istio_mutual_clusters_carry_the_lists_and_tcp_ones_none() -> None:
    sniffed, tcp = cluster_pb2.Cluster(name="a"), cluster_pb2.Cluster(name="b")
    apply_istio_mutual(sniffed, sni_name="x", sans=(), protocol="UNKNOWN", auto=True)
    apply_istio_mutual(tcp, sni_name="x", sans=(), protocol="TCP", auto=True)
    assert sniffed.metadata.filter_metadata["istio"]["alpn"] == "by-downstream"  # the request's protocol decides
    grpc = cluster_pb2.Cluster(name="g")
    apply_istio_mutual(grpc, sni_name="x", sans=(), protocol="GRPC", auto=True)
    assert grpc.metadata.filter_metadata["istio"]["alpn"] == "istio-h2,istio,h2"
    assert "istio" not in tcp.metadata.filter_metadata
    plain = cluster_pb2.Cluster(name="c")
    mark_cluster(plain, protocol="TCP")
    assert not plain.HasField("metadata")


def test_outbound_http_filters_set_the_upstream_alpn_before_the_router() -> None:
    names = [f.name for f in outbound_http_filters()]
    assert names.index("istio.alpn") < names.index("envoy.filters.http.router")
    config = set_filter_state_pb2.Config()
    alpn_filter().typed_config.Unpack(config)
    (value,) = config.on_request_headers
    assert value.object_key == APPLICATION_PROTOCOLS and value.skip_if_empty
    expression = value.format_string.text_format_source.inline_string
    assert "['istio']['alpn']" in expression and "request.protocol == 'HTTP/1.0' ? 'istio-http/1.0" in expression


def test_server_chains_split_http_from_tcp_by_alpn() -> None:
    http = mesh_http(listener_components_pb2.FilterChain())
    assert http.filter_chain_match.transport_protocol == "tls"
    assert tuple(http.filter_chain_match.application_protocols) == MTLS_HTTP_ALPNS
    strict = mesh_tcp(listener_components_pb2.FilterChain(), split=False)
    assert strict.filter_chain_match.transport_protocol == "tls" and not strict.filter_chain_match.application_protocols
    permissive = mesh_tcp(listener_components_pb2.FilterChain(), split=True)
    assert tuple(permissive.filter_chain_match.application_protocols) == MTLS_TCP_ALPNS
    assert set(MTLS_ALPNS) == set(MTLS_HTTP_ALPNS) | set(MTLS_TCP_ALPNS)
    assert not set(MTLS_HTTP_ALPNS) & set(MTLS_TCP_ALPNS)  # two chains of a port never match the same ALPN
