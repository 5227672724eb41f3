"""The TCP peer identity exchange's pieces (`translate/peer_exchange.py`): which ports, the endpoint's
metadata, the client's socket match, the server's listener filters."""

from __future__ import annotations

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import base_pb2
from envoy.extensions.filters.listener.proxy_protocol.v3 import proxy_protocol_pb2
from envoy.extensions.transport_sockets.proxy_protocol.v3 import upstream_proxy_protocol_pb2

from meshd.model.services import Endpoint
from meshd.translate.peer_exchange import (
    EXCHANGE_KEY,
    EXCHANGE_MATCH,
    add_exchange,
    exchange_listener_filters,
    exchanges_on,
    mark_endpoint,
)


def test_only_declared_tcp_ports_exchange() -> None:
    assert exchanges_on("TCP") and exchanges_on("TLS") and exchanges_on("MONGO")
    assert not exchanges_on("HTTP") and not exchanges_on("GRPC") and not exchanges_on("UNKNOWN")


def test_an_endpoint_tells_its_identity_and_whether_its_sidecar_reads_the_header() -> None:
    labels = (("app", "reviews"), ("version", "v2"))
    captured, bound = base_pb2.Metadata(), base_pb2.Metadata()
    mark_endpoint(
        captured,
        Endpoint("10.0.0.5", 9080, labels=labels, workload="reviews-v2-abc", captured=True),
        namespace="shop",
        cluster_id="east",
    )
    mark_endpoint(bound, Endpoint("10.0.0.6", 9080, workload="ratings-1"), namespace="shop", cluster_id="east")
    # workload, namespace, app, version, cluster: one value (translate/metric_labels.py)
    assert dict(captured.filter_metadata["meshd.peer"]) == {"id": "reviews|shop|reviews|v2|east"}
    assert captured.filter_metadata["envoy.transport_socket_match"][EXCHANGE_KEY] == "proxy-v2"
    # no `app`: the pod's name; no `version`: unknown
    assert dict(bound.filter_metadata["meshd.peer"])["id"] == "ratings-1|shop|unknown|unknown|east"
    assert EXCHANGE_KEY not in bound.filter_metadata["envoy.transport_socket_match"]  # not captured: no header


def test_the_client_sends_its_identity_ahead_of_the_same_tls_socket() -> None:
    cluster = cluster_pb2.Cluster(name="outbound|27017||db.shop.svc.cluster.local")
    tls = base_pb2.TransportSocket(name="envoy.transport_sockets.tls")
    cluster.transport_socket_matches.add(name="tlsMode-istio", transport_socket=tls)
    add_exchange(cluster, tls=tls)
    first = cluster.transport_socket_matches[0]
    assert first.name == EXCHANGE_MATCH and dict(first.match) == {"tlsMode": "istio", EXCHANGE_KEY: "proxy-v2"}
    wrapper = upstream_proxy_protocol_pb2.ProxyProtocolUpstreamTransport()
    first.transport_socket.typed_config.Unpack(wrapper)
    assert wrapper.transport_socket == tls
    assert [(t.type, t.format_string.text_format_source.inline_string) for t in wrapper.config.added_tlvs] == [
        (0xE0, "%ENVIRONMENT(MESHD_PEER_ID)%")
    ]


def test_the_server_reads_it_on_the_ports_that_take_mtls_then_restores_the_destination() -> None:
    assert exchange_listener_filters(mtls_by_default=False, exceptions=[]) == []  # DISABLE everywhere
    reader, restore = exchange_listener_filters(mtls_by_default=True, exceptions=[])
    assert not reader.HasField("filter_disabled") and restore.name == "envoy.filters.listener.original_dst"
    config = proxy_protocol_pb2.ProxyProtocol()
    reader.typed_config.Unpack(config)
    assert config.allow_requests_without_proxy_protocol  # plaintext clients and clients without one pass
    assert [(r.tlv_type, r.on_tlv_present.key) for r in config.rules] == [(0xE0, "id")]
    reader, _ = exchange_listener_filters(mtls_by_default=True, exceptions=[8080])  # 8080: DISABLE
    assert reader.filter_disabled.destination_port_range.start == 8080
    reader, _ = exchange_listener_filters(mtls_by_default=False, exceptions=[9000, 9001])  # only those take mTLS
    ports = [r.destination_port_range.start for r in reader.filter_disabled.not_match.or_match.rules]
    assert ports == [9000, 9001]
