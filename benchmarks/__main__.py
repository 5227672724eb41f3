"""`make bench [BENCH_ARGS=--quick]`: meshd at scale, against its targets and against the limit.

Scenarios (sizes adjustable, see --help):
  isolated   1000 services / 100 namespaces / 2000 proxies, a Sidecar per namespace; 3 real Envoys
  full-mesh  300 services / 300 proxies, no Sidecar
  churn      endpoints of 10% of services change every second for 60 s
  growth     one endpoint change timed at 100, 1000 and 5000 services (50 proxies)
  translate  in-process translation cost per push (no gRPC)
  envoy-ack  push -> ACK through one real Envoy (SotW and delta)
  security   CA signing latency/throughput/CPU; xDS CPU per MB over mTLS 15012 vs plaintext 15010
  slowclients  healthy proxies' change latency, quiet and with 100 never-reading ADS streams attacking
  placement  (only when named) 2 workers, 5000 services / 100 namespaces with Sidecars, 400 proxies on 15012 from
             their pods' addresses: --worker-placement namespace against kernel (CPU, RSS, scopes per worker)

--peer istiod: instead of the scenarios, meshd side by side with the real istiod (Istio 1.14, from
../shared/peers/istiod-1.14) on a real kube-apiserver (../shared/envtest), same objects, same load
client, alternating rounds; a table of meshd / istiod per figure (benchmarks/scenario_peer.py).
Default cells: 200 services / 500 proxies without and with a Sidecar per namespace; --peer-full for
200 and 1000 services x 500 and 2000 proxies x both; --peer-large adds 5000 / 5000 (Sidecar, meshd only).

Simulated proxies come from a load client in its own process (benchmarks/loadclient.py); the
reference server (benchmarks/reference_server.py) replays meshd's recorded responses to the same
client to give the overhead ratio. Prints one table per scenario, then a one-line summary (last
line); writes benchmarks/results/latest.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import pathlib
import shlex
import shutil
import signal
import sys
import tempfile
import time
import traceback
from typing import Any

from benchmarks import (
    envoy_bench,
    metrics_bench,
    peer_report,
    placement_bench,
    report,
    scenario_slowclients,
    security_bench,
    translate_bench,
)
from benchmarks.config import Options, quick
from benchmarks.scenario_churn import run_churn
from benchmarks.scenario_growth import run_growth
from benchmarks.scenario_mesh import run_mesh_scenario
from benchmarks.scenario_peer import DEFAULT_CELLS, FULL_CELLS, LARGE_CELL, Cell, PeerOptions, run_peer
from benchmarks.scenario_slowclients import run_slowclients


def _triple(text: str) -> tuple[int, int, int]:
    a, b, c = (int(x) for x in text.split(","))
    return a, b, c


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--quick", action="store_true", help="small sizes, about a minute")
    p.add_argument("--out", help="results JSON (default benchmarks/results/latest.json; with --peer, peer-istiod.json)")
    p.add_argument("--delta", action="store_true", help="load client uses delta ADS (default SotW)")
    p.add_argument(
        "--scenarios",
        help="comma list of: "
        + ",".join(Options(work=pathlib.Path()).scenarios)
        + " (and placement, run only when named)",
    )
    p.add_argument("--isolated", type=_triple, metavar="S,NS,P", help="services,namespaces,proxies")
    p.add_argument("--full-mesh", type=_triple, metavar="S,NS,P")
    p.add_argument("--churn", type=_triple, metavar="S,NS,P", help="mesh of the churn scenario")
    p.add_argument("--churn-seconds", type=int)
    p.add_argument("--growth-sizes", help="comma list of service counts")
    p.add_argument("--growth-proxies", type=int)
    p.add_argument("--changes", type=int, help="timed changes per kind and scenario")
    p.add_argument("--envoys", type=int, help="real Envoys in the isolated scenario")
    p.add_argument("--no-reference", action="store_true", help="skip the reference server runs")
    p.add_argument("--poll-interval", type=float, help="meshd --poll-interval (default 0.02)")
    p.add_argument("--meshd-workers", type=int, help="meshd serve --workers (default 1; CPU and RSS summed)")
    p.add_argument("--client-per-channel", type=int, help="load client: ADS streams per TCP connection (default 100)")
    p.add_argument("--keep", action="store_true", help="keep the work directory (meshd/Envoy logs, recordings)")
    peer = p.add_argument_group("side by side with istiod (--peer istiod)")
    peer.add_argument("--peer", choices=["istiod"], help="run the side-by-side benchmark instead of the scenarios")
    peer.add_argument("--peer-full", action="store_true", help="200,1000 services x 500,2000 proxies x Sidecar or not")
    peer.add_argument("--peer-large", action="store_true", help="add 5000 services / 5000 proxies, Sidecar, meshd only")
    peer.add_argument("--peer-cells", type=_cells, metavar="S/P[/sidecar][/mix][/meshd|/workers],...",
                      help="cells instead: services/proxies, a Sidecar per namespace, gateways + authorization +"
                           " telemetry config in the mix, meshd alone, meshd with 1 vs 2 worker processes"
                           " (--workers)")  # fmt: skip
    peer.add_argument("--peer-rounds", type=int, default=2, help="rounds per control plane, alternating")
    peer.add_argument("--peer-servers", default="meshd,istiod", help="control planes to run (meshd, istiod)")
    peer.add_argument("--peer-meshd-args", default="", help='more `meshd serve` flags, e.g. "--no-status"')
    return p


def _cells(text: str) -> tuple[Cell, ...]:
    cells = []
    for item in text.split(","):
        services, proxies, *flags = item.split("/")
        unknown = set(flags) - {"sidecar", "meshd", "workers", "mix"}
        if unknown:
            raise argparse.ArgumentTypeError(f"unknown cell flag(s) {sorted(unknown)} in {item!r}")
        servers = ("meshd",) if "meshd" in flags else ("meshd", "istiod")
        if "workers" in flags:  # meshd with 1 and with 2 worker processes, alternating rounds
            servers = ("meshd-w1", "meshd-w2")
        cells.append(Cell(int(services), int(proxies), "sidecar" in flags, servers=servers, mix="mix" in flags))
    return tuple(cells)


def _peer_options(args: argparse.Namespace, work: pathlib.Path) -> PeerOptions:
    cells = args.peer_cells or (FULL_CELLS if args.peer_full else DEFAULT_CELLS)
    if args.peer_large:
        cells = (*cells, LARGE_CELL)
    opts = PeerOptions(work=work, cells=cells, rounds=args.peer_rounds, delta=args.delta)
    opts.servers = tuple(args.peer_servers.split(","))
    opts.meshd_args = tuple(shlex.split(args.peer_meshd_args))
    if args.meshd_workers is not None:
        opts.meshd_workers = args.meshd_workers
    opts.client_per_channel = args.client_per_channel
    if args.changes is not None:
        opts.changes = args.changes
    return opts


def _options(args: argparse.Namespace, work: pathlib.Path) -> Options:
    opts = quick(Options(work=work)) if args.quick else Options(work=work)
    opts.delta = args.delta
    for name in (
        "isolated",
        "full_mesh",
        "churn",
        "churn_seconds",
        "growth_proxies",
        "changes",
        "envoys",
        "poll_interval",
        "meshd_workers",
        "client_per_channel",
    ):
        if getattr(args, name) is not None:
            setattr(opts, name, getattr(args, name))
    if args.growth_sizes:
        opts.growth_sizes = tuple(int(x) for x in args.growth_sizes.split(","))
    if args.scenarios:
        opts.scenarios = tuple(args.scenarios.split(","))
    if args.no_reference:
        opts.reference = ()
    return opts


def _print_scenario(name: str, result: dict[str, Any]) -> None:
    if "error" in result:
        print(f"\n== {name}: FAILED: {result['error']} ==", flush=True)
        return
    if name in ("isolated", "full-mesh"):
        head = (f"{result['services']} services, {result['namespaces']} namespaces, {result['proxies']} proxies,"
                f" Sidecar {'per namespace' if result['sidecar'] else 'none'}, {result['xds']}")  # fmt: skip
        rows = report.mesh_rows(result, report.TARGETS[name])
    elif name == "churn":
        head = f"{result['services']} services, {result['proxies']} proxies, {result['xds']}"
        rows = report.churn_rows(result)
    elif name == "slowclients":
        head = f"{result['services']} services, full mesh, {result['xds']}"
        rows = scenario_slowclients.rows(result)
    elif name == "growth":
        print(f"\n== growth: one endpoint change, same proxies, growing mesh ({result['xds']}) ==")
        print(report.table(report.growth_rows(result)))
        status = "met" if result["ratio"] is not None and result["ratio"] < 2 else "MISSED"
        print(f"time per change {result['ratio_of']}: {result['ratio']}x   target < 2x   {status}", flush=True)
        return
    else:
        print(f"\n== {name} ==")
        print(report.table(result["rows"]), flush=True)
        return
    print(f"\n== {name}: {head} ==")
    print(report.table(rows, ["figure", "value", "target", ""]))
    if name in ("isolated", "full-mesh"):
        print(
            "(change times run from the file write to the last proxy that needed it receiving the update;"
            " meshd's include its 100 ms debounce and <= 1 file poll, the reference server's include neither)"
        )
    sys.stdout.flush()


async def _run_scenario(name: str, opts: Options) -> dict[str, Any]:
    if name == "isolated":
        return await run_mesh_scenario(name, opts, sidecar=True, envoys=opts.envoys)
    if name == "full-mesh":
        return await run_mesh_scenario(name, opts, sidecar=False, envoys=0)
    if name == "churn":
        return await run_churn(opts)
    if name == "growth":
        return await run_growth(opts)
    if name == "translate":
        rows = []
        for services, namespaces, proxies in opts.translate_sizes:
            rows.append(translate_bench.run(services=services, namespaces=namespaces, proxies=proxies))
        return {"rows": rows}
    if name == "envoy-ack":
        rows = [
            await envoy_bench.run(services=opts.envoy_ack_services, changes=opts.envoy_ack_changes, delta=d)
            for d in (False, True)
        ]
        return {"rows": rows}
    if name == "security":
        return await security_bench.run(
            work=opts.work, services=opts.security_services, proxies=opts.security_proxies, csrs=opts.security_csrs
        )
    if name == "slowclients":
        return await run_slowclients(opts)
    if name == "placement":
        services, namespaces, per_namespace, rounds = opts.placement
        return await placement_bench.run(
            work=opts.work, services=services, namespaces=namespaces, per_namespace=per_namespace, rounds=rounds
        )
    if name == "metrics":
        return await metrics_bench.run(seconds=opts.metrics_seconds, rounds=opts.metrics_rounds)
    raise ValueError(f"unknown scenario {name!r}")


async def _main(opts: Options, out: pathlib.Path) -> dict[str, Any]:
    results: dict[str, Any] = {"quick": opts.quick, "xds": "delta" if opts.delta else "sotw"}
    started = time.time()
    for name in opts.scenarios:
        t0 = time.time()
        print(f"-- {name} ...", flush=True)
        try:
            result = await _run_scenario(name, opts)
        except Exception as exc:
            traceback.print_exc()
            result = {"error": f"{type(exc).__name__}: {exc}"[:500]}
        result["elapsed_s"] = round(time.time() - t0, 1)
        results[name] = result
        _print_scenario(name, result)
        _write(out, results)
    results["elapsed_s"] = round(time.time() - started, 1)
    results["targets"] = report.statuses(results)
    results["summary"] = report.summary(results)
    _write(out, results)
    return results


def _write(out: pathlib.Path, results: dict[str, Any]) -> None:
    """Written after every scenario, so an interrupted run keeps what it measured."""
    out.write_text(json.dumps(results, indent=2, default=str))


async def _main_peer(opts: PeerOptions, out: pathlib.Path) -> dict[str, Any]:
    started = time.time()
    print(f"-- peer: meshd and istiod side by side, {len(opts.cells)} cell(s) ...", flush=True)
    results = await run_peer(opts)
    results["elapsed_s"] = round(time.time() - started, 1)
    _write(out, results)
    peer_report.print_peer(results)
    return results


def _cleanup(work: pathlib.Path, *, keep: bool) -> None:
    if keep:
        print(f"work directory kept: {work}", file=sys.stderr)
    else:
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    args = _parser().parse_args()
    default_out = "benchmarks/results/peer-istiod.json" if args.peer else "benchmarks/results/latest.json"
    out = pathlib.Path(args.out or default_out)
    out.parent.mkdir(parents=True, exist_ok=True)
    work = pathlib.Path(tempfile.mkdtemp(prefix="meshd-bench-"))
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # stop children and clean up, as on Ctrl-C
    if args.peer:
        try:
            peer = asyncio.run(_main_peer(_peer_options(args, work), out))
        except KeyboardInterrupt:
            print("\ninterrupted; child processes stopped", file=sys.stderr)
            raise SystemExit(130) from None
        finally:
            _cleanup(work, keep=args.keep)
        print(f"results: {out} ({peer['elapsed_s']} s)", flush=True)
        return
    opts = _options(args, work)
    try:
        results = asyncio.run(_main(opts, out))
    except KeyboardInterrupt:
        print("\ninterrupted; child processes stopped", file=sys.stderr)
        raise SystemExit(130) from None
    finally:
        _cleanup(work, keep=args.keep)
    if results["targets"]:
        print("\n== targets ==")
        print(report.table(results["targets"], ["target", "status"]))
    print(f"\nresults: {out} ({results['elapsed_s']} s)")
    print(results["summary"], flush=True)


if __name__ == "__main__":
    main()
