"""Istio's standard metrics as translation emits them (translate/metrics.py), the names the scrape endpoints
expose (agent/prometheus.py) and the injector's metrics merging (kube/inject_metrics.py): pure functions."""

from __future__ import annotations

import json

import pytest
from envoy.extensions.access_loggers.stats.v3 import stats_pb2

from meshd.agent.prometheus import app_scrape, identity_env, istio_names
from meshd.kube.inject_metrics import BadMetricsAnnotation, metrics_merge
from meshd.settings import AgentSettings
from meshd.translate.grpc_messages import MESSAGES_METADATA, REQUEST_MESSAGES_VALUE, RESPONSE_MESSAGES_VALUE
from meshd.translate.metric_labels import decompact
from meshd.translate.metrics import (
    DEFAULT_METRICS,
    DESTINATION,
    SOURCE,
    MetricOverride,
    MetricsConfig,
    counts_grpc_messages,
    http_stats_loggers,
    standard_tags,
    tcp_stats_loggers,
)

ISTIO_LABELS = {
    "reporter", "source_workload", "source_workload_namespace", "source_principal", "source_app", "source_version",
    "source_cluster", "destination_workload", "destination_workload_namespace", "destination_principal",
    "destination_app", "destination_version", "destination_service", "destination_service_name",
    "destination_service_namespace", "destination_cluster", "request_protocol", "response_code",
    "grpc_response_status", "response_flags", "connection_security_policy",
}  # fmt: skip


def _labels(stat: stats_pb2.Config.Stat) -> dict[str, str]:
    """Istio's labels of a stat (its compact tags read back, translate/metric_labels.py): label -> format."""
    return dict(decompact((t.name, t.value_format) for t in stat.tags))


def _config(log: object) -> stats_pb2.Config:
    config = stats_pb2.Config()
    log.typed_config.Unpack(config)  # type: ignore[attr-defined]
    return config


@pytest.mark.parametrize("reporter", [SOURCE, DESTINATION])
def test_http_labels_are_istios(reporter: str) -> None:
    log, grpc = http_stats_loggers(reporter=reporter, mtls=True)
    config, messages = _config(log), _config(grpc)
    assert [c.stat.name for c in config.counters] == ["requests_total"]
    assert [h.stat.name for h in config.histograms] == [
        "request_duration_milliseconds", "request_bytes", "response_bytes"
    ]  # fmt: skip
    # the gRPC message counters: their own logger, logging only streams the Lua step gave counts (gRPC calls)
    assert [c.stat.name for c in messages.counters] == ["request_messages_total", "response_messages_total"]
    assert [c.value_format for c in messages.counters] == [REQUEST_MESSAGES_VALUE, RESPONSE_MESSAGES_VALUE]
    assert grpc.filter.metadata_filter.matcher.filter == MESSAGES_METADATA
    assert not log.HasField("filter")
    for stat in [*(c.stat for c in config.counters), *(h.stat for h in config.histograms)]:
        assert set(_labels(stat)) == ISTIO_LABELS
        assert len(stat.tags) == 11  # compact: 3 groups, 7 single labels, the reporter
    for counter in messages.counters:
        assert set(_labels(counter.stat)) == ISTIO_LABELS


def test_connection_security_policy_by_side_and_chain() -> None:
    assert dict(standard_tags(reporter=SOURCE, http=True, mtls=None))["connection_security_policy"] == "unknown"
    assert dict(standard_tags(reporter=DESTINATION, http=True, mtls=True))["connection_security_policy"] == "mutual_tls"
    plaintext = dict(standard_tags(reporter=DESTINATION, http=True, mtls=False))
    assert plaintext["connection_security_policy"] == "none"
    assert plaintext["source_principal"] == plaintext["destination_principal"] == "unknown"


def test_tcp_metrics_log_on_connect_and_at_the_end() -> None:
    opened, closed = tcp_stats_loggers(reporter=SOURCE)
    assert [c.stat.name for c in _config(opened).counters] == ["tcp_connections_opened_total"]
    assert [c.stat.name for c in _config(closed).counters] == [
        "tcp_connections_closed_total", "tcp_sent_bytes_total", "tcp_received_bytes_total"
    ]  # fmt: skip
    assert list(opened.filter.log_type_filter.types) != list(closed.filter.log_type_filter.types)
    tags = _labels(_config(closed).counters[0].stat)
    assert tags["request_protocol"] == "tcp" and "response_code" not in tags
    # no headers on TCP: the client reads the server's identity from the endpoint (translate/peer_exchange.py)
    assert tags["destination_workload"].endswith("%UPSTREAM_METADATA(meshd.peer:id)%")
    server = dict(standard_tags(reporter=DESTINATION, http=False, mtls=True))
    assert server["source_workload"].endswith("%DYNAMIC_METADATA(meshd.peer:id)%")  # its PROXY header


def test_overrides_disable_and_retag() -> None:
    config = MetricsConfig(
        overrides=(
            MetricOverride(metric="REQUEST_DURATION", disabled=True),
            MetricOverride(mode="SERVER", remove_tags=("source_principal",), upsert_tags=(("team", "%CEL('a')%"),)),
        )
    )
    server = _config(http_stats_loggers(reporter=DESTINATION, mtls=True, config=config)[0])
    assert [h.stat.name for h in server.histograms] == ["request_bytes", "response_bytes"]
    tags = _labels(server.counters[0].stat)
    assert "source_principal" not in tags and tags["team"] == "%CEL('a')%"
    client = _config(http_stats_loggers(reporter=SOURCE, config=config)[0])
    assert "source_principal" in _labels(client.counters[0].stat)  # SERVER only
    assert http_stats_loggers(reporter=SOURCE, config=MetricsConfig(enabled=False)) == []
    assert DEFAULT_METRICS.metric_tags("GRPC_REQUEST_MESSAGES", SOURCE, []) == []
    # both gRPC message counts disabled: no second logger, and the reporter needs no counting filters
    no_grpc = MetricsConfig(overrides=(MetricOverride(metric="GRPC_REQUEST_MESSAGES", disabled=True),
                                       MetricOverride(metric="GRPC_RESPONSE_MESSAGES", disabled=True)))  # fmt: skip
    assert len(http_stats_loggers(reporter=SOURCE, config=no_grpc)) == 1
    assert not counts_grpc_messages(no_grpc, reporter=SOURCE) and counts_grpc_messages(config, reporter=SOURCE)


def test_istio_names() -> None:
    text = (
        "# TYPE envoy_istio_requests_total counter\n"
        'envoy_istio_requests_total{reporter="source",x="envoy_istio_y"} 3\n'
        "# TYPE envoy_server_live gauge\nenvoy_server_live 1\n"
    )
    assert istio_names(text) == (
        "# TYPE istio_requests_total counter\n"
        'istio_requests_total{reporter="source",x="envoy_istio_y"} 3\n'
        "# TYPE envoy_server_live gauge\nenvoy_server_live 1\n"
    )


def test_identity_env() -> None:
    settings = AgentSettings(pod="web-v1-abc", namespace="shop", labels={"app": "web"}, workload_name="web-v1")
    # workload, namespace, app, version, cluster: packed as the peer exchange carries them
    assert identity_env(settings) == {"MESHD_PEER_ID": "web-v1|shop|web|unknown|Kubernetes"}


def test_injector_merges_metrics() -> None:
    assert metrics_merge({}) == (
        {"prometheus.io/scrape": "true", "prometheus.io/port": "15020", "prometheus.io/path": "/stats/prometheus"},
        None,
    )
    merged, app = metrics_merge({"prometheus.io/scrape": "true", "prometheus.io/port": "9090"})
    assert merged["prometheus.io/port"] == "15020"
    assert app is not None and json.loads(app) == {"scrape": "true", "path": "/metrics", "port": "9090"}
    assert app_scrape({"ISTIO_PROMETHEUS_ANNOTATIONS": app}) == (9090, "/metrics")
    assert metrics_merge({"prometheus.io/scrape": "false"}) == ({}, None)
    assert metrics_merge({"prometheus.istio.io/merge-metrics": "false", "prometheus.io/scrape": "true"}) == ({}, None)
    with pytest.raises(BadMetricsAnnotation, match=r"prometheus.io/port.*'http'"):
        metrics_merge({"prometheus.io/scrape": "true", "prometheus.io/port": "http"})
    with pytest.raises(ValueError, match="not JSON"):
        app_scrape({"ISTIO_PROMETHEUS_ANNOTATIONS": "{"})
