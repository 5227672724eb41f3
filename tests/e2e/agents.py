"""Sidecars run through `meshd agent`: in-process (`run_agent` as a task, any CertificateSource) or as a
real `meshd agent` child process (signals, exit codes). Work dirs are short (/tmp/mag-*): the SDS Unix
socket path must fit in 107 bytes."""

from __future__ import annotations

import asyncio
import json
import os
import pathlib
import shutil
import signal
import sys
import tempfile
from typing import Any

import aiohttp

from meshd.agent.ca_client import generate_csr, request_certificate
from meshd.agent.certificate import CertificateSource
from meshd.agent.run import run_agent
from meshd.settings import AgentSettings
from tests.e2e.harness import eventually


def short_workdir(name: str) -> pathlib.Path:
    return pathlib.Path(tempfile.mkdtemp(prefix=f"mag-{name[:12]}-", dir="/tmp"))


class _AgentBase:
    ip: str
    admin_port: int
    status_port: int
    workdir: pathlib.Path
    session: aiohttp.ClientSession

    @property
    def socket_path(self) -> pathlib.Path:
        return self.workdir / "var/run/secrets/workload-spiffe-uds/socket"

    async def admin_get(self, path: str) -> str:
        async with self.session.get(f"http://{self.ip}:{self.admin_port}{path}") as resp:
            assert resp.status == 200, f"{path} -> {resp.status}"
            return await resp.text()

    async def config_dump(self, resource: str) -> dict[str, Any]:
        parsed: dict[str, Any] = json.loads(await self.admin_get(f"/config_dump?resource={resource}"))
        return parsed

    async def cert_serials(self) -> set[str]:
        """Serial numbers of the workload certificates Envoy holds (admin /certs)."""
        certs = json.loads(await self.admin_get("/certs"))["certificates"]
        return {c["serial_number"] for entry in certs for c in entry.get("cert_chain", [])}

    async def cert_identities(self) -> set[str]:
        certs = json.loads(await self.admin_get("/certs"))["certificates"]
        return {
            san["uri"]
            for entry in certs
            for c in entry.get("cert_chain", [])
            for san in c.get("subject_alt_names", [])
            if "uri" in san
        }

    async def status(self) -> dict[str, Any]:
        async with self.session.get(f"http://{self.ip}:{self.status_port}/status") as resp:
            parsed: dict[str, Any] = await resp.json()
            return parsed

    async def ready(self) -> bool:
        async with self.session.get(f"http://{self.ip}:{self.status_port}/healthz/ready") as resp:
            return resp.status == 200

    async def wait_ready(self, timeout: float = 60) -> None:
        await eventually(self.ready, timeout=timeout, what=f"agent {self.workdir} /healthz/ready")


class AgentTask(_AgentBase):
    """`run_agent` in this event loop."""

    def __init__(self, settings: AgentSettings, *, source: CertificateSource | None = None) -> None:
        self.settings = settings
        self.source = source
        self.ip, self.admin_port, self.status_port = settings.ip, settings.admin_port, settings.status_port
        self.workdir = settings.workdir
        self._stop = asyncio.Event()
        self.task: asyncio.Task[int] | None = None
        self.session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5))

    async def start(self) -> None:
        self.task = asyncio.create_task(run_agent(self.settings, source=self.source, stop=self._stop))

    async def stop(self) -> int | None:
        code = None
        if self.task is not None:
            self._stop.set()
            code = await asyncio.wait_for(self.task, 20)
            self.task = None
        await self.session.close()
        return code


class AgentProcess(_AgentBase):
    """`python -m meshd agent <args>` as a child process; its log is `<workdir>/agent.log`."""

    def __init__(
        self,
        *,
        pod: str,
        ip: str,
        args: tuple[str, ...],
        workdir: pathlib.Path | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        """`env`: added to the agent's environment (as a container's `env` would be)."""
        self.ip, self.admin_port, self.status_port = ip, 15000, 15021
        self.env = {**os.environ, **env} if env else None
        self.workdir = workdir or short_workdir(pod)
        self.log_path = self.workdir / "agent.log"
        self.args = ("--pod", pod, "--ip", ip, "--workdir", str(self.workdir), *args)
        self.process: asyncio.subprocess.Process | None = None
        self.session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5))

    async def start(self) -> None:
        with self.log_path.open("ab") as log:
            self.process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "meshd", "--log-level", "INFO", "agent", *self.args,
                stdin=asyncio.subprocess.DEVNULL, stdout=log, stderr=log, env=self.env,
            )  # fmt: skip

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    async def wait_exit(self, timeout: float = 30) -> int:
        assert self.process is not None
        return await asyncio.wait_for(self.process.wait(), timeout)

    async def terminate(self, timeout: float = 20) -> int:
        assert self.process is not None
        if self.process.returncode is None:
            self.process.send_signal(signal.SIGTERM)
        return await self.wait_exit(timeout)

    async def close(self) -> None:
        if self.process is not None and self.process.returncode is None:
            try:
                await self.terminate()
            except TimeoutError:
                self.process.kill()
                await self.process.wait()
        await self.session.close()


def remove_workdir(workdir: pathlib.Path) -> None:
    shutil.rmtree(workdir, ignore_errors=True)


def write_ca_tokens(path: pathlib.Path, tokens: dict[str, tuple[str, str]]) -> pathlib.Path:
    """meshd's standalone `--ca-token-file`: token -> (namespace, service account)."""
    lines = [f"{token}: {{namespace: {ns}, serviceAccount: {sa}}}" for token, (ns, sa) in tokens.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


async def istioctl_cert_dir(
    *, work_dir: pathlib.Path, ca_dir: pathlib.Path, secure_port: int, token: str
) -> pathlib.Path:
    """A certificate from meshd's CA for `token`'s identity, laid out as istioctl's --cert-dir wants it."""
    certs = work_dir / f"certs-{token}"
    certs.mkdir()
    root = (ca_dir / "root-cert.pem").read_text()
    key, csr = generate_csr()
    chain = await request_certificate(
        address=f"127.0.0.1:{secure_port}", root_cert_pem=root, token=token, csr_pem=csr, ttl_s=3600
    )
    for name, text in {"cert-chain.pem": "".join(chain), "key.pem": key, "root-cert.pem": root}.items():
        (certs / name).write_text(text)
    return certs
