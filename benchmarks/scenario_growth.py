"""Growth: the same endpoint change timed at several mesh sizes, with the same few proxies: a
Sidecar per namespace of ten services, the proxies are one pod of each service of the first few
namespaces, so at every size each proxy's own configuration, and the set of proxies one change
reaches, stay the same. An incremental pipeline keeps the time per change flat as the mesh grows."""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

from benchmarks.config import Options
from benchmarks.meshdir import MeshDir, MeshSpec
from benchmarks.phases import change_series, cold_storm, summarise
from benchmarks.procs import MeshdProcess, load_client


async def _one_size(opts: Options, services: int) -> dict[str, Any]:
    namespaces = max(1, services // 10)
    work = opts.work / f"growth-{services}"
    mesh = MeshDir(MeshSpec(services=services, namespaces=namespaces, sidecar=True), work / "config")
    proxied = mesh.services_in(-(-opts.growth_proxies // 10))[: opts.growth_proxies]
    proxies = len(proxied)
    t0 = time.time()
    mesh.write_all()
    out: dict[str, Any] = {"services": services, "namespaces": namespaces, "proxies": proxies}
    out["write_s"] = round(time.time() - t0, 2)
    async with contextlib.AsyncExitStack() as stack:
        meshd = MeshdProcess(config_dir=mesh.dir, log_path=work / "meshd.log", poll_interval=opts.poll_interval)
        stack.push_async_callback(meshd.stop)
        out["startup_s"] = round(await meshd.start(timeout=max(opts.cold_timeout_s, 300)), 2)
        node_ids = [mesh.pod_node_id(i, 0) for i in proxied]
        client = load_client(work=work, name="client", node_ids=node_ids, delta=opts.delta, record=False)
        stack.push_async_callback(client.stop)
        await client.start()
        cold = await cold_storm(client, meshd.target, timeout=opts.cold_timeout_s)
        out["cold_s"] = cold["cold_s"]
        targets = [proxied[(k * 7) % proxies] for k in range(opts.growth_changes)]
        await asyncio.sleep(5.0)  # let the cold storm's work finish before sampling idle
        idle0 = meshd.cpu()
        await asyncio.sleep(1.0)  # no change: what watching the files costs
        cpu0 = meshd.cpu()
        out["idle_cpu_pct"] = round((cpu0 - idle0) * 100, 1)
        runs = await change_series(
            client, count=opts.growth_changes, budget_s=opts.change_budget_s, timeout=opts.change_timeout_s,
            make=lambda k: (
                {"type": "eds", "names": mesh.moving_eds_names(targets[k])},
                lambda: (mesh.move_endpoint(targets[k]), time.time())[1],
            ),
        )  # fmt: skip
        cpu1 = meshd.cpu()
        out.update(summarise("ep", runs))
        out["meshd_cpu_ms_per_change"] = round((cpu1 - cpu0) * 1000 / max(1, len(runs)))
        out["meshd_memory"] = meshd.memory()
    return out


async def run_growth(opts: Options) -> dict[str, Any]:
    sizes = []
    for services in opts.growth_sizes:
        result = await _one_size(opts, services)
        sizes.append(result)
        print(f"  growth: {services} services, endpoint change p50 {result['ep_p50_ms']} ms", flush=True)
    small, large = sizes[0]["ep_p50_ms"], sizes[-1]["ep_p50_ms"]
    return {
        "scenario": "growth",
        "xds": "delta" if opts.delta else "sotw",
        "sizes": sizes,
        "ratio": round(large / small, 2) if small and large else None,
        "ratio_of": f"{sizes[-1]['services']}/{sizes[0]['services']}",
    }
