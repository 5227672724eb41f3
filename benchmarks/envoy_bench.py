"""Push -> ACK latency against real Envoy: meshd serves a synthetic mesh from a YAML directory;
a VirtualService file is rewritten repeatedly and we time (a) file write -> Envoy holds the new
route (end to end, includes the file poll interval and the debounce), and (b) meshd's own
`pilot_proxy_convergence_time` (change detected -> proxy ACKed)."""

from __future__ import annotations

import json
import pathlib
import re
import statistics
import tempfile
import time
from typing import Any

import yaml

from benchmarks.synthetic import mesh, virtual_service
from meshd.agent.bootstrap import build_bootstrap
from meshd.agent.envoy import EnvoyProcess
from tests.e2e.harness import Meshd, eventually


def _write_mesh(directory: pathlib.Path, *, services: int) -> None:
    docs = [r.model_dump(by_alias=True, exclude_defaults=True) for r in mesh(services=services, namespaces=5)]
    (directory / "mesh.yaml").write_text(yaml.safe_dump_all(docs))


def _write_vs(directory: pathlib.Path, weight: int) -> None:
    vs = virtual_service(name="svc-0", namespace="ns-0", v1=weight, v2=100 - weight)
    path = directory / "svc-0-vs.yaml"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(yaml.safe_dump(vs.model_dump(by_alias=True, exclude_defaults=True)))
    tmp.replace(path)


def _histogram(metrics: str, name: str) -> tuple[float, float]:
    total = re.search(rf"^{name}_sum ([0-9.e+-]+)$", metrics, re.M)
    count = re.search(rf"^{name}_count ([0-9.e+-]+)$", metrics, re.M)
    return (float(total.group(1)) if total else 0.0, float(count.group(1)) if count else 0.0)


async def run(*, services: int, changes: int, delta: bool) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="meshd-bench-") as tmp:
        work = pathlib.Path(tmp)
        config = work / "config"
        config.mkdir()
        _write_mesh(config, services=services)
        _write_vs(config, 90)
        server = Meshd(config_dir=config, log_path=work / "meshd.log")
        ip = "127.0.250.1" if delta else "127.0.251.1"
        t0 = time.perf_counter()
        await server.start()
        envoy = EnvoyProcess(
            bootstrap=build_bootstrap(
                node_id=f"sidecar~{ip}~bench.ns-0~ns-0.svc.cluster.local", cluster="bench.ns-0",
                xds_host="127.0.0.1", xds_port=server.xds_port, admin_host=ip, admin_port=15000, delta=delta,
            ),
            work_dir=work, admin_host=ip, admin_port=15000, name="bench", log_level="warning",
        )  # fmt: skip
        try:
            await envoy.start()
            await envoy.wait_ready(timeout_s=60)
            cold = time.perf_counter() - t0
            before = _histogram(await server.metrics(), "pilot_proxy_convergence_time")
            latencies = []
            for i in range(changes):
                weight = 80 - (i % 50)
                start = time.perf_counter()
                _write_vs(config, weight)

                async def applied(w: int = weight) -> bool:
                    dump = json.dumps(await envoy.config_dump(resource="dynamic_route_configs"))
                    return f'"weight": {w}' in dump

                await eventually(applied, timeout=30, interval=0.005, what=f"weight {weight} in Envoy")
                latencies.append(time.perf_counter() - start)
            after = _histogram(await server.metrics(), "pilot_proxy_convergence_time")
        finally:
            await envoy.stop()
            await server.close()
    pushes = after[1] - before[1]
    return {
        "mode": "delta" if delta else "sotw",
        "services": services,
        "cold_start_to_envoy_live_s": round(cold, 2),
        "file_to_envoy_p50_ms": round(statistics.median(latencies) * 1000, 1),
        "file_to_envoy_max_ms": round(max(latencies) * 1000, 1),
        "change_to_ack_mean_ms": round((after[0] - before[0]) / pushes * 1000, 1) if pushes else None,
    }
