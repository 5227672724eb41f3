"""`meshd demo`: meshd standalone on examples/bookinfo, an Envoy sidecar per pod, live traffic, canary shifts.

Each sidecar is run by `meshd agent` with a certificate from meshd's CA, so the sidecars talk mTLS and
the table shows the identity each app saw its caller present. The traffic enters through the ingress
gateway (a Gateway and a VirtualService bound to it, served to a `meshd agent --proxy-type router`).

Phases: the VirtualService as shipped (90% v1 / 10% v2), then the file is rewritten to 50/50, then to
100% v3. Each phase checks that the traffic measured after the frontend sidecar got the new weights
matches them. Every child process (meshd, Envoys) is stopped on exit, error or Ctrl-C.
"""

from __future__ import annotations

import asyncio
import contextlib
import pathlib
import shutil
import socket
import sys
import tempfile
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any, TextIO

import aiohttp

from meshd.agent.process import spawn, tail, terminate
from meshd.demo import mesh
from meshd.demo.apps import Upstream, start_app
from meshd.demo.display import LiveDisplay
from meshd.demo.mesh import MeshError, Workload, read_weights
from meshd.demo.metrics import HopCheck, MetricsWatcher, hop_check
from meshd.demo.observe import WeightsWatcher
from meshd.demo.phases import Phase, run_phase, summarize
from meshd.demo.sidecars import AgentSidecar, SidecarError, start_agent, wait_ready, write_tokens
from meshd.demo.traffic import LoadGenerator, tally

RATE_PER_S = 50.0
LATER_PHASES = (
    Phase(title="shift", weights={"v1": 50, "v2": 50}),
    Phase(title="promote", weights={"v3": 100}),
)
STARTUP_TIMEOUT_S = 60.0
METRICS_TIMEOUT_S = 30.0  # for the proxies' counters to hold every request once the traffic stopped


class DemoError(RuntimeError):
    """The demo cannot go on; the message says why and where to look."""


@dataclass(frozen=True)
class Meshd:
    """Where the meshd subprocess listens."""

    xds_port: int
    http_url: str
    secure_port: int  # the CA and xDS over mTLS
    root_cert: pathlib.Path


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _check_addresses(*, workloads: list[Workload]) -> None:
    for workload in workloads:
        for port in (
            mesh.APP_PORT,
            mesh.SERVICE_PORT,
            mesh.ADMIN_PORT,
            mesh.INBOUND_PORT,
            mesh.STATUS_PORT,
            mesh.METRICS_PORT,
            mesh.STATS_PORT,
        ):
            with socket.socket() as probe:
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                try:
                    probe.bind((workload.ip, port))
                except OSError as err:
                    raise DemoError(
                        f"cannot bind {workload.ip}:{port} ({err}). Is another demo running? The demo needs"
                        f" loopback addresses 127.0.10.x (Linux has them; on macOS: sudo ifconfig lo0 alias"
                        f" {workload.ip})"
                    ) from err


async def _start_meshd(
    *, stack: contextlib.AsyncExitStack, config_dir: pathlib.Path, work: pathlib.Path, tokens: pathlib.Path
) -> Meshd:
    """Spawn `meshd serve` on the config dir; returns its HTTP base URL once /ready answers 200."""
    xds_port, http_port, secure_port = _free_port(), _free_port(), _free_port()
    log_path = work / "meshd.log"
    argv = [
        sys.executable,
        "-m",
        "meshd",
        "--log-level",
        "INFO",
        "serve",
        "--config-dir",
        str(config_dir),
        "--xds-host",
        "127.0.0.1",
        "--xds-port",
        str(xds_port),
        "--http-host",
        "127.0.0.1",
        "--http-port",
        str(http_port),
        "--secure-host",
        "127.0.0.1",
        "--secure-port",
        str(secure_port),
        "--ca-dir",
        str(work / "ca"),
        "--ca-token-file",
        str(tokens),
    ]
    process = await spawn(argv=argv, log_path=log_path)
    stack.push_async_callback(terminate, process=process, timeout_s=5.0)
    base = f"http://127.0.0.1:{http_port}"
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 30.0
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as session:
        while True:
            if process.returncode is not None:
                raise DemoError(f"meshd exited with {process.returncode}; {log_path}:\n{tail(path=log_path)}")
            with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                async with session.get(base + "/ready") as response:
                    if response.status == 200:
                        root = work / "ca" / "root-cert.pem"
                        return Meshd(xds_port=xds_port, http_url=base, secure_port=secure_port, root_cert=root)
            if loop.time() > deadline:
                raise DemoError(f"meshd not ready after 30s; {log_path}:\n{tail(path=log_path)}")
            await asyncio.sleep(0.05)


async def _start_apps(*, stack: contextlib.AsyncExitStack, workloads: list[Workload]) -> None:
    for workload in workloads:
        if workload.router:
            continue  # the gateway is a proxy alone
        callee = mesh.CALLS.get(workload.app)
        upstream = None if callee is None else Upstream(service=callee, sidecar_host=workload.ip)
        server = await start_app(
            service=workload.app,
            version=workload.version,
            pod=workload.pod,
            host=workload.ip,
            port=mesh.APP_PORT,
            upstream=upstream,
        )
        stack.push_async_callback(server.stop)


async def _start_sidecars(
    *,
    stack: contextlib.AsyncExitStack,
    workloads: list[Workload],
    meshd: Meshd,
    tokens: dict[str, str],
    delta: bool,
    work: pathlib.Path,
) -> dict[str, AgentSidecar]:
    sidecars: dict[str, AgentSidecar] = {}
    for workload in workloads:
        sidecar = await start_agent(
            workload=workload,
            token=tokens[workload.pod],
            secure_port=meshd.secure_port,
            root_cert=meshd.root_cert,
            delta=delta,
            work=work,
        )
        stack.push_async_callback(sidecar.stop)
        sidecars[workload.pod] = sidecar
    try:
        await asyncio.gather(*(wait_ready(sidecar) for sidecar in sidecars.values()))
    except SidecarError as err:
        raise DemoError(str(err)) from err
    return sidecars


async def _background(*, stack: contextlib.AsyncExitStack, coroutine: Coroutine[Any, Any, None]) -> None:
    """Run `coroutine` as a task that is cancelled (and awaited) when the stack unwinds."""
    task = asyncio.create_task(coroutine)

    async def cancel() -> None:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    stack.push_async_callback(cancel)


async def _demo(
    *,
    stack: contextlib.AsyncExitStack,
    duration_s: float,
    delta: bool,
    work: pathlib.Path,
    out: TextIO,
    launched_at: float,
) -> bool:
    loop = asyncio.get_running_loop()
    source = mesh.example_dir()
    workloads = mesh.load_workloads(directory=source)
    versions = mesh.canary_versions(workloads=workloads)
    _check_addresses(workloads=workloads)
    config_dir = work / "config"
    config_dir.mkdir()
    for path in source.glob("*.yaml"):
        shutil.copy(path, config_dir / path.name)
    vs_path = config_dir / mesh.VIRTUAL_SERVICE_FILE
    stack.callback(out.write, "stopped sidecars, apps and meshd\n")  # runs last

    mode = "delta" if delta else "SotW"
    out.write(f"starting meshd on {config_dir} ({len(workloads)} workloads, {mode} xDS)\n")
    tokens = write_tokens(path=work / "tokens.yaml", workloads=workloads)
    meshd = await _start_meshd(stack=stack, config_dir=config_dir, work=work, tokens=work / "tokens.yaml")
    out.write(
        f"meshd ready after {loop.time() - launched_at:.2f}s: xDS 127.0.0.1:{meshd.xds_port}, HTTP {meshd.http_url}\n"
    )
    await _start_apps(stack=stack, workloads=workloads)
    sidecars = await _start_sidecars(
        stack=stack, workloads=workloads, meshd=meshd, tokens=tokens, delta=delta, work=work
    )
    out.write(
        f"{len(sidecars) - 1} sidecars and the ingress gateway LIVE after {loop.time() - launched_at:.2f}s, each run"
        f" by `meshd agent` with a certificate from meshd's CA (mTLS between sidecars)\n"
    )

    by_app = {workload.app: workload for workload in workloads}
    gateway_ip = by_app[mesh.GATEWAY_APP].ip
    generator = LoadGenerator(
        url=f"http://{gateway_ip}:{mesh.GATEWAY_PORT}/",
        host_header="bookinfo.example.com",
        canary_service=mesh.CANARY_SERVICE,
        rate_per_s=RATE_PER_S,
        clock=loop.time,
    )
    watcher = WeightsWatcher(
        envoy=sidecars[by_app[mesh.ENTRY_SERVICE].pod], service=mesh.CANARY_SERVICE, clock=loop.time
    )
    metrics = MetricsWatcher(proxies=list(sidecars.values()), clock=loop.time)
    await _background(stack=stack, coroutine=watcher.run())
    await _background(stack=stack, coroutine=metrics.run())
    await _background(stack=stack, coroutine=generator.run())
    out.write(f"traffic: {RATE_PER_S:.0f} req/s into the ingress gateway, http://{gateway_ip}:{mesh.GATEWAY_PORT}/\n")
    try:
        first = await asyncio.wait_for(generator.wait_first_success(), timeout=STARTUP_TIMEOUT_S)
    except TimeoutError:
        errors = tally(samples=generator.samples, since=0).errors.most_common(3)
        raise DemoError(f"no successful request in {STARTUP_TIMEOUT_S:.0f}s; most common errors: {errors}") from None
    startup = f"  start-up: first successful request {first - launched_at:.2f}s after launch"
    out.write(startup.strip() + "\n")

    display = LiveDisplay(stream=out)
    phases = [Phase(title="canary", weights=read_weights(path=vs_path)), *LATER_PHASES]
    results = []
    for number, phase in enumerate(phases, start=1):
        results.append(
            await run_phase(
                number=number,
                phases=len(phases),
                phase=phase,
                duration_s=duration_s,
                vs_path=vs_path,
                work=work,
                generator=generator,
                watcher=watcher,
                metrics=metrics,
                display=display,
                versions=versions,
            )
        )
    checks = await _count_check(generator=generator, metrics=metrics, workloads=workloads)
    return summarize(out=out, results=results, startup=startup, versions=versions, metrics=checks)


async def _count_check(
    *, generator: LoadGenerator, metrics: MetricsWatcher, workloads: list[Workload]
) -> list[HopCheck]:
    """Stop the traffic (every request answered), then compare each hop's istio_requests_total on both
    reporters with the requests the load generator got answered 200, until they match or a deadline."""
    await generator.stop()
    by_version = tally(samples=generator.samples, since=0).by_version
    versions: dict[str, list[str]] = {}
    for workload in workloads:
        versions.setdefault(workload.app, []).append(workload.version)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + METRICS_TIMEOUT_S
    while True:
        counts = await metrics.read()
        checks = (
            []
            if counts is None
            else hop_check(
                counts=counts,
                chain=mesh.call_chain(),
                canary=mesh.CANARY_SERVICE,
                versions=versions,
                by_version=by_version,
            )
        )
        if (checks and all(check.matched for check in checks)) or loop.time() > deadline:
            return checks
        await asyncio.sleep(0.5)


def _tidy(*, work: pathlib.Path, keep_logs: bool) -> bool:
    """Remove the work dir unless there are logs to keep; True if it was kept."""
    if keep_logs and any(work.rglob("*.log")):
        return True
    shutil.rmtree(work, ignore_errors=True)
    return False


async def run_demo(*, duration_s: float, delta: bool, out: TextIO | None = None) -> int:
    """Run the whole demo; 0 only if traffic flowed and every canary shift was observed."""
    stream = out or sys.stdout
    launched_at = asyncio.get_running_loop().time()
    work = pathlib.Path(tempfile.mkdtemp(prefix="meshd-demo-"))
    ok = False
    try:
        async with contextlib.AsyncExitStack() as stack:
            ok = await _demo(
                stack=stack,
                duration_s=duration_s,
                delta=delta,
                work=work,
                out=stream,
                launched_at=launched_at,
            )
    except (DemoError, MeshError) as err:
        stream.write(f"demo failed: {err}\n")
    except asyncio.CancelledError:
        stream.write("interrupted\n")
        raise
    finally:
        if _tidy(work=work, keep_logs=not ok):
            stream.write(f"logs kept in {work}\n")
        stream.flush()
    return 0 if ok else 1
