"""Standalone mode's mesh config: the `--mesh-config` file (MeshConfig YAML, as istiod's --meshConfig),
watched for changes.

Read once at start: a file that is not usable stops meshd with the reason (authorization policies naming an
extension provider must never run against a half-read mesh config). Then polled: a changed file that
parses replaces the mesh config (the store is touched: the next generation reads it, and the mesh config is
part of every cache key); one that does not keeps the last good one in effect, with the error (naming the
field) in /debug/config_errors and the log. Fields meshd does not use are reported as warnings, once per
change (`api.mesh.mesh_warnings`)."""

from __future__ import annotations

import asyncio
import logging
import pathlib

from meshd.api.mesh import InvalidMeshConfig, MeshConfig, mesh_warnings, parse_mesh_config
from meshd.api.meta import InvalidResource, ResourceKey
from meshd.clock import Clock
from meshd.model.store import ConfigStore

ORIGIN = "file:mesh-config"


class MeshConfigFileError(RuntimeError):
    pass


class MeshConfigFile:
    def __init__(
        self,
        *,
        path: pathlib.Path,
        store: ConfigStore,
        clock: Clock,
        interval_s: float,
        log: logging.Logger,
        root_namespace: str,
        trust_domain: str,
    ) -> None:
        self._path, self._store, self._clock, self._interval, self._log = path, store, clock, interval_s, log
        self._root, self._trust_domain = root_namespace, trust_domain
        self._key = ResourceKey("MeshConfig", "", str(path))
        self._text: str | None = None
        self._error: str | None = None
        self.mesh = self._first()

    def _read(self) -> str:
        try:
            return self._path.read_text()
        except (OSError, UnicodeDecodeError) as exc:
            raise InvalidMeshConfig(f"cannot be read: {exc}") from None

    def _parse(self, text: str) -> MeshConfig:
        return parse_mesh_config(
            text, default_root=self._root, default_trust_domain=self._trust_domain, kubernetes=False
        )

    def _first(self) -> MeshConfig:
        """The mesh config at start; raises MeshConfigFileError (meshd does not start) on an unusable file."""
        try:
            text = self._read()
            mesh = self._parse(text)
        except InvalidMeshConfig as exc:
            raise MeshConfigFileError(f"--mesh-config {self._path}: {exc}") from None
        self._text = text
        self._report(mesh)
        return mesh

    def _report(self, mesh: MeshConfig) -> None:
        warnings = mesh_warnings(mesh, key=self._key, origin=ORIGIN, ca_trust_domain=self._trust_domain)
        for warning in warnings:
            self._log.warning("event=mesh_config_warning file=%s message=%r", self._path, warning.message)
        self._store.replace_origin(ORIGIN, {}, warnings)

    def _load(self) -> str | InvalidMeshConfig:
        try:
            return self._read()
        except InvalidMeshConfig as exc:
            return exc

    def check(self) -> bool:
        """Read the file again; True when a new mesh config took effect."""
        return self.apply(self._load())

    def apply(self, loaded: str | InvalidMeshConfig) -> bool:
        """Apply what the file holds now; True when a new mesh config took effect."""
        if isinstance(loaded, InvalidMeshConfig):
            return self._refuse(str(loaded), text=None)
        if loaded == self._text:
            return False
        try:
            mesh = self._parse(loaded)
        except InvalidMeshConfig as exc:
            return self._refuse(str(exc), text=loaded)
        self._text, self._error = loaded, None
        self._report(mesh)
        changed, self.mesh = mesh != self.mesh, mesh
        if not changed:
            return False
        self._log.info(
            "event=mesh_config file=%s root_namespace=%s trust_domain=%s gateway_trusted_proxies=%d",
            self._path, mesh.root_namespace, mesh.trust_domain, mesh.gateway_trusted_proxies,
        )  # fmt: skip
        self._store.touch()
        return True

    def _refuse(self, message: str, *, text: str | None) -> bool:
        if message != self._error:  # logged once per distinct problem
            self._log.error("event=invalid_mesh_config file=%s message=%r", self._path, message)
        self._text, self._error = text, message
        error = InvalidResource(
            self._key, "mesh config", f"{message}: the last good mesh config stays in effect", ORIGIN
        )
        self._store.replace_origin(ORIGIN, {}, [error])
        return False

    async def run(self) -> None:
        while True:
            await self._clock.sleep(self._interval)
            self.apply(await asyncio.to_thread(self._load))  # (read off the event loop)
