"""Churn: every second the endpoints of a tenth of the services change (their files are rewritten:
each one's moving pod gets a new address), for a minute. Measured: meshd's RSS each second (growth
after warm-up), whether each round reached every proxy that needed it before the next round, how
many rounds any proxy was behind at worst, and after the run settles, whether every proxy holds
the final endpoints."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import time
from dataclasses import dataclass
from typing import Any

from benchmarks.config import Options
from benchmarks.meshdir import MeshDir, MeshSpec
from benchmarks.phases import cold_storm, ms, percentile
from benchmarks.procs import JsonLinesProcess, MeshdProcess, cpu_seconds, load_client


@dataclass
class _Round:
    index: int
    mark: int
    t_event: float
    expect: dict[str, Any]
    expected: int = 0
    conv_s: float | None = None
    on_time: bool = False


async def _settle(client: JsonLinesProcess, rounds: list[_Round], behind: collections.Counter[int]) -> list[_Round]:
    """Check outstanding rounds; returns those still not received by every proxy that needs them,
    and counts in `behind` how many such rounds each proxy is missing."""
    still = []
    for rnd in rounds:
        stats = await client.request("stats", mark=rnd.mark, expect=rnd.expect, detail=True)
        rnd.expected = stats["expected"]
        if stats["done"] == stats["expected"]:
            rnd.conv_s = (stats["last_done"] - rnd.t_event) if stats["last_done"] else 0.0
        else:
            for p in stats["not_done"]:
                behind[p] += 1
            still.append(rnd)
    return still


async def run_churn(opts: Options) -> dict[str, Any]:
    services, namespaces, proxies = opts.churn
    work = opts.work / "churn"
    mesh = MeshDir(MeshSpec(services=services, namespaces=namespaces, sidecar=True), work / "config")
    mesh.write_all()
    per_round = max(1, round(services * opts.churn_fraction))
    out: dict[str, Any] = {
        "scenario": "churn", "services": services, "namespaces": namespaces, "proxies": proxies,
        "seconds": opts.churn_seconds, "services_per_round": per_round, "xds": "delta" if opts.delta else "sotw",
    }  # fmt: skip
    async with contextlib.AsyncExitStack() as stack:
        meshd = MeshdProcess(config_dir=mesh.dir, log_path=work / "meshd.log", poll_interval=opts.poll_interval)
        stack.push_async_callback(meshd.stop)
        await meshd.start(timeout=opts.cold_timeout_s)
        client = load_client(work=work, name="client", node_ids=mesh.proxies(proxies), delta=opts.delta, record=False)
        stack.push_async_callback(client.stop)
        await client.start()
        out["cold"] = await cold_storm(client, meshd.target, timeout=opts.cold_timeout_s)
        rounds: list[_Round] = []
        outstanding: list[_Round] = []
        rss: list[float] = []
        max_behind = 0
        cpu0, client_cpu0 = meshd.cpu(), cpu_seconds(client.pid)
        start = time.time()
        for r in range(opts.churn_seconds):
            await asyncio.sleep(max(0.0, start + r - time.time()))
            behind: collections.Counter[int] = collections.Counter()
            outstanding = await _settle(client, outstanding, behind)
            max_behind = max(max_behind, max(behind.values(), default=0))
            rss.append(meshd.memory()["rss_mb"])
            mark = (await client.request("mark"))["mark"]
            changed = [(r * per_round + j) % services for j in range(per_round)]
            for i in changed:
                mesh.move_endpoint(i)
            t_event = time.time()
            rnd = _Round(
                r, mark, t_event, {"type": "eds", "names": [n for i in changed for n in mesh.moving_eds_names(i)]}
            )
            rounds.append(rnd)
            outstanding.append(rnd)
        # let the last rounds arrive, then check every proxy holds the final endpoints
        deadline = time.time() + opts.change_timeout_s
        while outstanding and time.time() < deadline:
            await asyncio.sleep(0.2)
            outstanding = await _settle(client, outstanding, collections.Counter())
        rss.append(meshd.memory()["rss_mb"])
        out["meshd_cpu_s"] = round(meshd.cpu() - cpu0, 2)
        out["client_cpu_s"] = round(cpu_seconds(client.pid) - client_cpu0, 2)
        items = [
            [n, f" {mesh.moving_ip(i, mesh.generation[i])} "] for i in range(services) for n in mesh.moving_eds_names(i)
        ]
        final = await client.request("check", items=items)
        out["final_holders"], out["final_good"] = final["holders"], final["good"]
        out["meshd_memory"] = meshd.memory()
    warm = max(2, len(rss) // 10)
    base = rss[warm] if len(rss) > warm else rss[0]
    conv = [rnd.conv_s for rnd in rounds if rnd.conv_s is not None]
    for k, rnd in enumerate(rounds):
        # on time: every proxy that needed it had it before the next round was written
        next_event = rounds[k + 1].t_event if k + 1 < len(rounds) else rnd.t_event + 1.0
        rnd.on_time = rnd.conv_s is not None and rnd.t_event + rnd.conv_s <= next_event
    out.update(
        rounds=len(rounds),
        rounds_late=sum(1 for rnd in rounds if not rnd.on_time),
        rounds_never=len(outstanding),
        max_rounds_behind=max_behind,
        round_p50_ms=ms(percentile(conv, 50)),
        round_p99_ms=ms(percentile(conv, 99)),
        needed_proxies_per_round=max((rnd.expected for rnd in rounds), default=0),
        rss_first_mb=base,
        rss_last_mb=rss[-1],
        rss_max_mb=max(rss),
        rss_growth_pct=round((rss[-1] - base) / base * 100, 1) if base else None,
    )
    return out
