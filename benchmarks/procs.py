"""The benchmark's child processes: meshd, the load client and the reference server. Each runs in
its own session with a parent-death signal (a killed driver leaves nothing behind) and is stopped
by the driver's `finally` (also on Ctrl-C). Resource use is read from /proc."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import pathlib
import socket
import subprocess
import sys
import time
from typing import Any

import aiohttp

import meshd
from meshd.agent.process import spawn, terminate

_CLK_TCK = os.sysconf("SC_CLK_TCK")
# How often a starting server's /ready is asked, meshd's and istiod's alike: start -> /ready is read to
# within this (it was 0.1 s, which rounded both up by up to 0.1 s, more than their difference).
READY_POLL_S = 0.01
_PR_SET_PDEATHSIG = 1


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process, in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK


def memory_mb(pid: int) -> dict[str, float]:
    """VmRSS (now) and VmHWM (peak) in MB."""
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(value.split()[0]) / 1024
    return {"rss_mb": round(out.get("VmRSS", 0.0), 1), "peak_rss_mb": round(out.get("VmHWM", 0.0), 1)}


def process_tree(pid: int) -> list[int]:
    """`pid` and its descendants (meshd's workers), from /proc's children lists."""
    out, todo = [], [pid]
    while todo:
        current = todo.pop()
        out.append(current)
        with contextlib.suppress(OSError):
            for task in os.listdir(f"/proc/{current}/task"):
                with open(f"/proc/{current}/task/{task}/children") as f:
                    todo.extend(int(child) for child in f.read().split())
    return out


def tree_cpu_seconds(pid: int) -> float:
    """CPU seconds of `pid`, its live descendants and the children it reaped (cutime + cstime)."""
    total = 0.0
    for member in process_tree(pid):
        with contextlib.suppress(OSError):
            total += cpu_seconds(member)
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return total + (int(fields[13]) + int(fields[14])) / _CLK_TCK


def tree_memory_mb(pid: int) -> dict[str, float]:
    """VmRSS and VmHWM summed over `pid` and its descendants (the peak: each process's own, summed)."""
    rss = peak = 0.0
    for member in process_tree(pid):
        with contextlib.suppress(OSError):
            one = memory_mb(member)
            rss, peak = rss + one["rss_mb"], peak + one["peak_rss_mb"]
    return {"rss_mb": round(rss, 1), "peak_rss_mb": round(peak, 1)}


def pdeathsig() -> None:
    import ctypes

    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, 9, 0, 0, 0)


class Deadline(Exception):
    """A bounded wait ran out."""


class JsonLinesProcess:
    """A Python child driven over stdin/stdout, one JSON object per line each way."""

    def __init__(self, *, name: str, argv: list[str], log_path: pathlib.Path) -> None:
        self.name, self.argv, self.log_path = name, argv, log_path
        self.process: asyncio.subprocess.Process | None = None
        self.hello: dict[str, Any] = {}

    async def start(self, *, timeout: float = 60.0) -> dict[str, Any]:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self.process = await asyncio.create_subprocess_exec(
                sys.executable, *self.argv,
                stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=log,
                start_new_session=True, preexec_fn=pdeathsig, limit=1 << 26,
            )  # fmt: skip
        self.hello = await self._read(timeout)
        return self.hello

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    async def _read(self, timeout: float) -> dict[str, Any]:
        assert self.process is not None and self.process.stdout is not None
        try:
            line = await asyncio.wait_for(self.process.stdout.readline(), timeout)
        except TimeoutError:
            raise Deadline(f"{self.name}: no answer within {timeout}s (log {self.log_path})") from None
        if not line:
            tail = self.log_path.read_text(errors="replace")[-3000:] if self.log_path.exists() else ""
            raise RuntimeError(f"{self.name} exited; log {self.log_path}:\n{tail}")
        reply: dict[str, Any] = json.loads(line)
        if "error" in reply:
            raise RuntimeError(f"{self.name}: {reply['error']}")
        return reply

    async def request(self, cmd: str, *, timeout: float = 120.0, **args: Any) -> dict[str, Any]:
        assert self.process is not None and self.process.stdin is not None
        self.process.stdin.write((json.dumps({"cmd": cmd, **args}) + "\n").encode())
        await self.process.stdin.drain()
        return await self._read(timeout)

    async def stop(self) -> None:
        if self.process is None or self.process.returncode is not None:
            return
        with contextlib.suppress(Exception):
            assert self.process.stdin is not None
            self.process.stdin.write(b'{"cmd": "quit"}\n')
            await self.process.stdin.drain()
            self.process.stdin.close()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.process.wait(), 5)
        await terminate(process=self.process, timeout_s=3)


def compile_meshd() -> None:
    """Compile meshd's modules into their `__pycache__` (ignored by git), so meshd starts from bytecode as
    an installed meshd does (pip compiles at install; the image's PYTHONDONTWRITEBYTECODE only stops new
    files). Run from a checkout on a machine that sets PYTHONDONTWRITEBYTECODE, meshd would otherwise
    compile its ~370 modules at every start: 0.2-0.3 s of CPU no deployment pays. Cheap once compiled."""
    package = pathlib.Path(meshd.__file__).parent
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(package)], check=True)


class MeshdProcess:
    """`meshd serve` on a config directory, or in Kubernetes mode with `kubeconfig` (then `config_dir`
    is None), on free loopback ports."""

    def __init__(
        self,
        *,
        config_dir: pathlib.Path | None,
        log_path: pathlib.Path,
        poll_interval: float,
        extra_args: tuple[str, ...] = ("--no-ca",),
        kubeconfig: pathlib.Path | None = None,
        workers: int = 1,
    ) -> None:
        self.config_dir, self.log_path, self.poll_interval = config_dir, log_path, poll_interval
        self.extra_args = (*extra_args, "--workers", str(workers)) if workers != 1 else extra_args
        self.kubeconfig = kubeconfig
        self.xds_port, self.http_port = free_port(), free_port()
        self.process: asyncio.subprocess.Process | None = None
        self.session: aiohttp.ClientSession | None = None

    def _source_args(self) -> list[str]:
        if self.kubeconfig is not None:
            # the webhook server (not configured here) would otherwise listen on 0.0.0.0:15017
            return ["--kubeconfig", str(self.kubeconfig), "--webhook-host", "127.0.0.1",
                    "--webhook-port", str(free_port())]  # fmt: skip
        return ["--config-dir", str(self.config_dir), "--poll-interval", str(self.poll_interval)]

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.xds_port}"

    async def start(self, *, timeout: float) -> float:
        """Start meshd and wait for /ready; returns seconds to ready."""
        compile_meshd()
        t0 = time.time()
        self.session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30))
        self.process = await spawn(
            argv=[
                sys.executable, "-m", "meshd", "serve", *self._source_args(),
                "--xds-host", "127.0.0.1", "--xds-port", str(self.xds_port),
                "--http-host", "127.0.0.1", "--http-port", str(self.http_port), "--debounce-quiet", "0.1",
                # every simulated proxy connects from 127.0.0.1: one peer address for thousands of streams
                "--max-xds-streams-per-peer", "100000", *self.extra_args,
            ],
            log_path=self.log_path,
        )  # fmt: skip
        while True:
            if self.process.returncode is not None:
                raise RuntimeError(f"meshd exited with {self.process.returncode}; log {self.log_path}")
            with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                async with self.session.get(self.url("/ready")) as resp:
                    if resp.status == 200:
                        return time.time() - t0
            if time.time() - t0 > timeout:
                raise Deadline(f"meshd not ready after {timeout}s; log {self.log_path}")
            await asyncio.sleep(READY_POLL_S)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.http_port}{path}"

    async def get_json(self, path: str) -> Any:
        assert self.session is not None
        async with self.session.get(self.url(path)) as resp:
            return json.loads(await resp.text())

    def cpu(self) -> float:
        return tree_cpu_seconds(self.pid)  # with --workers N, the workers' too

    def memory(self) -> dict[str, float]:
        return tree_memory_mb(self.pid)

    def cpu_by_process(self) -> dict[int, float]:
        """CPU seconds of meshd and of each of its workers (`--workers N`), by pid."""
        out = {}
        for pid in process_tree(self.pid):
            with contextlib.suppress(OSError):
                out[pid] = cpu_seconds(pid)
        return out

    async def stop(self) -> None:
        try:
            if self.process is not None:
                await terminate(process=self.process, timeout_s=5)
        finally:
            if self.session is not None:
                await self.session.close()
                self.session = None


def load_client(
    *,
    work: pathlib.Path,
    name: str,
    node_ids: list[str],
    delta: bool,
    record: bool,
    metadata: list[dict[str, Any]] | None = None,
    per_channel: int | None = None,
) -> JsonLinesProcess:
    """The load client for these proxies; `metadata`: each proxy's node metadata (default none);
    `per_channel`: ADS streams per TCP connection (the client's default: 100)."""
    nodes = work / f"{name}.nodes.json"
    nodes.write_text(json.dumps(node_ids))
    argv = ["-m", "benchmarks.loadclient", "--proxies", str(nodes)]
    if metadata is not None:
        (work / f"{name}.metadata.json").write_text(json.dumps(metadata))
        argv += ["--metadata", str(work / f"{name}.metadata.json")]
    argv += ["--delta"] if delta else []
    argv += ["--record"] if record else []
    argv += ["--per-channel", str(per_channel)] if per_channel else []
    return JsonLinesProcess(name=name, argv=argv, log_path=work / f"{name}.log")


def reference_server(*, work: pathlib.Path, base: pathlib.Path, changes: list[pathlib.Path]) -> JsonLinesProcess:
    argv = ["-m", "benchmarks.reference_server", "--base", str(base), "--port", str(free_port())]
    for path in changes:
        argv += ["--change", str(path)]
    return JsonLinesProcess(name="reference", argv=argv, log_path=work / "reference.log")
