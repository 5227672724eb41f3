"""The per-request cost of Istio's standard metrics on real Envoys (`make bench`, scenario `metrics`).

client -> client sidecar -> server sidecar -> backend, every hop a real Envoy (concurrency 1; the backend
answers with a direct response). The sidecars' HTTP connection managers are what meshd's translation emits
(`translate/metrics.py`): with metrics, the stats access logger of each side and the identity-exchange
filters; without, neither. `wrk` (Debian's package) sends HTTP/1.1 keep-alive load for a fixed time, the
two configurations alternating, and the best of the rounds of each is kept: requests/s and p99 latency.
Plaintext between the sidecars (the TLS cost is the same either way)."""

from __future__ import annotations

import asyncio
import os
import pathlib
import re
import shutil
import tempfile
from typing import Any

from envoy.config.listener.v3 import listener_components_pb2, listener_pb2
from envoy.config.route.v3 import route_components_pb2, route_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2
from google.protobuf import json_format

from meshd.agent.envoy import EnvoyProcess
from meshd.translate.clusters import socket_address
from meshd.translate.http_filters import router
from meshd.translate.metrics import (
    DESTINATION,
    IDENTITY_ENV,
    SOURCE,
    http_stats_loggers,
    inbound_exchange_filters,
    outbound_exchange_filters,
    service_metadata,
)
from meshd.translate.proto import pack
from tests.e2e.harness import free_port

HOST = "127.0.252.1"
IDENTITY = {IDENTITY_ENV: "bench-client|default|bench|v1|Kubernetes"}  # the agent's packed identity


def _listener(name: str, port: int, hcm: hcm_pb2.HttpConnectionManager) -> dict[str, Any]:
    hcm.stat_prefix = name
    listener = listener_pb2.Listener(
        name=name,
        address=socket_address(HOST, port),
        filter_chains=[
            listener_components_pb2.FilterChain(
                filters=[
                    listener_components_pb2.Filter(
                        name="envoy.filters.network.http_connection_manager", typed_config=pack(hcm)
                    )
                ]
            )
        ],
    )
    return json_format.MessageToDict(listener, preserving_proto_field_name=True)


def _routes(cluster: str, *, metadata: bool) -> route_pb2.RouteConfiguration:
    route = route_components_pb2.Route(
        match=route_components_pb2.RouteMatch(prefix="/"), route=route_components_pb2.RouteAction(cluster=cluster)
    )
    if metadata:
        route.metadata.CopyFrom(service_metadata(host="web.default.svc.cluster.local", name="web", namespace="default"))
    return route_pb2.RouteConfiguration(
        virtual_hosts=[route_components_pb2.VirtualHost(name="all", domains=["*"], routes=[route])]
    )


def _sidecar_hcm(*, side: str, cluster: str, metrics: bool) -> hcm_pb2.HttpConnectionManager:
    hcm = hcm_pb2.HttpConnectionManager(route_config=_routes(cluster, metadata=metrics and side == DESTINATION))
    if metrics:
        hcm.access_log.extend(http_stats_loggers(reporter=side, mtls=False if side == DESTINATION else None))
        hcm.http_filters.extend(outbound_exchange_filters() if side == SOURCE else inbound_exchange_filters())
    hcm.http_filters.append(router())
    return hcm


def _cluster(name: str, port: int, *, metrics: bool) -> dict[str, Any]:
    cluster: dict[str, Any] = {
        "name": name,
        "type": "STATIC",
        "connect_timeout": "1s",
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [
                {"lb_endpoints": [{"endpoint": {"address": {"socket_address": {"address": HOST, "port_value": port}}}}]}
            ],
        },
    }
    if metrics:
        meta = service_metadata(host="web.default.svc.cluster.local", name="web", namespace="default")
        cluster["metadata"] = json_format.MessageToDict(meta, preserving_proto_field_name=True)
    return cluster


def _bootstrap(admin: int, listeners: list[dict[str, Any]], clusters: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "admin": {"address": {"socket_address": {"address": HOST, "port_value": admin}}},
        "static_resources": {"listeners": listeners, "clusters": clusters},
    }


def _admin_port(config: dict[str, Any]) -> int:
    port: int = config["admin"]["address"]["socket_address"]["port_value"]
    return port


def _cpu_s(pid: int | None) -> float:
    """utime + stime of a process, seconds."""
    fields = pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _backend(port: int) -> dict[str, Any]:
    hcm = hcm_pb2.HttpConnectionManager(
        route_config=route_pb2.RouteConfiguration(
            virtual_hosts=[
                route_components_pb2.VirtualHost(
                    name="all",
                    domains=["*"],
                    routes=[
                        route_components_pb2.Route(
                            match=route_components_pb2.RouteMatch(prefix="/"),
                            direct_response=route_components_pb2.DirectResponseAction(status=200),
                        )
                    ],
                )
            ]
        ),
        http_filters=[router()],
    )
    return _listener("backend", port, hcm)


_RPS = re.compile(r"Requests/sec:\s+([0-9.]+)")
_COUNT = re.compile(r"([0-9]+) requests in")
_P99 = re.compile(r"^\s+99%\s+([0-9.]+)(us|ms|s)\s*$", re.M)
_UNIT_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0}


async def _wrk(url: str, *, seconds: int, connections: int) -> tuple[float, float, int]:
    process = await asyncio.create_subprocess_exec(
        "wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency", url,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    out, _ = await process.communicate()
    text = out.decode()
    rps, p99, count = _RPS.search(text), _P99.search(text), _COUNT.search(text)
    if rps is None or p99 is None or count is None:
        raise RuntimeError(f"wrk output not understood:\n{text[-800:]}")
    return float(rps.group(1)), float(p99.group(1)) * _UNIT_MS[p99.group(2)], int(count.group(1))


Measure = tuple[float, float, float]  # requests/s, p99 ms, sidecar CPU microseconds per request


async def _measure(work: pathlib.Path, *, metrics: bool, seconds: int, connections: int) -> Measure:
    backend, server, client = free_port(), free_port(), free_port()
    tag = "on" if metrics else "off"
    configs = {
        "backend": _bootstrap(free_port(), [_backend(backend)], []),
        "server": _bootstrap(
            free_port(),
            [_listener("inbound", server, _sidecar_hcm(side=DESTINATION, cluster="app", metrics=metrics))],
            [_cluster("app", backend, metrics=False)],
        ),
        "client": _bootstrap(
            free_port(),
            [_listener("outbound", client, _sidecar_hcm(side=SOURCE, cluster="web", metrics=metrics))],
            [_cluster("web", server, metrics=metrics)],
        ),
    }
    envoys = [
        EnvoyProcess(
            bootstrap=config, work_dir=work, admin_host=HOST, admin_port=_admin_port(config),
            name=f"{name}-{tag}", log_level="error", concurrency=1, env=IDENTITY,
        )
        for name, config in configs.items()
    ]  # fmt: skip
    try:
        for envoy in envoys:
            await envoy.start()
        for envoy in envoys:
            await envoy.wait_ready(timeout_s=30)
        await _wrk(f"http://{HOST}:{client}/", seconds=1, connections=connections)  # warm-up
        sidecars = [e.pid for e in envoys[1:]]
        before = sum(_cpu_s(pid) for pid in sidecars)
        rps, p99, count = await _wrk(f"http://{HOST}:{client}/", seconds=seconds, connections=connections)
        cpu_us = (sum(_cpu_s(pid) for pid in sidecars) - before) / count * 1e6
        counted = await envoys[2].admin_get("/stats?filter=^istio.requests_total")
        if metrics != ("istio.requests_total" in counted):
            raise RuntimeError(f"metrics {tag}, but the client sidecar's istio stats say: {counted[:300]!r}")
        return rps, p99, cpu_us
    finally:
        for envoy in envoys:
            await envoy.stop()


async def run(*, seconds: int, rounds: int, connections: int = 16) -> dict[str, Any]:
    """Rounds alternate without / with metrics; the best round of each counts (the machine is shared)."""
    if shutil.which("wrk") is None:
        return {"rows": [{"figure": "metrics overhead", "value": "skipped: no `wrk` (apt-get install wrk)"}]}
    results: dict[bool, list[Measure]] = {False: [], True: []}
    with tempfile.TemporaryDirectory(prefix="meshd-metrics-bench-") as tmp:
        for _ in range(rounds):
            for metrics in (False, True):
                results[metrics].append(
                    await _measure(pathlib.Path(tmp), metrics=metrics, seconds=seconds, connections=connections)
                )
    off_rps, on_rps = (max(m[0] for m in results[k]) for k in (False, True))
    off_p99, on_p99 = (min(m[1] for m in results[k]) for k in (False, True))
    off_cpu, on_cpu = (min(m[2] for m in results[k]) for k in (False, True))
    return {
        "rows": [
            {"figure": "requests/s without metrics (client+server sidecar)", "value": round(off_rps)},
            {"figure": "requests/s with Istio's metrics", "value": round(on_rps)},
            {"figure": "throughput cost", "value": f"{(1 - on_rps / off_rps) * 100:.1f}%"},
            {"figure": "p99 ms without metrics", "value": round(off_p99, 3)},
            {"figure": "p99 ms with metrics", "value": round(on_p99, 3)},
            {"figure": "sidecar CPU us/request without metrics", "value": round(off_cpu, 1)},
            {"figure": "sidecar CPU us/request with metrics", "value": round(on_cpu, 1)},
            {"figure": "CPU added per request (both sidecars)", "value": f"{on_cpu - off_cpu:.1f} us"},
        ],
        "connections": connections,
        "seconds": seconds,
        "rounds": rounds,
    }
