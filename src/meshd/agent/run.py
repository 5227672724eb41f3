"""`meshd agent`: the node agent next to one Envoy (Istio's pilot-agent).

    certificate source (CSR to meshd's CA) -> rotator -> SecretState -> SDS server (Unix socket)
    bootstrap (node identity, sds-grpc, xds-grpc over mTLS) [+ EnvoyFilter BOOTSTRAP patches from meshd,
    bootstrap_patches.py] -> Envoy, supervised -> exit code
    status port: /healthz/ready, /status

`run_agent` is the reusable entry point (CLI, demo and tests); it returns the process exit code.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import pathlib
from datetime import UTC, datetime
from typing import Any

import grpc
from aiohttp import web

from meshd.agent.bootstrap import build_bootstrap
from meshd.agent.bootstrap_patches import BootstrapPatches, envoy_validator
from meshd.agent.ca_client import secure_channel
from meshd.agent.certificate import CertificateSource
from meshd.agent.envoy import EnvoyProcess, default_envoy_path
from meshd.agent.file_secrets import serve_files
from meshd.agent.merged_metrics import ScrapeStats, agent_metrics, build_envoy_stats_app, build_metrics_app
from meshd.agent.metadata import node_id, node_metadata, workload_name
from meshd.agent.prometheus import identity_env
from meshd.agent.rotation import CertificateRotator
from meshd.agent.sds import SdsServicer, SecretState, start_sds_server
from meshd.agent.status import build_status_app
from meshd.agent.supervisor import EnvoySupervisor, RestartPolicy
from meshd.clock import Clock, SystemClock
from meshd.settings import AgentSettings
from meshd.translate.envoyfilter.bootstrap import AGENT_METADATA
from meshd.translate.proxy import SDS_METADATA


def split_address(address: str) -> tuple[str, int]:
    """`host:port` (IPv6 as `[::1]:port`) -> (host, port); ValueError names the bad address."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"address {address!r} must be host:port")
    return host.strip("[]") or "127.0.0.1", int(port)


def default_source(settings: AgentSettings) -> CertificateSource | None:
    """The CA source the settings describe, or None when the agent is not asked to obtain certificates."""
    if settings.token_file is None and settings.root_cert is None:
        return None
    from meshd.agent.ca_source import CaCertificateSource

    return CaCertificateSource.from_settings(settings)


def socket_path(settings: AgentSettings) -> pathlib.Path:
    return settings.workdir.resolve() / settings.sds_socket


def stats_socket_path(settings: AgentSettings) -> pathlib.Path:
    """Where the agent answers the 15090 listener (Envoy's stats as Istio's, `agent/prometheus.py`)."""
    return settings.workdir.resolve() / "stats.sock"


def agent_bootstrap(settings: AgentSettings, *, certificates: bool | None = None) -> dict[str, Any]:
    """The Envoy bootstrap `meshd agent` writes for these settings. `certificates`: the agent serves a
    workload certificate (default: when the settings name a CA); node metadata `SDS: "true"` then
    tells meshd this sidecar can do Istio mTLS."""
    s = settings
    if certificates is None:
        certificates = settings.token_file is not None or settings.root_cert is not None  # as default_source
    metadata = {**node_metadata(s), **({SDS_METADATA: "true"} if certificates else {})}
    if s.bootstrap_patches:
        metadata[AGENT_METADATA] = "true"  # meshd serves this proxy's EnvoyFilter BOOTSTRAP patches
    host, port = split_address(s.xds_address)
    return build_bootstrap(
        node_id=node_id(s),
        cluster=f"{workload_name(s)}.{s.namespace}",
        xds_host=host,
        xds_port=port,
        admin_host=s.ip,
        admin_port=s.admin_port,
        delta=s.delta,
        extra_metadata=metadata,
        sds_socket=str(socket_path(s)),
        xds_server_name=None if s.xds_plaintext else s.xds_server_name,
        sds_delta=s.sds_delta,
        stats_port=s.stats_port or None,
        stats_socket=str(stats_socket_path(s)),
    )


class _Agent:
    def __init__(self, settings: AgentSettings, *, source: CertificateSource | None, clock: Clock, log: logging.Logger):
        self.settings = settings
        self.log = log
        self.workdir = settings.workdir.resolve()
        self.socket_path = socket_path(settings)
        self.state = SecretState()
        self.sds = SdsServicer(state=self.state, log=log)
        self.rotator = (
            CertificateRotator(
                source=source,
                state=self.state,
                clock=clock,
                log=log,
                grace_ratio=settings.grace_ratio,
                retry_base_s=settings.ca_retry_base_s,
                retry_max_s=settings.ca_retry_max_s,
            )
            if source is not None
            else None
        )
        self.supervisor = EnvoySupervisor(
            make_envoy=self._make_envoy,
            policy=RestartPolicy(
                base_s=settings.restart_base_s,
                max_s=settings.restart_max_s,
                max_restarts=settings.max_restarts,
                stable_after_s=settings.stable_after_s,
            ),
            clock=clock,
            log=log,
        )
        self.patches = (
            BootstrapPatches(
                base=self.bootstrap(),
                channel=self._xds_channel,
                validate=envoy_validator(envoy_path=settings.envoy_path or default_envoy_path(), work_dir=self.workdir),
                log=log,
            )
            if settings.bootstrap_patches
            else None
        )

    def bootstrap(self) -> dict[str, Any]:
        return agent_bootstrap(self.settings, certificates=self.rotator is not None)

    async def _xds_channel(self) -> grpc.aio.Channel:
        """A channel to meshd as Envoy reaches it: plaintext, or mTLS with the workload certificate."""
        s = self.settings
        if s.xds_plaintext or self.rotator is None:
            return grpc.aio.insecure_channel(s.xds_address)
        generation = 0
        while (cert := self.rotator.current) is None:
            generation = await self.state.wait_beyond(generation)
        return secure_channel(
            address=s.xds_address,
            root_cert_pem=cert.root_pem,
            client_cert=(cert.chain_pem, cert.private_key_pem),
            server_name=s.xds_server_name,
        )

    async def _wait_for_patches(self, stop: asyncio.Event) -> None:
        """Envoy's first start waits for meshd's bootstrap patches (bounded: then unpatched, logged)."""
        assert self.patches is not None
        waits = [asyncio.ensure_future(self.patches.received.wait()), asyncio.ensure_future(stop.wait())]
        try:
            await asyncio.wait(waits, timeout=self.settings.bootstrap_patches_wait_s, return_when="FIRST_COMPLETED")
        finally:
            for w in waits:
                w.cancel()
        if not self.patches.received.is_set() and not stop.is_set():
            self.log.error(
                "event=bootstrap_patches_missing wait_s=%s note=envoy_starts_without_them",
                self.settings.bootstrap_patches_wait_s,
            )

    def _make_envoy(self) -> EnvoyProcess:
        s = self.settings
        return EnvoyProcess(
            bootstrap=self.patches.current if self.patches is not None else self.bootstrap(),
            work_dir=self.workdir,
            admin_host=s.ip,
            admin_port=s.admin_port,
            name="envoy",
            envoy_path=s.envoy_path,
            log_level=s.envoy_log_level,
            concurrency=s.envoy_concurrency,
            extra_args=s.envoy_args,
            env={**s.envoy_environment, **identity_env(s)},
        )

    async def envoy_ready(self) -> bool:
        envoy = self.supervisor.envoy
        if envoy is None or envoy.returncode is not None:
            return False
        status, body = await envoy.admin_request("/ready")
        return status == 200 and body.strip() == "LIVE"

    async def envoy_stats(self) -> str:
        envoy = self.supervisor.envoy
        if envoy is None or envoy.returncode is not None:
            raise RuntimeError("envoy is not running")
        return await envoy.admin_get("/stats/prometheus")

    def metrics_app(self) -> web.Application:
        """The merged endpoint (15020): Envoy's stats, the agent's, the application's."""
        app = self.settings.app_metrics
        app_url = f"http://{self.settings.ip}:{app[0]}{app[1]}" if app is not None else None

        def own(stats: ScrapeStats) -> str:
            cert = self.rotator.current if self.rotator else None
            expiry = (cert.not_after - datetime.now(UTC)).total_seconds() if cert is not None else None
            return agent_metrics(stats, cert_expiry_s=expiry, envoy_starts=len(self.supervisor.stats.starts))

        return build_metrics_app(envoy_stats=self.envoy_stats, own=own, app_url=app_url)

    def status(self) -> dict[str, Any]:
        envoy = self.supervisor.envoy
        cert = self.rotator.current if self.rotator else None
        return {
            "node_id": node_id(self.settings),
            "envoy": {
                "pid": envoy.pid if envoy else None,
                "starts": self.supervisor.stats.starts,
                "exits": self.supervisor.stats.exits,
            },
            "certificate": None
            if cert is None
            else {
                "serial": f"{cert.serial:x}",
                "identity": list(cert.uris),
                "not_after": cert.not_after.isoformat(),
                "issued": self.rotator.issued if self.rotator else 0,
            },
            "bootstrap_patches": self.patches.status() if self.patches is not None else None,
            "sds": {
                "socket": str(self.socket_path),
                "streams": self.sds.stats.streams,
                "pushes": self.sds.stats.pushes,
                "acks": self.sds.stats.acks,
                "nacks": self.sds.stats.nacks,
                "last_nack": self.sds.stats.last_nack,
            },
        }

    async def run(self, stop: asyncio.Event) -> int:
        self.workdir.mkdir(parents=True, exist_ok=True)
        server = await start_sds_server(servicer=self.sds, socket_path=self.socket_path)
        runner: web.AppRunner | None = None
        metrics: web.AppRunner | None = None
        envoy_stats: web.AppRunner | None = None
        try:
            if self.settings.stats_port:
                envoy_stats = web.AppRunner(build_envoy_stats_app(self.envoy_stats), access_log=None)
                await envoy_stats.setup()
                stats_socket_path(self.settings).unlink(missing_ok=True)
                await web.UnixSite(envoy_stats, str(stats_socket_path(self.settings))).start()
            if self.settings.metrics_port:
                metrics = web.AppRunner(self.metrics_app(), access_log=None)
                await metrics.setup()
                await web.TCPSite(metrics, self.settings.ip, self.settings.metrics_port).start()
            if self.settings.status_port:
                app = build_status_app(
                    envoy_ready=self.envoy_ready,
                    certificate_ready=lambda: self.rotator is None or self.rotator.current is not None,
                    status=self.status,
                )
                runner = web.AppRunner(app, access_log=None)
                await runner.setup()
                await web.TCPSite(runner, self.settings.ip, self.settings.status_port).start()
            self.log.info(
                "event=agent_started node=%s sds_socket=%s xds=%s mtls=%s",
                node_id(self.settings), self.socket_path, self.settings.xds_address, not self.settings.xds_plaintext,
            )  # fmt: skip
            rotating = asyncio.create_task(self.rotator.run()) if self.rotator else None
            files = asyncio.create_task(serve_files(self.state, log=self.log))  # gateways' certificate files
            patching = asyncio.create_task(self.patches.run()) if self.patches is not None else None
            try:
                if self.patches is not None:
                    await self._wait_for_patches(stop)
                code = await self.supervisor.run(stop)
            finally:
                for task in (rotating, files, patching):
                    if task is not None:
                        task.cancel()
                        with contextlib.suppress(asyncio.CancelledError):
                            await task
            self.log.info("event=agent_stopped exit_code=%d", code)
            return code
        finally:
            for site in (runner, metrics, envoy_stats):
                if site is not None:
                    await site.cleanup()
            await server.stop(grace=0.5)
            self.socket_path.unlink(missing_ok=True)
            stats_socket_path(self.settings).unlink(missing_ok=True)


async def run_agent(
    settings: AgentSettings,
    *,
    source: CertificateSource | None = None,
    stop: asyncio.Event | None = None,
    clock: Clock | None = None,
    log: logging.Logger | None = None,
) -> int:
    """Run the node agent until `stop` is set or Envoy is given up on; returns the exit code.

    `source` overrides where certificates come from (default: meshd's CA as the settings describe,
    or none when neither a token file nor a root certificate is configured).
    """
    agent = _Agent(
        settings,
        source=source if source is not None else default_source(settings),
        clock=clock or SystemClock(),
        log=log or logging.getLogger("meshd.agent"),
    )
    return await agent.run(stop or asyncio.Event())
