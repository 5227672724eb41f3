"""End-to-end harness: meshd as a real subprocess, real Envoy sidecars, real HTTP apps, all on
loopback addresses of their own so tests never collide with each other or with the demo."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import pathlib
import re
import signal
import socket
import sys
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, Protocol, TypeVar

import aiohttp

from meshd.agent.bootstrap import build_bootstrap
from meshd.agent.envoy import EnvoyProcess
from meshd.demo.apps import AppServer, start_app
from tests.e2e.workers import worker_slot

# A per-process start: test runs side by side (several worktrees on one machine) rarely collide; the workers
# of one pytest-xdist run take disjoint slots (tests/e2e/workers.py).
_SUBNET_START = int(os.environ.get("MESHD_E2E_SUBNET_BASE", str(os.getpid() % 2500)))
_subnets = itertools.count()


# How long a process the harness starts may take to be ready: generous, since the suite runs on several
# workers on a shared machine and a Python process's imports alone can take tens of seconds there; a poll,
# so an idle machine does not wait for it.
START_TIMEOUT_S = 60.0

# Tail sizes of the logs a failing test shows.
MESHD_LOG_TAIL = 6000
SIDECAR_LOG_TAIL = 3000


class LoggedMesh(Protocol):
    """What `logs_on_failure` needs: the logs to show when a test fails, and how to stop it all."""

    def failure_logs(self) -> str: ...

    async def close(self) -> None: ...


M = TypeVar("M", bound=LoggedMesh)

OPEN_MESHES: list[LoggedMesh] = []
"""The meshes inside `logs_on_failure`: conftest's report hook shows their logs when a test fails."""


@asynccontextmanager
async def logs_on_failure(mesh: M) -> AsyncIterator[M]:
    """The body of a mesh fixture: while it runs, a failing test gets the mesh's logs (meshd, Envoy,
    agents) as a report section (tests/e2e/conftest.py); a failing setup prints them; the mesh is
    closed on the way out.

        async with logs_on_failure(Mesh(...)) as m:
            await m.meshd.start()
            yield m
    """
    OPEN_MESHES.append(mesh)
    try:
        yield mesh
    except BaseException:
        print(mesh.failure_logs())
        raise
    finally:
        OPEN_MESHES.remove(mesh)
        await mesh.close()


def log_tail(title: str, text: str, size: int) -> str:
    return f"----- {title} (last {size} characters) -----\n{text[-size:]}"


# Loopback prefixes 127.A.B (A 1..50, B 20..219): 10000 in all, 2500 per xdist worker of `make test`, so no
# run hands one out twice (with 200 a worker came back to a prefix after 50 tests, and a test once found an
# address of its prefix still bound). 127.0.x stays free for the demo and the benchmarks.
SUBNETS = 200 * 50


def next_subnet() -> str:
    """A fresh `127.A.B` prefix for one test."""
    slot = worker_slot(next(_subnets), span=SUBNETS, start=_SUBNET_START)
    return f"127.{1 + slot // 200}.{20 + slot % 200}"


# Test ports come from below the kernel's ephemeral range (32768-60999 by default), each xdist worker from its
# own share (workers.py): a port the kernel hands another process (port 0, an outgoing connection) or another
# worker's port never collides with one a test picked and has not bound yet.
PORT_LOW, PORT_SPAN = 12000, 20000
_ports = itertools.count(os.getpid() % 1000)


def free_port() -> int:
    """A loopback port nothing holds now, from this worker's share."""
    for _ in range(PORT_SPAN):
        port = PORT_LOW + worker_slot(next(_ports), span=PORT_SPAN)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free loopback port in this worker's share")


async def eventually(
    check: Callable[[], Awaitable[Any]],
    *,
    timeout: float = 15.0,
    interval: float = 0.05,
    what: str = "condition",
) -> Any:
    """Poll `check` until it returns a truthy value or raises nothing falsy; fail at the deadline."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    last: Any = None
    while True:
        try:
            last = await check()
            if last:
                return last
        except (aiohttp.ClientError, OSError, AssertionError, KeyError) as exc:
            last = exc
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}; last: {last!r}")
        await asyncio.sleep(interval)


class Meshd:
    """`meshd serve` in a child process, restartable on the same ports."""

    def __init__(
        self,
        *,
        config_dir: pathlib.Path | None = None,
        log_path: pathlib.Path,
        extra_args: tuple[str, ...] = (),
        kubeconfig: pathlib.Path | None = None,
    ) -> None:
        """Standalone with `config_dir`, or Kubernetes mode reading the cluster of `kubeconfig`."""
        self.extra_args = extra_args
        self.config_dir = config_dir
        self.kubeconfig = kubeconfig
        self.log_path = log_path
        self.xds_port = free_port()
        self.http_port = free_port()
        self.secure_port = free_port()  # the CA / xDS TLS port (15012 in production)
        self.ca_dir = log_path.parent / "ca"
        self.process: asyncio.subprocess.Process | None = None
        self.session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5))

    async def start(self, *, wait_ready: bool = True) -> None:
        log = self.log_path.open("ab")
        source = ("--kubeconfig", str(self.kubeconfig)) if self.kubeconfig else ("--config-dir", str(self.config_dir))
        self.process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "meshd", "serve",
            *source,
            "--xds-host", "127.0.0.1", "--xds-port", str(self.xds_port),
            "--http-host", "127.0.0.1", "--http-port", str(self.http_port),
            "--poll-interval", "0.1", "--enable-test-hooks",
            "--secure-host", "127.0.0.1", "--secure-port", str(self.secure_port), "--ca-dir", str(self.ca_dir),
            *self.extra_args,
            stdout=log, stderr=log,
        )  # fmt: skip
        log.close()
        if wait_ready:
            await eventually(self.ready, timeout=START_TIMEOUT_S, what="meshd /ready")

    async def ready(self) -> bool:
        async with self.session.get(self.url("/ready")) as resp:
            return resp.status == 200

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.http_port}{path}"

    async def get_json(self, path: str) -> Any:
        async with self.session.get(self.url(path)) as resp:
            return json.loads(await resp.text())

    async def metrics(self) -> str:
        async with self.session.get(self.url("/metrics")) as resp:
            return await resp.text()

    async def post(self, path: str) -> None:
        async with self.session.post(self.url(path)) as resp:
            assert resp.status == 200, await resp.text()

    async def stop(self) -> None:
        if self.process is not None and self.process.returncode is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.process.wait(), 10)
            except TimeoutError:
                self.process.kill()
                await self.process.wait()
        self.process = None

    def failure_logs(self) -> str:
        """What a failing test shows of it (a Meshd alone can be given to `logs_on_failure`)."""
        return log_tail("meshd log", self.log(), MESHD_LOG_TAIL)

    async def close(self) -> None:
        await self.stop()
        await self.session.close()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


async def secure_xds(bootstrap: dict[str, Any], *, meshd: Meshd, token: str, certs: pathlib.Path) -> None:
    """Make a bootstrap's xds cluster use mTLS to meshd's secure port with a certificate its CA issues for
    `token`'s identity (files written to `certs`)."""
    from meshd.agent.bootstrap import XDS_CLUSTER
    from meshd.agent.ca_client import generate_csr, request_certificate

    root = (meshd.ca_dir / "root-cert.pem").read_text()
    key, csr = generate_csr()
    address = f"127.0.0.1:{meshd.secure_port}"
    chain = await request_certificate(address=address, root_cert_pem=root, token=token, csr_pem=csr, ttl_s=3600)
    for name, text in {"cert-chain.pem": "".join(chain), "key.pem": key, "root-cert.pem": root}.items():
        (certs / name).write_text(text)
    xds = next(c for c in bootstrap["static_resources"]["clusters"] if c["name"] == XDS_CLUSTER)
    xds["transport_socket"] = mtls_xds_transport(certs)


def mtls_xds_transport(certs: pathlib.Path) -> dict[str, Any]:
    """The xDS cluster's transport socket for meshd's secure port: the workload's certificate, key and the
    root from `certs` (cert-chain.pem, key.pem, root-cert.pem), meshd verified as istiod.istio-system.svc."""
    return {
        "name": "envoy.transport_sockets.tls",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
            "sni": "istiod.istio-system.svc",
            "common_tls_context": {
                "alpn_protocols": ["h2"],
                "tls_certificates": [
                    {
                        "certificate_chain": {"filename": str(certs / "cert-chain.pem")},
                        "private_key": {"filename": str(certs / "key.pem")},
                    }
                ],
                "validation_context": {
                    "trusted_ca": {"filename": str(certs / "root-cert.pem")},
                    "match_typed_subject_alt_names": [
                        {"san_type": "DNS", "matcher": {"exact": "istiod.istio-system.svc"}}
                    ],
                },
            },
        },
    }


class Mesh:
    """A small mesh for one test: YAML on disk, meshd, sidecars and apps."""

    def __init__(
        self,
        *,
        work_dir: pathlib.Path,
        delta: bool,
        kubeconfig: pathlib.Path | None = None,
        meshd_args: tuple[str, ...] = (),
    ) -> None:
        self.work_dir = work_dir
        self.delta = delta
        self.subnet = next_subnet()
        self.config_dir = work_dir / "config"
        self.config_dir.mkdir()
        self.meshd = Meshd(
            config_dir=self.config_dir, log_path=work_dir / "meshd.log", kubeconfig=kubeconfig, extra_args=meshd_args
        )
        self.envoys: dict[str, EnvoyProcess] = {}
        self.agents: dict[str, Any] = {}  # pod -> tests.e2e.agents.AgentProcess
        self.apps: list[AppServer] = []
        self.client = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10))

    def ip(self, host: int) -> str:
        return f"{self.subnet}.{host}"

    def write(self, name: str, text: str) -> None:
        path = self.config_dir / name
        tmp = path.with_suffix(".tmp")
        tmp.write_text(text)
        tmp.replace(path)  # atomic, as editors and kubectl-like tools do

    async def sidecar(
        self, *, pod: str, ip: str, namespace: str = "default", token: str | None = None, node_type: str = "sidecar"
    ) -> EnvoyProcess:
        """A plain Envoy (no agent). Plaintext xDS on meshd's plaintext port; with `token` (one of meshd's
        `--ca-token-file` tokens) xDS over mTLS on the secure port with a certificate from meshd's CA for
        that identity: the only way to be served credentialName Secrets. `node_type` "router": a gateway."""
        node_id = f"{node_type}~{ip}~{pod}.{namespace}~{namespace}.svc.cluster.local"
        port = self.meshd.xds_port if token is None else self.meshd.secure_port
        bootstrap = build_bootstrap(
            node_id=node_id, cluster=f"{pod}.{namespace}", xds_host="127.0.0.1", xds_port=port,
            admin_host=ip, admin_port=15000, delta=self.delta,
        )  # fmt: skip
        if token is not None:
            certs = self.work_dir / f"{pod}-xds-certs"
            certs.mkdir(exist_ok=True)
            await secure_xds(bootstrap, meshd=self.meshd, token=token, certs=certs)
        envoy = EnvoyProcess(
            bootstrap=bootstrap,
            work_dir=self.work_dir,
            admin_host=ip,
            admin_port=15000,
            name=pod,
            log_level="warning",
        )
        self.envoys[pod] = envoy
        await envoy.start()
        await envoy.wait_ready(timeout_s=START_TIMEOUT_S)
        return envoy

    async def agent_sidecar(
        self,
        *,
        pod: str,
        ip: str,
        namespace: str = "default",
        service_account: str = "default",
        labels: dict[str, str] | None = None,
        token: str | None = None,
        args: tuple[str, ...] = (),
        wait_ready: bool = True,
    ) -> Any:
        """A sidecar started by a real `meshd agent` process (tests/e2e/agents.py: AgentProcess).

        With `token` (one of meshd's `--ca-token-file` tokens, see agents.write_ca_tokens): the agent
        gets its certificate from meshd's CA and Envoy reaches meshd's secure port over mTLS. Without:
        plaintext xDS to meshd's plaintext port and no certificate.
        """
        from tests.e2e.agents import AgentProcess, short_workdir

        workdir = short_workdir(pod)
        label_arg = ",".join(f"{k}={v}" for k, v in (labels or {}).items())
        base = ["--namespace", namespace, "--service-account", service_account, "--labels", label_arg]
        base += ["--restart-base", "0.2", "--envoy-concurrency", "1"]
        if token is not None:
            (workdir / "token").write_text(token)
            base += ["--xds-address", f"127.0.0.1:{self.meshd.secure_port}", "--token-file", "token"]
            base += ["--root-cert", str(self.meshd.ca_dir / "root-cert.pem")]
        elif "--xds-address" not in args:
            base += ["--xds-address", f"127.0.0.1:{self.meshd.xds_port}", "--xds-plaintext"]
        if self.delta and "--delta" not in args:
            base.append("--delta")
        agent = AgentProcess(pod=pod, ip=ip, args=(*base, *args), workdir=workdir)
        self.agents[pod] = agent
        await agent.start()
        if wait_ready:
            try:
                await agent.wait_ready()
            except AssertionError:
                print(agent.log()[-5000:])
                raise
        return agent

    async def app(self, *, service: str, version: str, pod: str, ip: str, port: int = 8080) -> AppServer:
        server = await start_app(service=service, version=version, pod=pod, host=ip, port=port)
        self.apps.append(server)
        return server

    async def call(self, *, via_ip: str, host: str, path: str = "/", headers: dict[str, str] | None = None) -> Any:
        """One request through the sidecar at `via_ip` (its outbound listener on 9080)."""
        async with self.client.get(f"http://{via_ip}:9080{path}", headers={"Host": host, **(headers or {})}) as resp:
            body = await resp.text()
            return resp.status, body

    async def request(
        self,
        *,
        via_ip: str,
        host: str,
        path: str = "/",
        method: str = "GET",
        port: int = 9080,
        headers: dict[str, str] | None = None,
        timeout: float = 10.0,
    ) -> tuple[int, dict[str, str], str]:
        """Any request through the sidecar at `via_ip`: (status, response headers, body). Redirects
        are not followed."""
        async with self.client.request(
            method,
            f"http://{via_ip}:{port}{path}",
            headers={"Host": host, **(headers or {})},
            allow_redirects=False,
            timeout=aiohttp.ClientTimeout(total=timeout),
        ) as resp:
            body = await resp.text()
            return resp.status, {k.lower(): v for k, v in resp.headers.items()}, body

    async def versions(self, *, via_ip: str, host: str, count: int, concurrency: int = 8) -> Counter[str]:
        """Send `count` requests; count the answering app's version (or the HTTP status on failure)."""
        seen: Counter[str] = Counter()
        sem = asyncio.Semaphore(concurrency)

        async def one() -> None:
            async with sem:
                status, body = await self.call(via_ip=via_ip, host=host)
                seen[json.loads(body)["version"] if status == 200 else f"status-{status}"] += 1

        await asyncio.gather(*(one() for _ in range(count)))
        return seen

    def failure_logs(self) -> str:
        parts = [log_tail("meshd log", self.meshd.log(), MESHD_LOG_TAIL)]
        for pod, envoy in self.envoys.items():
            text = envoy.log_path.read_text(errors="replace") if envoy.log_path.exists() else ""
            parts.append(log_tail(f"Envoy {pod} log", text, SIDECAR_LOG_TAIL))
        parts += [log_tail(f"agent {pod} log", agent.log(), SIDECAR_LOG_TAIL) for pod, agent in self.agents.items()]
        return "\n".join(parts)

    async def close(self) -> None:
        import shutil

        for agent in self.agents.values():
            await agent.close()
            shutil.rmtree(agent.workdir, ignore_errors=True)
        for envoy in self.envoys.values():
            await envoy.stop()
        for server in self.apps:
            await server.stop()
        await self.meshd.close()
        await self.client.close()


def worker_pid(log: str, index: int) -> int:
    """The pid of `meshd serve --workers N`'s worker `index`, as its last start was logged."""
    pids = re.findall(rf"event=worker_starting worker={index} pid=(\d+)", log)
    assert pids, log[-2000:]
    return int(pids[-1])


async def worker_restarted(mesh: Mesh, index: int, old: int) -> bool:
    """Worker `index` exited and was started again (a pid other than `old`)."""
    log = mesh.meshd.log()
    return f"event=worker_exited worker={index}" in log and worker_pid(log, index) != old
