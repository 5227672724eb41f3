"""A workload's telemetry on the listeners built for it: every HTTP connection manager gets its side's
access loggers and tracer, every TCP proxy its access loggers (inbound listeners: the `server` side;
outbound and gateway listeners: `client`), and the stats loggers of both the Telemetry `metrics`
overrides (reporter `destination` inbound, `source` otherwise). Applied to the listener specs a layer
builds, the telemetry part of their keys: listeners without telemetry keep their keys (and bytes) unchanged."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from functools import partial
from typing import Any

from envoy.config.listener.v3 import listener_components_pb2, listener_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2
from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2

from meshd.translate import grpc_messages
from meshd.translate.metrics import (
    DEFAULT_METRICS,
    DESTINATION,
    SOURCE,
    MetricsConfig,
    apply_overrides,
    counts_grpc_messages,
)
from meshd.translate.proto import pack
from meshd.translate.spec import Spec
from meshd.translate.telemetry.access_log import access_log
from meshd.translate.telemetry.resolve import SideTelemetry, WorkloadTelemetry
from meshd.translate.telemetry.tracing import apply_tracing

HCM = "envoy.filters.network.http_connection_manager"
TCP_PROXY = "envoy.filters.network.tcp_proxy"
INBOUND = 1  # envoy.config.core.v3.TrafficDirection


def with_telemetry(specs: Iterable[Spec], telemetry: WorkloadTelemetry) -> Iterator[Spec]:
    if telemetry.empty:
        yield from specs
        return
    for spec in specs:
        yield Spec(spec.name, (spec.key, telemetry), partial(_decorated, spec.build, telemetry), spec.type_url)


def _decorated(build: Any, telemetry: WorkloadTelemetry) -> Any:
    built = build()
    if isinstance(built, listener_pb2.Listener):
        inbound = built.traffic_direction == INBOUND
        side = telemetry.server if inbound else telemetry.client
        decorate(built, side, metrics=telemetry.metrics, reporter=DESTINATION if inbound else SOURCE)
    return built


def decorate(
    listener: listener_pb2.Listener, side: SideTelemetry, *, metrics: MetricsConfig = DEFAULT_METRICS, reporter: str
) -> None:
    """`side`'s access loggers and tracer on every connection manager and TCP proxy of `listener`, and
    the standard metrics' overrides on their stats loggers (`reporter`: the listener's side)."""
    if not side.logs and side.tracing is None and metrics.default:
        return
    chains = list(listener.filter_chains)
    if listener.HasField("default_filter_chain"):
        chains.append(listener.default_filter_chain)
    for chain in chains:
        for network_filter in chain.filters:
            _filter(network_filter, side, metrics=metrics, reporter=reporter)


def _filter(
    network_filter: listener_components_pb2.Filter, side: SideTelemetry, *, metrics: MetricsConfig, reporter: str
) -> None:
    if network_filter.name == HCM:
        hcm = hcm_pb2.HttpConnectionManager()
        network_filter.typed_config.Unpack(hcm)
        if not metrics.default:
            apply_overrides(hcm.access_log, reporter=reporter, config=metrics)
            if not counts_grpc_messages(metrics, reporter=reporter):  # nothing reads the counts: no Lua step
                kept = [f for f in hcm.http_filters if f.name not in grpc_messages.FILTER_NAMES]
                del hcm.http_filters[:]
                hcm.http_filters.extend(kept)
        hcm.access_log.extend(access_log(s) for s in side.logs)
        if side.tracing is not None:
            apply_tracing(hcm, side.tracing)
        network_filter.typed_config.CopyFrom(pack(hcm))
    elif network_filter.name == TCP_PROXY and (side.logs or not metrics.default):
        proxy = tcp_proxy_pb2.TcpProxy()
        network_filter.typed_config.Unpack(proxy)
        if not metrics.default:
            apply_overrides(proxy.access_log, reporter=reporter, config=metrics)
        proxy.access_log.extend(access_log(s, tcp=True) for s in side.logs)
        network_filter.typed_config.CopyFrom(pack(proxy))
