"""Watch a directory of YAML files (standalone mode): poll for added, changed and deleted files
and replace what each file contributes to the store. Invalid input is logged and skipped."""

from __future__ import annotations

import hashlib
import logging
import pathlib

from meshd.api.meta import Resource, ResourceKey
from meshd.clock import Clock
from meshd.model.store import ConfigStore
from meshd.sources.yaml_file import parse_file

SUFFIXES = (".yaml", ".yml", ".json")


class DirectorySource:
    def __init__(
        self,
        *,
        directory: pathlib.Path,
        store: ConfigStore,
        clock: Clock,
        interval_s: float,
        log: logging.Logger,
    ) -> None:
        self._dir = directory
        self._store = store
        self._clock = clock
        self._interval = interval_s
        self._log = log
        self._digests: dict[str, str] = {}
        self._stats: dict[str, tuple[int, int, int]] = {}  # origin -> (mtime_ns, size, inode): skip unchanged files
        self._resources: dict[str, dict[ResourceKey, Resource]] = {}

    def _files(self) -> list[pathlib.Path]:
        if not self._dir.is_dir():
            return []
        return sorted(p for p in self._dir.rglob("*") if p.suffix in SUFFIXES and p.is_file())

    def scan(self) -> bool:
        """One pass over the directory; returns True if the store changed."""
        changed = False
        seen: set[str] = set()
        for path in self._files():
            origin = str(path)
            seen.add(origin)
            try:
                stat = path.stat()
                signature = (stat.st_mtime_ns, stat.st_size, stat.st_ino)
                if self._stats.get(origin) == signature and origin in self._digests:
                    continue
                self._stats[origin] = signature
                data = path.read_bytes()
            except OSError as exc:
                self._log.warning("event=file_unreadable file=%s error=%s", origin, exc)
                continue
            digest = hashlib.sha256(data).hexdigest()
            if self._digests.get(origin) == digest:
                continue
            self._digests[origin] = digest
            result = parse_file(
                data.decode("utf-8", errors="replace"),
                origin=origin,
                previous=self._resources.get(origin, {}),
            )
            for err in result.errors:
                self._log.error(
                    "event=invalid_resource file=%s resource=%s field=%s message=%r",
                    origin,
                    err.key or "-",
                    err.field,
                    err.message,
                )
            self._resources[origin] = result.resources
            changed |= self._store.replace_origin(origin, result.resources, result.errors)
            self._log.info(
                "event=file_loaded file=%s resources=%d errors=%d",
                origin,
                len(result.resources),
                len(result.errors),
            )
        for origin in sorted(set(self._digests) - seen):
            del self._digests[origin]
            self._stats.pop(origin, None)
            self._resources.pop(origin, None)
            changed |= self._store.remove_origin(origin)
            self._log.info("event=file_removed file=%s", origin)
        return changed

    async def run(self) -> None:
        if not self._dir.is_dir():
            self._log.error("event=config_dir_missing dir=%s", self._dir)
        self.scan()
        self._store.mark_loaded()
        while True:
            await self._clock.sleep(self._interval)
            self.scan()
