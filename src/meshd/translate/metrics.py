"""Istio's standard metrics from upstream Envoy: names, labels and the peer-metadata exchange behind them.

Upstream Envoy has no Istio stats filter. Each side learns what it reports from what Envoy provides:
- **its own identity** (workload, namespace, app, version, cluster: one `|`-packed value,
  `translate/metric_labels.py`) from the environment variable `MESHD_PEER_ID` the node agent sets for Envoy
  (`%ENVIRONMENT(...)%`), so the configuration is the same for every proxy and stays shared;
- **the peer's identity (HTTP)** from a header exchange meshd configures: the client sidecar adds an
  `x-meshd-peer-id` request header with its own identity (header_mutation, overwriting what the app sent); the
  server sidecar moves it into dynamic metadata (`header_to_metadata`, `meshd.peer` key `id`, removed before
  the app sees it; `unknown` when absent: a client without sidecar) and answers with its own identity in the
  same response header, which the client sidecar moves into metadata and removes in turn (`unknown`: a server
  without sidecar);
- **principals** from the mTLS certificates (`%DOWNSTREAM_PEER_URI_SAN%`, `%UPSTREAM_PEER_URI_SAN%`...);
  `connection_security_policy` from the inbound filter chain (its mTLS or plaintext chain);
- **the destination service** from the metadata meshd puts on outbound clusters (`meshd.service`) and on
  inbound routes (one per service);
- **TCP**: no headers; the peer's principal from the certificate, the service from the cluster metadata,
  the peer's workload labels from the endpoint's metadata (client side) and from a PROXY protocol header the
  client sidecar sends (server side): `translate/peer_exchange.py`.
- **gRPC message counts** from Envoy's grpc_stats filter through a Lua step into dynamic metadata
  (`translate/grpc_messages.py`), on gRPC calls only.
The values are emitted by Envoy's stats access logger (`envoy.access_loggers.stats`) as tagged counters and
histograms `istio.<name>`, with compact tags (`translate/metric_labels.py`: 11 short tags where Istio has
21 labels); the node agent's 15090 and 15020 endpoints expose them as Istio's `istio_<name>` with Istio's
labels (Envoy's Prometheus output alone would name them `envoy_istio_<name>`, with the compact tags).

`MetricsConfig` is what a proxy's metrics are (Istio's defaults: `DEFAULT_METRICS`); the Telemetry API's
`metrics` (overrides: disabled metrics, tags removed or upserted) maps onto it.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from envoy.config.accesslog.v3 import accesslog_pb2
from envoy.config.common.mutation_rules.v3 import mutation_rules_pb2
from envoy.config.core.v3 import base_pb2
from envoy.data.accesslog.v3 import accesslog_pb2 as data_pb2
from envoy.extensions.access_loggers.stats.v3 import stats_pb2
from envoy.extensions.filters.http.header_mutation.v3 import header_mutation_pb2
from envoy.extensions.filters.http.header_to_metadata.v3 import header_to_metadata_pb2 as h2m_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2
from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2
from google.protobuf import struct_pb2, wrappers_pb2

from meshd.translate import grpc_messages
from meshd.translate.metric_labels import IDENTITY_FIELDS, compact, decompact, group_label
from meshd.translate.metric_labels import pack as pack_values
from meshd.translate.proto import pack

STATS_LOGGER = "envoy.access_loggers.stats"
STAT_PREFIX = "istio"  # Envoy names the stats istio.<name>; exposed as istio_<name>
PEER_HEADER = "x-meshd-peer-id"  # the packed identity (translate/metric_labels.py)
PEER_KEY = "id"  # its key in the `meshd.peer` and `meshd.service` metadata
PEER_METADATA = "meshd.peer"
SERVICE_METADATA = "meshd.service"
UNKNOWN = "unknown"
# The proxy's own identity, packed (`identity_id`): the environment variable the agent sets for Envoy
IDENTITY_ENV = "MESHD_PEER_ID"
# Istio's labels for it, after `source_` or `destination_` (in IDENTITY_FIELDS' order)
_IDENTITY_LABELS = ("workload", "workload_namespace", "app", "version", "cluster")

# Istio's metric names (Telemetry API enum -> exposed name without the `istio_` prefix)
REQUEST_COUNT = "REQUEST_COUNT"
REQUEST_DURATION = "REQUEST_DURATION"
REQUEST_SIZE = "REQUEST_SIZE"
RESPONSE_SIZE = "RESPONSE_SIZE"
TCP_OPENED_CONNECTIONS = "TCP_OPENED_CONNECTIONS"
TCP_CLOSED_CONNECTIONS = "TCP_CLOSED_CONNECTIONS"
TCP_SENT_BYTES = "TCP_SENT_BYTES"
TCP_RECEIVED_BYTES = "TCP_RECEIVED_BYTES"
GRPC_REQUEST_MESSAGES = "GRPC_REQUEST_MESSAGES"
GRPC_RESPONSE_MESSAGES = "GRPC_RESPONSE_MESSAGES"
METRIC_NAMES = {
    REQUEST_COUNT: "requests_total",
    REQUEST_DURATION: "request_duration_milliseconds",
    REQUEST_SIZE: "request_bytes",
    RESPONSE_SIZE: "response_bytes",
    TCP_OPENED_CONNECTIONS: "tcp_connections_opened_total",
    TCP_CLOSED_CONNECTIONS: "tcp_connections_closed_total",
    TCP_SENT_BYTES: "tcp_sent_bytes_total",
    TCP_RECEIVED_BYTES: "tcp_received_bytes_total",
    GRPC_REQUEST_MESSAGES: "request_messages_total",
    GRPC_RESPONSE_MESSAGES: "response_messages_total",
}
BYTES_BUCKETS = (1, 10, 100, 1000, 10_000, 100_000, 1_000_000, 10_000_000, 100_000_000, 1_000_000_000)

SOURCE, DESTINATION = "source", "destination"  # reporters: client side, server side
CLIENT, SERVER = "CLIENT", "SERVER"  # Telemetry API modes


@dataclass(frozen=True)
class MetricOverride:
    """One Telemetry `metrics.overrides` entry: `metric` (an Istio name, or ALL_METRICS) in `mode` (CLIENT,
    SERVER, CLIENT_AND_SERVER); `disabled`; tags removed; tags upserted with an Envoy format string (a CEL
    expression becomes `%CEL(expr)%`)."""

    metric: str = "ALL_METRICS"
    mode: str = "CLIENT_AND_SERVER"
    disabled: bool | None = None  # None: as the earlier overrides left it
    remove_tags: tuple[str, ...] = ()
    upsert_tags: tuple[tuple[str, str], ...] = ()

    def applies(self, metric: str, reporter: str) -> bool:
        mode = CLIENT if reporter == SOURCE else SERVER
        return self.metric in ("ALL_METRICS", metric) and self.mode in ("CLIENT_AND_SERVER", mode)


@dataclass(frozen=True)
class MetricsConfig:
    """A proxy's standard metrics (hashable, part of its listeners' keys). The default is Istio's: every
    metric with every standard label; overrides apply in order."""

    enabled: bool = True  # False: no metrics provider (Telemetry `providers` without prometheus)
    overrides: tuple[MetricOverride, ...] = ()

    def metric_tags(self, metric: str, reporter: str, tags: list[tuple[str, str]]) -> list[tuple[str, str]] | None:
        """The tags of `metric` for this reporter after the overrides; None when it is disabled."""
        if not self.enabled:
            return None
        out = dict(tags)
        disabled = False
        for override in self.overrides:
            if not override.applies(metric, reporter):
                continue
            if override.disabled is not None:
                disabled = override.disabled  # a later (more specific) override may enable it again
            for tag in override.remove_tags:
                out.pop(tag, None)
            out.update(override.upsert_tags)
        return None if disabled else list(out.items())

    @property
    def default(self) -> bool:
        return self == DEFAULT_METRICS


DEFAULT_METRICS = MetricsConfig()


def identity_values(labels: Mapping[str, str], *, workload: str, namespace: str, cluster: str) -> dict[str, str]:
    """A workload's identity as Istio's metrics label it (keys of IDENTITY_ENV): `app`/`version` labels, Istio's
    canonical labels as fallbacks, `unknown` without. The agent gives its Envoy these (environment); meshd puts
    them on endpoints (`translate/peer_exchange.py`): both sides must agree."""
    return {
        "workload": workload,
        "namespace": namespace,
        "app": labels.get("app") or labels.get("service.istio.io/canonical-name") or UNKNOWN,
        "version": labels.get("version") or labels.get("service.istio.io/canonical-revision") or UNKNOWN,
        "cluster": cluster,
    }


def identity_id(values: Mapping[str, str]) -> str:
    """An identity (`identity_values`) as one value: what the exchange carries and the agent sets."""
    return pack_values(values[field] for field in IDENTITY_FIELDS)


def _identity(side: str, packed: str) -> list[tuple[str, str]]:
    return [group_label(f"{side}_{label}", packed) for label in _IDENTITY_LABELS]


def _own(side: str) -> list[tuple[str, str]]:
    return _identity(side, f"%ENVIRONMENT({IDENTITY_ENV})%")


def _peer(side: str, *, http: bool) -> list[tuple[str, str]]:
    """The peer's identity: from the exchanged header (HTTP); on TCP (`translate/peer_exchange.py`) the
    client side reads the server's from its endpoint's metadata, the server side the client's from the
    connection's (its PROXY header); `unknown` (or Envoy's `-`, which the agent reads as `unknown`) where
    there is none."""
    if http or side == "source":  # source_* on TCP: the server's view of the client (its PROXY header)
        return _identity(side, f"%DYNAMIC_METADATA({PEER_METADATA}:{PEER_KEY})%")
    return _identity(side, f"%UPSTREAM_METADATA({PEER_METADATA}:{PEER_KEY})%")  # the client's upstream host


def _service(kind: str) -> list[tuple[str, str]]:
    """destination_service*: from the outbound cluster's metadata, or the inbound route's; `unknown`."""
    source = {
        "cluster": f"%CLUSTER_METADATA({SERVICE_METADATA}:{PEER_KEY})%",
        "route": f"%METADATA(ROUTE:{SERVICE_METADATA}:{PEER_KEY})%",
    }.get(kind, UNKNOWN)
    return [
        group_label(label, source)
        for label in ("destination_service", "destination_service_name", "destination_service_namespace")
    ]


_GRPC = (
    "%CEL('content-type' in request.headers&&"
    "request.headers['content-type'].startsWith('application/grpc')?'grpc':'http')%"
)


def standard_tags(*, reporter: str, http: bool, mtls: bool | None) -> list[tuple[str, str]]:
    """Istio's labels and how Envoy fills them (group members marked, `translate/metric_labels.py`; `_stat`
    compacts them). `mtls`: the inbound chain's transport (destination reporter); None on the client side
    (Istio reports `unknown` there)."""
    if reporter == SOURCE:
        tags = [
            ("reporter", SOURCE),
            *_own("source"),
            ("source_principal", "%UPSTREAM_LOCAL_URI_SAN%"),  # `-` without TLS: the agent's `unknown`
        ]
        tags += [*_peer("destination", http=http), ("destination_principal", "%UPSTREAM_PEER_URI_SAN%")]
        tags += _service("cluster")
        policy = UNKNOWN
    else:
        tags = [("reporter", DESTINATION), *_peer("source", http=http)]
        tags.append(("source_principal", "%DOWNSTREAM_PEER_URI_SAN%" if mtls else UNKNOWN))
        tags += [*_own("destination"), ("destination_principal", "%DOWNSTREAM_LOCAL_URI_SAN%" if mtls else UNKNOWN)]
        # the inbound route names the service; an inbound TCP chain knows none (an app port may back several)
        tags += _service("route" if http else "none")
        policy = "mutual_tls" if mtls else "none"
    if http:
        tags += [("request_protocol", _GRPC), ("response_code", "%RESPONSE_CODE%")]
        tags += [("grpc_response_status", "%GRPC_STATUS_NUMBER%")]
    else:
        tags.append(("request_protocol", "tcp"))  # Istio's TCP metrics have no response code
    tags += [("response_flags", "%RESPONSE_FLAGS%"), ("connection_security_policy", policy)]
    return tags


def _stat(metric: str, tags: Iterable[tuple[str, str]]) -> stats_pb2.Config.Stat:
    return stats_pb2.Config.Stat(
        name=METRIC_NAMES[metric], tags=[stats_pb2.Config.Tag(name=n, value_format=v) for n, v in compact(tags)]
    )


def _logger(config: stats_pb2.Config, log_types: Iterable[int] = ()) -> accesslog_pb2.AccessLog:
    log = accesslog_pb2.AccessLog(name=STATS_LOGGER, typed_config=pack(config))
    types = list(log_types)
    if types:
        log.filter.log_type_filter.types.extend(types)
    return log


def http_stats_loggers(
    *, reporter: str, mtls: bool | None = None, config: MetricsConfig = DEFAULT_METRICS
) -> list[accesslog_pb2.AccessLog]:
    """The access loggers of an HTTP connection manager: istio_requests_total, the duration and size
    histograms; the gRPC message counters in a second logger that logs gRPC calls only (none when every
    metric is disabled). Built once per distinct argument set (a pure memo: the messages are only ever
    copied into the connection managers)."""
    return list(_http_loggers(reporter, mtls, config))


@functools.lru_cache(maxsize=256)
def _http_loggers(reporter: str, mtls: bool | None, config: MetricsConfig) -> tuple[accesslog_pb2.AccessLog, ...]:
    base = standard_tags(reporter=reporter, http=True, mtls=mtls)
    out = stats_pb2.Config(stat_prefix=STAT_PREFIX)
    one = wrappers_pb2.UInt64Value(value=1)
    if (tags := config.metric_tags(REQUEST_COUNT, reporter, base)) is not None:
        out.counters.append(stats_pb2.Config.Counter(stat=_stat(REQUEST_COUNT, tags), value_fixed=one))
    unit = stats_pb2.Config.Histogram.Unit
    for metric, value, kind in (
        (REQUEST_DURATION, "%DURATION%", unit.Milliseconds),
        (REQUEST_SIZE, "%BYTES_RECEIVED%", unit.Bytes),
        (RESPONSE_SIZE, "%BYTES_SENT%", unit.Bytes),
    ):
        if (tags := config.metric_tags(metric, reporter, base)) is not None:
            out.histograms.append(stats_pb2.Config.Histogram(stat=_stat(metric, tags), unit=kind, value_format=value))
    messages = stats_pb2.Config(stat_prefix=STAT_PREFIX)  # gRPC calls only: their own logger, filtered
    for metric, value in (
        (GRPC_REQUEST_MESSAGES, grpc_messages.REQUEST_MESSAGES_VALUE),
        (GRPC_RESPONSE_MESSAGES, grpc_messages.RESPONSE_MESSAGES_VALUE),
    ):
        if (tags := config.metric_tags(metric, reporter, base)) is not None:
            messages.counters.append(stats_pb2.Config.Counter(stat=_stat(metric, tags), value_format=value))
    loggers = [_logger(out)] if out.counters or out.histograms else []
    if messages.counters:
        loggers.append(grpc_messages.only_grpc_calls(_logger(messages)))
    return tuple(loggers)


def tcp_stats_loggers(
    *, reporter: str, mtls: bool | None = None, config: MetricsConfig = DEFAULT_METRICS
) -> list[accesslog_pb2.AccessLog]:
    """The access loggers of a tcp_proxy: connections opened (when the upstream connects), and at the
    connection's end connections closed and the bytes each way (built once per argument set)."""
    return list(_tcp_loggers(reporter, mtls, config))


@functools.lru_cache(maxsize=256)
def _tcp_loggers(reporter: str, mtls: bool | None, config: MetricsConfig) -> tuple[accesslog_pb2.AccessLog, ...]:
    base = standard_tags(reporter=reporter, http=False, mtls=mtls)
    one = wrappers_pb2.UInt64Value(value=1)
    opened = stats_pb2.Config(stat_prefix=STAT_PREFIX)
    if (tags := config.metric_tags(TCP_OPENED_CONNECTIONS, reporter, base)) is not None:
        opened.counters.append(stats_pb2.Config.Counter(stat=_stat(TCP_OPENED_CONNECTIONS, tags), value_fixed=one))
    closed = stats_pb2.Config(stat_prefix=STAT_PREFIX)
    for metric, value in (
        (TCP_CLOSED_CONNECTIONS, None),
        (TCP_SENT_BYTES, "%BYTES_SENT%"),
        (TCP_RECEIVED_BYTES, "%BYTES_RECEIVED%"),
    ):
        if (tags := config.metric_tags(metric, reporter, base)) is not None:
            counter = stats_pb2.Config.Counter(stat=_stat(metric, tags))
            if value is None:
                counter.value_fixed.CopyFrom(one)
            else:
                counter.value_format = value
            closed.counters.append(counter)
    out = []
    if opened.counters:
        out.append(_logger(opened, [data_pb2.TcpUpstreamConnected]))
    if closed.counters:
        out.append(_logger(closed, [data_pb2.TcpConnectionEnd]))
    return tuple(out)


def tcp_metrics(
    proxy: tcp_proxy_pb2.TcpProxy, *, reporter: str, mtls: bool | None = None, config: MetricsConfig = DEFAULT_METRICS
) -> None:
    """Istio's TCP metrics on a tcp_proxy: its stats loggers, logging also when the upstream connects (on an
    mTLS chain not before the client's handshake has ended, so that its principal is known by then)."""
    loggers = tcp_stats_loggers(reporter=reporter, mtls=mtls, config=config)
    proxy.access_log.extend(loggers)
    if loggers:
        proxy.access_log_options.flush_access_log_on_connected = True
        if mtls:
            proxy.upstream_connect_mode = tcp_proxy_pb2.ON_DOWNSTREAM_TLS_HANDSHAKE
            proxy.max_early_data_bytes.value = 65536  # what the client sends before the upstream is there


_METRIC_OF_NAME = {name: metric for metric, name in METRIC_NAMES.items()}


def apply_overrides(access_logs: Any, *, reporter: str, config: MetricsConfig) -> None:
    """Re-tag (or leave out) the standard metrics of the stats access loggers in `access_logs` (a
    connection manager's or tcp_proxy's repeated `access_log`) as `config` says, for the reporter each stat
    names (else `reporter`); a logger left with no metric is removed."""
    keep: list[accesslog_pb2.AccessLog] = []
    for log in access_logs:
        if log.name != STATS_LOGGER:
            keep.append(log)
            continue
        stats = stats_pb2.Config()
        log.typed_config.Unpack(stats)
        counters = [c for c in stats.counters if _retag(c.stat, reporter=reporter, config=config)]
        histograms = [h for h in stats.histograms if _retag(h.stat, reporter=reporter, config=config)]
        if not counters and not histograms:
            continue
        del stats.counters[:], stats.histograms[:]
        stats.counters.extend(counters)
        stats.histograms.extend(histograms)
        out = accesslog_pb2.AccessLog()
        out.CopyFrom(log)
        out.typed_config.CopyFrom(pack(stats))
        keep.append(out)
    del access_logs[:]
    access_logs.extend(keep)


def _retag(stat: stats_pb2.Config.Stat, *, reporter: str, config: MetricsConfig) -> bool:
    """`stat`'s tags after the overrides; False when its metric is disabled."""
    metric = _METRIC_OF_NAME.get(stat.name)
    if metric is None:
        return True
    current = decompact((t.name, t.value_format) for t in stat.tags)
    reporter = dict(current).get("reporter", reporter)  # the stat's own side (a passthrough chain's differs)
    tags = config.metric_tags(metric, reporter, current)
    if tags is None:
        return False
    del stat.tags[:]
    stat.tags.extend(stats_pb2.Config.Tag(name=n, value_format=v) for n, v in compact(tags))
    return True


# --- the peer-metadata exchange ----------------------------------------------------------------------


def _own_headers() -> list[base_pb2.HeaderValueOption]:
    overwrite = base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD
    header = base_pb2.HeaderValue(key=PEER_HEADER, value=f"%ENVIRONMENT({IDENTITY_ENV})%")
    return [base_pb2.HeaderValueOption(header=header, append_action=overwrite)]


def _to_metadata(*, request: bool) -> hcm_pb2.HttpFilter:
    """The peer's identity header into dynamic metadata (`unknown` when absent), removed from the message."""
    rule = h2m_pb2.Config.Rule(header=PEER_HEADER, remove=True)
    rule.on_header_present.metadata_namespace = PEER_METADATA
    rule.on_header_present.key = PEER_KEY
    rule.on_header_missing.metadata_namespace = PEER_METADATA
    rule.on_header_missing.key = PEER_KEY
    rule.on_header_missing.value = UNKNOWN
    rules = [rule]
    config = h2m_pb2.Config(request_rules=rules) if request else h2m_pb2.Config(response_rules=rules)
    return hcm_pb2.HttpFilter(name="envoy.filters.http.header_to_metadata", typed_config=pack(config))


def _add_headers(*, request: bool) -> hcm_pb2.HttpFilter:
    mutations = [mutation_rules_pb2.HeaderMutation(append=h) for h in _own_headers()]
    config = header_mutation_pb2.HeaderMutation()
    if request:
        config.mutations.request_mutations.extend(mutations)
    else:
        config.mutations.response_mutations.extend(mutations)
    return hcm_pb2.HttpFilter(name="envoy.filters.http.header_mutation", typed_config=pack(config))


def outbound_exchange_filters(config: MetricsConfig = DEFAULT_METRICS) -> list[hcm_pb2.HttpFilter]:
    """Client side (first in the chain): send our identity; read and remove the server's from the response;
    then the gRPC message counts (`translate/grpc_messages.py`)."""
    return [*_exchange(outbound=True), *grpc_messages.message_count_filters()] if config.enabled else []


def inbound_exchange_filters(config: MetricsConfig = DEFAULT_METRICS) -> list[hcm_pb2.HttpFilter]:
    """Server side (first in the chain): read and remove the client's identity; answer with ours; then the
    gRPC message counts."""
    return [*_exchange(outbound=False), *grpc_messages.message_count_filters()] if config.enabled else []


def counts_grpc_messages(config: MetricsConfig, *, reporter: str) -> bool:
    """Whether `reporter` emits either gRPC message count (else its counting filters can go)."""
    return any(config.metric_tags(m, reporter, []) is not None for m in (GRPC_REQUEST_MESSAGES, GRPC_RESPONSE_MESSAGES))


@functools.lru_cache(maxsize=2)
def _exchange(*, outbound: bool) -> tuple[hcm_pb2.HttpFilter, ...]:
    if outbound:
        return _add_headers(request=True), _to_metadata(request=False)
    return _to_metadata(request=True), _add_headers(request=False)


def service_metadata(*, host: str, name: str, namespace: str) -> base_pb2.Metadata:
    """What a cluster or route says of its destination service (read by the destination_service labels)."""
    fields = struct_pb2.Struct()
    fields.update({PEER_KEY: pack_values((host, name, namespace))})
    out = base_pb2.Metadata()
    out.filter_metadata[SERVICE_METADATA].CopyFrom(fields)
    return out
