"""The isolated and full-mesh scenarios: a reconnect storm, VirtualService changes, endpoint changes,
meshd's CPU and memory, real Envoys (isolated), and the same load against the reference server.

Order: meshd + load client (recording) -> cold storm -> dump what every proxy holds -> VS changes
(the first one recorded) -> endpoint changes (the first one recorded) -> Envoys -> stop meshd ->
reference server with the recordings -> a fresh load client: cold storm, then the recorded VS and
endpoint changes toggled back and forth as pushes.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from typing import Any

from benchmarks.config import Options
from benchmarks.envoy_check import check_envoys
from benchmarks.meshdir import MeshDir, MeshSpec
from benchmarks.phases import change_series, cold_storm, summarise
from benchmarks.procs import JsonLinesProcess, MeshdProcess, cpu_seconds, load_client, reference_server


def _vs_expect(mesh: MeshDir, i: int) -> dict[str, Any]:
    # proxies whose route configuration has a virtual host for this service need the change
    return {"type": "rds", "refs": f"\n{mesh.host(i)}:{mesh.spec.port}\n"}


def _ep_expect(mesh: MeshDir, i: int) -> dict[str, Any]:
    return {"type": "eds", "names": mesh.moving_eds_names(i)}


def _recorded(reply: dict[str, Any]) -> None:
    if reply["missing_bodies"]:
        raise RuntimeError(f"recording for the reference server is missing {reply['missing_bodies']} resource bodies")


def _stamp(action: Callable[[], Any]) -> float:
    action()
    return time.time()


async def run_mesh_scenario(name: str, opts: Options, *, sidecar: bool, envoys: int) -> dict[str, Any]:
    services, namespaces, proxies = opts.isolated if name == "isolated" else opts.full_mesh
    work = opts.work / name
    spec = MeshSpec(
        services=services,
        namespaces=namespaces,
        sidecar=sidecar,
        envoy_services=tuple(range(min(envoys, services))),
    )
    mesh = MeshDir(spec, work / "config")
    mesh.write_all()
    reference = name in opts.reference
    out: dict[str, Any] = {
        "scenario": name, "services": services, "namespaces": namespaces, "proxies": proxies,
        "sidecar": sidecar, "xds": "delta" if opts.delta else "sotw", "meshd_workers": opts.meshd_workers,
        "client_per_channel": opts.client_per_channel,
    }  # fmt: skip
    vs_services = mesh.vs_services()
    ep_services = [(k * 37) % services for k in range(opts.changes)]
    async with contextlib.AsyncExitStack() as stack:
        meshd = MeshdProcess(
            config_dir=mesh.dir,
            log_path=work / "meshd.log",
            poll_interval=opts.poll_interval,
            workers=opts.meshd_workers,
        )
        stack.push_async_callback(meshd.stop)
        out["startup_s"] = round(await meshd.start(timeout=opts.cold_timeout_s), 2)
        client = load_client(
            work=work,
            name="client",
            node_ids=mesh.proxies(proxies),
            delta=opts.delta,
            record=reference,
            per_channel=opts.client_per_channel,
        )
        stack.push_async_callback(client.stop)
        await client.start()
        cpu0, client_cpu0, by_process0 = meshd.cpu(), cpu_seconds(client.pid), meshd.cpu_by_process()
        out["cold"] = await cold_storm(client, meshd.target, timeout=opts.cold_timeout_s)
        out["cold"]["meshd_cpu_s"] = round(meshd.cpu() - cpu0, 2)
        # the main process first, then each worker (`--workers N`): how the storm's work was split
        out["cold"]["meshd_cpu_by_process_s"] = [
            round(cpu - by_process0.get(pid, 0.0), 2) for pid, cpu in meshd.cpu_by_process().items()
        ]
        out["cold"]["client_cpu_s"] = round(cpu_seconds(client.pid) - client_cpu0, 2)
        out["cold"]["bytes"] = (await client.request("totals"))["bytes"]
        out["after_cold"] = meshd.memory()
        print(f"  {name}: cold storm {out['cold']['cold_s']} s ({out['cold']['converged']}/{proxies})", flush=True)
        if reference:
            _recorded(await client.request("dump", path=str(work / "base.pkl"), timeout=300))

        async def record(kind: str) -> Callable[[int], Any]:
            async def dump(mark: int) -> None:
                _recorded(await client.request("dump", path=str(work / f"{kind}.pkl"), mark=mark, timeout=300))

            return dump

        cpu1 = meshd.cpu()
        vs_runs = await change_series(
            client, count=opts.changes, budget_s=opts.change_budget_s, timeout=opts.change_timeout_s,
            make=lambda k: (
                _vs_expect(mesh, vs_services[k % len(vs_services)]),
                lambda: _stamp(lambda: mesh.shift_weights(vs_services[k % len(vs_services)])),
            ),
            on_first=await record("vs") if reference else None,
        )  # fmt: skip
        cpu2 = meshd.cpu()
        ep_runs = await change_series(
            client, count=opts.changes, budget_s=opts.change_budget_s, timeout=opts.change_timeout_s,
            make=lambda k: (
                _ep_expect(mesh, ep_services[k]),
                lambda: _stamp(lambda: mesh.move_endpoint(ep_services[k])),
            ),
            on_first=await record("ep") if reference else None,
        )  # fmt: skip
        cpu3 = meshd.cpu()
        out["vs"] = summarise("vs", vs_runs)
        out["vs"]["meshd_cpu_ms_per_change"] = round((cpu2 - cpu1) * 1000 / max(1, len(vs_runs)))
        out["ep"] = summarise("ep", ep_runs)
        out["ep"]["meshd_cpu_ms_per_change"] = round((cpu3 - cpu2) * 1000 / max(1, len(ep_runs)))
        print(f"  {name}: VS p99 {out['vs']['vs_p99_ms']} ms, endpoint p99 {out['ep']['ep_p99_ms']} ms", flush=True)
        if envoys:
            out["envoy"] = await check_envoys(meshd=meshd, mesh=mesh, work=work, delta=opts.delta)
        totals = await client.request("totals")
        out["bytes_total"] = totals["bytes"]
        out["bytes_by_type"] = totals["bytes_by_type"]
        out["meshd_cpu_s"] = round(meshd.cpu(), 2)
        out["meshd_memory"] = meshd.memory()
        await client.stop()
        await meshd.stop()
    if reference:
        out["reference"] = await run_reference(
            work=work, opts=opts, proxies=mesh.proxies(proxies),
            vs_expect=_vs_expect(mesh, vs_services[0]), ep_expect=_ep_expect(mesh, ep_services[0]),
            changes=min(len(vs_runs), len(ep_runs)),
        )  # fmt: skip
        ref = out["reference"]
        mine = out["cold"]["cold_s"]
        out["overhead_cold"] = round(mine / ref["cold"]["cold_s"], 2) if mine and ref["cold"]["cold_s"] else None
        for kind in ("vs", "ep"):
            p50, ref_p50 = out[kind][f"{kind}_p50_ms"], ref[kind][f"{kind}_p50_ms"]
            out[f"overhead_{kind}"] = round(p50 / ref_p50, 2) if p50 and ref_p50 else None
    return out


async def run_reference(
    *,
    work: Any,
    opts: Options,
    proxies: list[str],
    vs_expect: dict[str, Any],
    ep_expect: dict[str, Any],
    changes: int,
) -> dict[str, Any]:
    """The same load client against the reference server serving meshd's recorded responses."""
    out: dict[str, Any] = {}
    server = reference_server(work=work, base=work / "base.pkl", changes=[work / "vs.pkl", work / "ep.pkl"])
    client = load_client(work=work, name="ref-client", node_ids=proxies, delta=opts.delta, record=False)
    procs: list[JsonLinesProcess] = [server, client]
    try:
        hello = await server.start(timeout=300)
        await client.start()
        cpu0 = cpu_seconds(server.pid)
        out["cold"] = await cold_storm(client, hello["target"], timeout=opts.cold_timeout_s)
        out["cold"]["server_cpu_s"] = round(cpu_seconds(server.pid) - cpu0, 2)
        print(f"  reference: cold storm {out['cold']['cold_s']} s", flush=True)
        for k, (kind, expect) in enumerate((("vs", vs_expect), ("ep", ep_expect))):

            async def push(k: int = k) -> float:
                t = time.time()  # the event: the command is sent, as a file write is for meshd
                await server.request("push", change=k)
                return t

            runs = await change_series(
                client, count=max(1, changes), budget_s=opts.change_budget_s, timeout=opts.change_timeout_s,
                make=lambda _, expect=expect, push=push: (expect, push),  # type: ignore[misc]
            )  # fmt: skip
            out[kind] = summarise(kind, runs)
    finally:
        for proc in procs:
            await proc.stop()
    return out
