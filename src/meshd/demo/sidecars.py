"""The demo's sidecars (and ingress gateway): one `meshd agent` process per workload, as in production.
Each agent obtains its workload certificate from meshd's CA with its token (standalone token file), serves it to its
Envoy over SDS, and reaches meshd's xDS over mTLS on the secure port; meshd then turns on mTLS
between the sidecars (auto mTLS)."""

from __future__ import annotations

import asyncio
import contextlib
import pathlib
import sys
from dataclasses import dataclass

import aiohttp

from meshd.agent.envoy import EnvoyError
from meshd.agent.process import spawn, tail, terminate
from meshd.demo import mesh
from meshd.demo.mesh import Workload

READY_TIMEOUT_S = 60.0


class SidecarError(RuntimeError):
    """A sidecar did not come up; the message holds its log's tail."""


def write_tokens(*, path: pathlib.Path, workloads: list[Workload]) -> dict[str, str]:
    """meshd's standalone `--ca-token-file` (token -> namespace and service account); pod -> token."""
    tokens = {w.pod: f"demo-token-{w.pod}" for w in workloads}
    lines = [f"{tokens[w.pod]}: {{namespace: {w.namespace}, serviceAccount: {w.service_account}}}" for w in workloads]
    path.write_text("\n".join(lines) + "\n")
    return tokens


@dataclass
class AgentSidecar:
    """A running `meshd agent` (and the Envoy it supervises) for one workload."""

    workload: Workload
    process: asyncio.subprocess.Process
    log_path: pathlib.Path
    session: aiohttp.ClientSession

    @property
    def name(self) -> str:
        return self.workload.pod

    async def admin_get(self, path: str) -> str:
        """GET an Envoy admin path; raises EnvoyError unless 200 (aiohttp errors when unreachable)."""
        url = f"http://{self.workload.ip}:{mesh.ADMIN_PORT}{path}"
        async with self.session.get(url) as response:
            body = await response.text()
            if response.status != 200:
                raise EnvoyError(f"sidecar {self.name}: GET {path} -> {response.status}")
            return body

    async def scrape_metrics(self) -> str:
        """The agent's merged Prometheus endpoint (Istio's 15020 `/stats/prometheus`: Envoy's stats with
        Istio's metric names, and the agent's own)."""
        url = f"http://{self.workload.ip}:{mesh.METRICS_PORT}/stats/prometheus"
        async with self.session.get(url) as response:
            body = await response.text()
            if response.status != 200:
                raise EnvoyError(f"sidecar {self.name}: GET {url} -> {response.status}")
            return body

    async def ready(self) -> bool:
        url = f"http://{self.workload.ip}:{mesh.STATUS_PORT}/healthz/ready"
        with contextlib.suppress(aiohttp.ClientError, TimeoutError):
            async with self.session.get(url) as response:
                return response.status == 200
        return False

    async def stop(self) -> None:
        await terminate(process=self.process, timeout_s=10.0)
        await self.session.close()


async def start_agent(
    *,
    workload: Workload,
    token: str,
    secure_port: int,
    root_cert: pathlib.Path,
    delta: bool,
    work: pathlib.Path,
) -> AgentSidecar:
    workdir = work / "agents" / workload.pod
    workdir.mkdir(parents=True)
    (workdir / "token").write_text(token)
    labels = ",".join(f"{k}={v}" for k, v in (("app", workload.app), ("version", workload.version)))
    argv = [
        sys.executable, "-m", "meshd", "--log-level", "INFO", "agent",
        "--pod", workload.pod, "--namespace", workload.namespace, "--ip", workload.ip,
        "--service-account", workload.service_account, "--labels", labels,
        "--workdir", str(workdir), "--token-file", str(workdir / "token"), "--root-cert", str(root_cert),
        "--xds-address", f"127.0.0.1:{secure_port}", "--envoy-concurrency", "1",
        "--admin-port", str(mesh.ADMIN_PORT), "--status-port", str(mesh.STATUS_PORT),
        "--metrics-port", str(mesh.METRICS_PORT), "--stats-port", str(mesh.STATS_PORT),
        *(["--delta"] if delta else []),
        *(["--proxy-type", "router"] if workload.router else []),
    ]  # fmt: skip
    log_path = workdir / "agent.log"
    process = await spawn(argv=argv, log_path=log_path)
    return AgentSidecar(
        workload=workload,
        process=process,
        log_path=log_path,
        session=aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)),
    )


async def wait_ready(sidecar: AgentSidecar) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + READY_TIMEOUT_S
    while not await sidecar.ready():
        if sidecar.process.returncode is not None:
            raise SidecarError(
                f"agent {sidecar.name} exited with {sidecar.process.returncode}; {sidecar.log_path}:\n"
                + tail(path=sidecar.log_path)
            )
        if loop.time() > deadline:
            raise SidecarError(f"agent {sidecar.name} not ready after {READY_TIMEOUT_S:.0f}s; {sidecar.log_path}")
        await asyncio.sleep(0.1)
