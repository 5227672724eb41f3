"""A few real Envoys among the simulated proxies: is the configuration really accepted?

Each Envoy is a workload of the mesh (a pod with its own loopback address, where it binds its
listeners and admin). Checked: Envoy becomes LIVE, meshd's /debug/syncz shows every type it sent
acked with no NACK, and Envoy holds as many clusters as meshd serves it."""

from __future__ import annotations

import asyncio
import contextlib
import json
import pathlib
import time
from typing import Any

from benchmarks.meshdir import MeshDir
from benchmarks.procs import MeshdProcess
from meshd.agent.bootstrap import XDS_CLUSTER, build_bootstrap
from meshd.agent.envoy import EnvoyError, EnvoyProcess


def _synced(entry: dict[str, Any]) -> bool:
    types = entry.get("types", {})
    return bool(types) and all(
        t.get("sent") is not None and t.get("sent") == t.get("acked") and t.get("nack_error") is None
        for t in types.values()
    )


async def check_envoys(
    *, meshd: MeshdProcess, mesh: MeshDir, work: pathlib.Path, delta: bool, timeout: float = 60.0
) -> dict[str, Any]:
    envoys: list[EnvoyProcess] = []
    nodes = mesh.envoys()
    out: dict[str, Any] = {"envoys": len(nodes), "live": 0, "acked": 0, "nacks": [], "clusters": [], "served": []}
    if not nodes:
        return out
    t0 = time.time()
    try:
        for j, (node, ip) in enumerate(nodes):
            pod_ns = node.split("~")[2]
            envoy = EnvoyProcess(
                bootstrap=build_bootstrap(
                    node_id=node, cluster=pod_ns, xds_host="127.0.0.1", xds_port=meshd.xds_port,
                    admin_host=ip, admin_port=15000, delta=delta,
                ),
                work_dir=work, admin_host=ip, admin_port=15000, name=f"envoy-{j}", log_level="warning",
            )  # fmt: skip
            envoys.append(envoy)
            await envoy.start()
        results = await asyncio.gather(*(e.wait_ready(timeout_s=timeout) for e in envoys), return_exceptions=True)
        out["live"] = sum(1 for r in results if r is None)
        out["errors"] = [str(r)[:300] for r in results if r is not None]
        out["live_s"] = round(time.time() - t0, 2)
        # ACK state as meshd sees it, polled until every Envoy has acked all it was sent
        deadline = time.time() + timeout
        syncz: list[dict[str, Any]] = []
        while time.time() < deadline:
            syncz = [s for s in await meshd.get_json("/debug/syncz") if s["proxy"] in dict(nodes)]
            if len(syncz) == len(nodes) and all(_synced(s) for s in syncz):
                break
            await asyncio.sleep(0.2)
        out["acked"] = sum(1 for s in syncz if _synced(s))
        out["nacks"] = [
            f"{s['proxy']} {kind}: {t['nack_error']}"
            for s in syncz
            for kind, t in s.get("types", {}).items()
            if t.get("nack_error")
        ]
        for envoy, (node, _) in zip(envoys, nodes, strict=True):
            with contextlib.suppress(EnvoyError, OSError, ValueError, asyncio.TimeoutError):
                clusters = json.loads(await envoy.admin_get("/clusters?format=json"))
                names = [c["name"] for c in clusters.get("cluster_statuses", [])]
                out["clusters"].append(sum(1 for n in names if n != XDS_CLUSTER))
            pod_ns = node.split("~")[2]
            with contextlib.suppress(Exception):
                dump = await meshd.get_json(f"/debug/config_dump?proxyID={pod_ns}")
                out["served"].append(len(dump.get("cds", [])))
    finally:
        for envoy in envoys:
            await envoy.stop()
    return out
