"""Side by side with the real istiod (`--peer istiod`): per mesh size ("cell"), one real API server
holding one mesh, then meshd and istiod in turn (rounds: meshd, istiod, meshd, istiod), each fed by
the same load client, measured the same way.

A cell: etcd + kube-apiserver (kubecluster.py) with Istio 1.14's CRDs -> the mesh written through the
API server (kubemesh.py) -> per round: the control plane started in Kubernetes mode (`meshd serve
--kubeconfig`; istiod per istiod.py) until /ready -> a load client (a fresh process) with the proxies'
node ids and metadata as injected sidecars send them -> cold storm -> quiet -> VirtualService edits ->
endpoint edits (EndpointSlice patches) -> the process's CPU seconds and peak RSS from /proc -> stop.

"Last proxy got the change" is the load client's own view, identical for both: the proxies that held,
at the mark, a route configuration with the service's `host:port` virtual host (VirtualService edit) or
the service's `outbound|9080||host` / `outbound|9080|v1|host` load assignments (endpoint edit); each is
done when it holds a different version of every such resource; the figure is the last one's receive
time minus the time the patch was sent. Both name these Istio's way; istiod sends more besides.
"""

from __future__ import annotations

import asyncio
import contextlib
import pathlib
import time
from dataclasses import dataclass, field
from typing import Any

from benchmarks.istiod import IstiodProcess, istiod_binary
from benchmarks.kubecluster import MESH_NAMESPACE, envtest_assets, patch, start_cluster, write_mesh
from benchmarks.kubemesh import KubeMesh, KubeMeshSpec
from benchmarks.peer_report import aggregate, ratios
from benchmarks.phases import change_series, cold_storm, summarise
from benchmarks.procs import JsonLinesProcess, MeshdProcess, cpu_seconds, load_client
from tests.kubeapi import KubeRest

SERVERS = ("meshd", "istiod")


@dataclass(frozen=True)
class Cell:
    services: int
    proxies: int
    sidecar: bool
    servers: tuple[str, ...] = SERVERS
    per_namespace: int = 10  # services per namespace
    mix: bool = False  # gateways, authorization and telemetry config too (kubemesh.py)

    @property
    def namespaces(self) -> int:
        return max(1, self.services // self.per_namespace)

    @property
    def label(self) -> str:
        sidecar = "Sidecar per ns" if self.sidecar else "no Sidecar"
        mix = ", gateway + authz + telemetry" if self.mix else ""
        return f"{self.services} svc / {self.namespaces} ns / {self.proxies} proxies, {sidecar}{mix}"


DEFAULT_CELLS = (Cell(200, 500, False), Cell(200, 500, True), Cell(200, 500, True, mix=True))
FULL_CELLS = tuple(Cell(s, p, sc) for s in (200, 1000) for sc in (False, True) for p in (500, 2000))
LARGE_CELL = Cell(5000, 5000, True, servers=("meshd",))


@dataclass
class PeerOptions:
    work: pathlib.Path
    cells: tuple[Cell, ...] = DEFAULT_CELLS
    rounds: int = 2  # per control plane, alternating
    changes: int = 8  # per kind and round
    delta: bool = False
    change_budget_s: float = 300.0  # per kind and round: fewer changes if spent
    cold_timeout_s: float = 300.0
    change_timeout_s: float = 60.0
    settle_quiet_s: float = 1.0  # after the cold storm, before the first edit: no response for this long
    settle_max_s: float = 30.0
    start_timeout_s: float = 300.0
    servers: tuple[str, ...] = field(default=SERVERS)  # restricts every cell's control planes
    meshd_args: tuple[str, ...] = ()  # more `meshd serve` flags (e.g. --no-status)
    meshd_workers: int = 1  # `meshd serve --workers` (CPU and memory summed over its processes)
    client_per_channel: int | None = None  # load client: ADS streams per TCP connection (None: its 100)


def unavailable(opts: PeerOptions) -> str | None:
    """Why the side-by-side benchmark cannot run here, or None."""
    assets, why = envtest_assets()
    if assets is None:
        return why
    needs_istiod = any("istiod" in c.servers for c in opts.cells) and "istiod" in opts.servers
    if needs_istiod:
        binary, why = istiod_binary()
        if binary is None:
            return why
    return None


async def settle(client: JsonLinesProcess, *, quiet: float, limit: float) -> float:
    """Wait until no response has arrived for `quiet` seconds (at most `limit`); returns the wait."""
    mark = (await client.request("mark"))["mark"]
    t0 = time.time()
    while True:
        await asyncio.sleep(0.1)
        last = (await client.request("stats", mark=mark, expect=None))["last_rx"]
        now = time.time()
        if now - max(last, t0) >= quiet or now - t0 > limit:
            return round(now - t0, 2)


async def _round(
    server: str, index: int, *, opts: PeerOptions, mesh: KubeMesh, rest: KubeRest, kubeconfig: pathlib.Path,
    work: pathlib.Path,
) -> dict[str, Any]:  # fmt: skip
    name = f"{server}-{index}"
    proc: MeshdProcess | IstiodProcess
    if server.startswith("meshd"):  # "meshd-wN": meshd serve --workers N
        workers = int(server.split("-w")[1]) if "-w" in server else opts.meshd_workers
        proc = MeshdProcess(
            config_dir=None, kubeconfig=kubeconfig, log_path=work / f"{name}.log", poll_interval=0.0,
            extra_args=("--no-ca", "--namespace", MESH_NAMESPACE, *opts.meshd_args), workers=workers,
        )  # fmt: skip
    else:
        binary, _ = istiod_binary()
        assert binary is not None
        proc = IstiodProcess(binary=binary, kubeconfig=kubeconfig, log_path=work / f"{name}.log")
    proxies = mesh.proxies()
    out: dict[str, Any] = {"server": server, "round": index}
    async with contextlib.AsyncExitStack() as stack:
        stack.push_async_callback(proc.stop)
        out["ready_s"] = round(await proc.start(timeout=opts.start_timeout_s), 2)
        client = load_client(
            work=work, name=f"{name}-client", node_ids=[n for n, _ in proxies], metadata=[m for _, m in proxies],
            delta=opts.delta, record=False, per_channel=opts.client_per_channel,
        )  # fmt: skip
        stack.push_async_callback(client.stop)
        await client.start()
        cpu0, client_cpu0 = proc.cpu(), cpu_seconds(client.pid)
        cold = await cold_storm(client, proc.target, timeout=opts.cold_timeout_s)
        out["cold"] = cold
        out["cold_s"] = cold["cold_s"]
        out["cold_cpu_s"] = round(proc.cpu() - cpu0, 2)
        out["client_cold_cpu_s"] = round(cpu_seconds(client.pid) - client_cpu0, 2)
        out["cold_bytes"] = (await client.request("totals"))["bytes"]
        print(f"    {name}: ready {out['ready_s']} s, cold {cold['cold_s']} s ({cold['converged']}/{cold['proxies']},"
              f" stream errors {cold['stream_errors']}, last {cold['last_error']})", flush=True)  # fmt: skip
        if not cold["timed_out"]:
            out["settle_s"] = await settle(client, quiet=opts.settle_quiet_s, limit=opts.settle_max_s)
            vs_services = mesh.vs_services()
            moving = mesh.spec.moving

            def vs_change(k: int) -> tuple[dict[str, Any], Any]:
                i = vs_services[k % len(vs_services)]
                return {"type": "rds", "refs": mesh.vs_refs(i)}, lambda: patch(rest, mesh.shift_weights(i))

            def ep_change(k: int) -> tuple[dict[str, Any], Any]:
                i = moving[k % len(moving)]
                return {"type": "eds", "names": mesh.moving_eds_names(i)}, lambda: patch(rest, mesh.move_endpoint(i))

            kinds = [("vs", vs_change)] if vs_services else []  # a mesh of < 2 services has no VirtualService
            for kind, make in [*kinds, ("ep", ep_change)]:
                runs = await change_series(
                    client, count=opts.changes, budget_s=opts.change_budget_s, timeout=opts.change_timeout_s,
                    make=make,
                )  # fmt: skip
                out[kind] = summarise(kind, runs)
            vs = out.get("vs", {})
            print(f"    {name}: VS p50/p99 {vs.get('vs_p50_ms')}/{vs.get('vs_p99_ms')} ms, endpoint "
                  f"{out['ep']['ep_p50_ms']}/{out['ep']['ep_p99_ms']} ms", flush=True)  # fmt: skip
        if isinstance(proc, MeshdProcess):  # what meshd refused of the mesh: none of it, or the figures lie
            out["config_errors"] = [
                f"{e['resource']} {e['field']}: {e['message']}" for e in await proc.get_json("/debug/config_errors")
            ]
        totals = await client.request("totals")
        out["bytes"] = totals["bytes"]
        out["bytes_by_type"] = totals["bytes_by_type"]
        out["cpu_s"] = round(proc.cpu(), 2)
        out["client_cpu_s"] = round(cpu_seconds(client.pid) - client_cpu0, 2)
        out["memory"] = proc.memory()
    return out


async def run_cell(cell: Cell, opts: PeerOptions, *, assets: pathlib.Path, index: int) -> dict[str, Any]:
    servers = tuple(s for s in cell.servers if s.split("-w")[0] in opts.servers)
    work = opts.work / f"peer-{index}-{cell.services}-{cell.proxies}-{'sc' if cell.sidecar else 'nosc'}"
    work = work.with_name(work.name + "-mix") if cell.mix else work
    moving = tuple(dict.fromkeys((k * 37) % cell.services for k in range(opts.changes)))
    spec = KubeMeshSpec(
        services=cell.services, namespaces=cell.namespaces, proxies=cell.proxies, sidecar=cell.sidecar, moving=moving,
        mix=cell.mix,
    )  # fmt: skip
    mesh = KubeMesh(spec)
    out: dict[str, Any] = {
        "cell": cell.label, "services": cell.services, "namespaces": cell.namespaces, "proxies": cell.proxies,
        "sidecar": cell.sidecar, "mix": cell.mix, "servers": list(servers), "xds": "delta" if opts.delta else "sotw",
        "pods_per_service": spec.pods_per_service, "meshd_args": list(opts.meshd_args),
        "meshd_workers": opts.meshd_workers, "client_per_channel": opts.client_per_channel,
    }  # fmt: skip
    plane = await start_cluster(work=work / "kube", assets=assets)
    rest = KubeRest.from_kubeconfig(plane.kubeconfig)
    try:
        out["write"] = await write_mesh(rest, mesh)
        print(f"  {cell.label}: mesh written {out['write']}", flush=True)
        rounds: list[dict[str, Any]] = []
        for r in range(opts.rounds):
            for server in servers:
                rounds.append(
                    await _round(server, r, opts=opts, mesh=mesh, rest=rest, kubeconfig=plane.kubeconfig, work=work)
                )
        out["rounds"] = rounds
        out["figures"] = {s: aggregate([x for x in rounds if x["server"] == s]) for s in servers}
        if len(servers) == 2:
            out["ratios"] = ratios(out["figures"][servers[0]], out["figures"][servers[1]])
    finally:
        await rest.close()
        await asyncio.to_thread(plane.stop)
    return out


async def run_peer(opts: PeerOptions) -> dict[str, Any]:
    why = unavailable(opts)
    if why is not None:
        return {"skipped": why}
    assets, _ = envtest_assets()
    assert assets is not None
    cells = []
    for index, cell in enumerate(opts.cells):
        t0 = time.time()
        print(f"  -- {cell.label}", flush=True)
        try:
            result = await run_cell(cell, opts, assets=assets, index=index)
        except Exception as exc:  # one failed cell does not lose the others
            import traceback

            traceback.print_exc()
            result = {"cell": cell.label, "error": f"{type(exc).__name__}: {exc}"[:500]}
        result["elapsed_s"] = round(time.time() - t0, 1)
        cells.append(result)
    return {"scenario": "peer", "peer": "istiod-1.14", "rounds": opts.rounds, "changes": opts.changes,
            "cells": cells}  # fmt: skip
