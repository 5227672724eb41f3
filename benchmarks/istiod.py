"""The real istiod (Istio 1.14 line, `pilot-discovery` from ../shared/peers/istiod-1.14) in Kubernetes
mode, as the side-by-side benchmark runs it: the flags of that folder's README, every address on
127.0.0.1 (plaintext xDS on --grpcAddr, /ready on --httpAddr), its CA off, stopped by pid.

Only ever used to measure meshd against it on the same machine and load; never shipped.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pathlib
import time

import aiohttp

from benchmarks.procs import READY_POLL_S, Deadline, cpu_seconds, free_port, memory_mb, pdeathsig
from meshd.agent.process import terminate
from tests.peers import PEERS, unpack_peer

ENV = {
    "PILOT_MAX_REQUESTS_PER_SECOND": "0",  # its default 25 new streams/s would refuse the storm
    "ENABLE_CA_SERVER": "false",
    "PILOT_CERT_PROVIDER": "none",
    "POD_NAMESPACE": "istio-system",
}


def istiod_binary() -> tuple[pathlib.Path | None, str]:
    """pilot-discovery unpacked into the cache, or None and why not."""
    binary = unpack_peer("pilot-discovery")
    if binary is None:
        return None, f"{PEERS / 'pilot-discovery.xz'} is absent: no istiod to compare with"
    return binary, ""


class IstiodProcess:
    """pilot-discovery reading the cluster of `kubeconfig`; the same surface as procs.MeshdProcess."""

    def __init__(self, *, binary: pathlib.Path, kubeconfig: pathlib.Path, log_path: pathlib.Path) -> None:
        self.binary, self.kubeconfig, self.log_path = binary, kubeconfig, log_path
        self.xds_port, self.http_port = free_port(), free_port()
        self.process: asyncio.subprocess.Process | None = None

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.xds_port}"

    async def start(self, *, timeout: float) -> float:
        """Start istiod and wait for /ready (its caches synced); returns seconds to ready."""
        t0 = time.time()
        work = self.log_path.parent
        work.mkdir(parents=True, exist_ok=True)
        absent = str(work / "absent")  # no mesh/networks file: Istio's default MeshConfig
        argv = [
            str(self.binary), "discovery", "--kubeconfig", str(self.kubeconfig),
            "--meshConfig", absent, "--networksConfig", absent,
            "--grpcAddr", self.target, "--httpAddr", f"127.0.0.1:{self.http_port}",
            "--monitoringAddr", f"127.0.0.1:{free_port()}", "--secureGRPCAddr", "", "--httpsAddr", "",
            "--federationAddr", "", "--ctrlz_port", str(free_port()), "--ctrlz_address", "127.0.0.1",
        ]  # fmt: skip
        with self.log_path.open("ab") as log:
            self.process = await asyncio.create_subprocess_exec(
                *argv, stdin=asyncio.subprocess.DEVNULL, stdout=log, stderr=asyncio.subprocess.STDOUT,
                env={**os.environ, **ENV}, cwd=work, start_new_session=True, preexec_fn=pdeathsig,
            )  # fmt: skip
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:
            while True:
                if self.process.returncode is not None:
                    raise RuntimeError(f"istiod exited with {self.process.returncode}; log {self.log_path}")
                with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                    async with session.get(f"http://127.0.0.1:{self.http_port}/ready") as resp:
                        if resp.status == 200:
                            return time.time() - t0
                if time.time() - t0 > timeout:
                    raise Deadline(f"istiod not ready after {timeout}s; log {self.log_path}")
                await asyncio.sleep(READY_POLL_S)

    def cpu(self) -> float:
        return cpu_seconds(self.pid)

    def memory(self) -> dict[str, float]:
        return memory_mb(self.pid)

    async def stop(self) -> None:
        if self.process is not None:
            await terminate(process=self.process, timeout_s=10)
