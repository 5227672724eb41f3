"""Slow clients (issue 20, defect 4): healthy proxies' change latency, quiet and then while never-reading
ADS streams (benchmarks/slowclient.py) keep asking for the whole mesh. Full mesh (no Sidecar), so every
attacker's CDS response is larger than its 64 KiB stream window and its write blocks on flow control.
Target: the healthy proxies' p99 under attack within 2x of the quiet p99."""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

from benchmarks.config import Options
from benchmarks.meshdir import MeshDir, MeshSpec
from benchmarks.phases import change_series, cold_storm, summarise
from benchmarks.procs import JsonLinesProcess, MeshdProcess, load_client


def _attacker(opts: Options, target: str) -> JsonLinesProcess:
    argv = ["-m", "benchmarks.slowclient", "--target", target, "--streams", str(opts.slow_streams)]
    argv += ["--seconds", str(opts.change_budget_s * 2 + 120)]
    return JsonLinesProcess(name="slowclient", argv=argv, log_path=opts.work / "slowclients" / "slowclient.log")


async def run_slowclients(opts: Options) -> dict[str, Any]:
    services, namespaces, proxies = opts.slow_mesh
    work = opts.work / "slowclients"
    mesh = MeshDir(MeshSpec(services=services, namespaces=namespaces, sidecar=False), work / "config")
    mesh.write_all()
    out: dict[str, Any] = {"services": services, "proxies": proxies, "attackers": opts.slow_streams}
    out["xds"] = "delta" if opts.delta else "sotw"
    async with contextlib.AsyncExitStack() as stack:
        meshd = MeshdProcess(config_dir=mesh.dir, log_path=work / "meshd.log", poll_interval=opts.poll_interval)
        stack.push_async_callback(meshd.stop)
        await meshd.start(timeout=opts.cold_timeout_s)
        client = load_client(work=work, name="client", node_ids=mesh.proxies(proxies), delta=opts.delta, record=False)
        stack.push_async_callback(client.stop)
        await client.start()
        cold = await cold_storm(client, meshd.target, timeout=opts.cold_timeout_s)
        out["cold_s"] = cold["cold_s"]
        targets = list(range(services))

        async def series(offset: int) -> list[dict[str, Any]]:
            return await change_series(
                client, count=opts.changes, budget_s=opts.change_budget_s, timeout=opts.change_timeout_s,
                make=lambda k: (
                    {"type": "eds", "names": mesh.moving_eds_names(targets[(offset + k * 7) % services])},
                    lambda: (mesh.move_endpoint(targets[(offset + k * 7) % services]), time.time())[1],
                ),
            )  # fmt: skip

        quiet = summarise("quiet", await series(0))
        out.update({k: v for k, v in quiet.items() if not k.endswith("_each")})
        attacker = _attacker(opts, meshd.target)
        stack.push_async_callback(attacker.stop)
        await attacker.start()
        await asyncio.sleep(3.0)  # every attacker stream has asked and is blocked on its first response
        t0 = time.time()
        attacked = summarise("attack", await series(1000))
        out["attack_elapsed_s"] = round(time.time() - t0, 1)
        out.update({k: v for k, v in attacked.items() if not k.endswith("_each")})
        out["attacker"] = await attacker.request("stats")
        out["meshd_memory"] = meshd.memory()
    q, a = out.get("quiet_p99_ms"), out.get("attack_p99_ms")
    out["ratio"] = round(a / q, 2) if q and a and not out.get("attack_incomplete") else None
    return out


def rows(result: dict[str, Any]) -> list[list[str]]:
    status = "met" if result.get("ratio") is not None and result["ratio"] <= 2 else "MISSED"
    return [
        ["healthy proxies", str(result["proxies"]), "", ""],
        ["never-reading attacker streams", str(result["attackers"]), "", ""],
        ["change p50 / p99 quiet (ms)", f"{result['quiet_p50_ms']} / {result['quiet_p99_ms']}", "", ""],
        ["change p50 / p99 under attack (ms)", f"{result['attack_p50_ms']} / {result['attack_p99_ms']}", "", ""],
        ["changes timed out under attack", f"{result['attack_incomplete']} of {result['attack_changes']}", "0", ""],
        ["p99 attack / quiet", str(result["ratio"]), "<= 2x", status],
        ["attacker streams opened / ended", f"{result['attacker']['opened']} / {result['attacker']['ended']}", "", ""],
    ]
