"""Watch a directory of YAML files (standalone mode): added, changed and deleted files replace what
each file contributes to the store. Changes arrive as file events (inotify, through watchfiles), or
by polling where events are unavailable. Invalid input is logged and skipped."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import pathlib
from collections.abc import Iterable

import watchfiles

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
        watch: str = "events",
    ) -> None:
        self._watch = watch  # "events" (inotify) or "poll"
        self._subdirs: set[str] = set()
        self._dir = directory
        self._store = store
        self._clock = clock
        self._interval = interval_s
        self._log = log
        self._digests: dict[str, str] = {}
        self._stats: dict[str, tuple[int, int, int]] = {}  # origin -> (mtime_ns, size, inode): skip unchanged files

    def _files(self) -> list[pathlib.Path]:
        if not self._dir.is_dir():
            return []
        entries = list(self._dir.rglob("*"))
        self._subdirs = {str(p) for p in entries if p.is_dir()}
        return sorted(p for p in entries if p.suffix in SUFFIXES and p.is_file())

    def scan(self) -> bool:
        """One pass over the whole directory; returns True if the store changed."""
        files = self._files()
        seen = {str(path) for path in files}
        changed = False
        for path in files:
            changed |= self._load(path)
        for origin in sorted(set(self._digests) - seen):
            changed |= self._forget(origin)
        return changed

    def rescan(self, paths: Iterable[str]) -> bool:
        """Look again at just these paths (from file events): load, reload or forget each."""
        changed = False
        for name in sorted(set(paths)):
            path = pathlib.Path(name)
            if path.suffix not in SUFFIXES:
                continue
            changed |= self._load(path) if path.is_file() else self._forget(str(path))
        return changed

    def on_events(self, paths: list[str]) -> bool:
        """Files named by events are looked at again; a directory event means a full scan."""
        if any(name == str(self._dir) or pathlib.Path(name).is_dir() for name in paths):
            return self.scan()
        if any(name in self._subdirs for name in paths):
            return self.scan()  # a known directory vanished (or was renamed)
        return self.rescan(paths)

    def _load(self, path: pathlib.Path) -> bool:
        origin = str(path)
        try:
            stat = path.stat()
            signature = (stat.st_mtime_ns, stat.st_size, stat.st_ino)
            if self._stats.get(origin) == signature and origin in self._digests:
                return False
            self._stats[origin] = signature
            data = path.read_bytes()
        except OSError as exc:
            self._log.warning("event=file_unreadable file=%s error=%s", origin, exc)
            return False
        digest = hashlib.sha256(data).hexdigest()
        if self._digests.get(origin) == digest:
            return False
        self._digests[origin] = digest
        result = parse_file(data.decode("utf-8", errors="replace"), origin=origin)
        for err in result.errors:
            self._log.error(
                "event=invalid_resource file=%s resource=%s field=%s message=%r",
                origin,
                err.key or "-",
                err.field,
                err.message,
            )
        self._log.info(
            "event=file_loaded file=%s resources=%d errors=%d", origin, len(result.resources), len(result.errors)
        )
        return result.apply(self._store, origin=origin)

    def _forget(self, origin: str) -> bool:
        if origin not in self._digests:
            return False
        del self._digests[origin]
        self._stats.pop(origin, None)
        self._log.info("event=file_removed file=%s", origin)
        return self._store.remove_origin(origin)

    async def run(self) -> None:
        if not self._dir.is_dir():
            self._log.error("event=config_dir_missing dir=%s", self._dir)
        self.scan()
        self._store.mark_loaded()
        if self._watch == "events" and self._dir.is_dir():
            try:
                self._log.info("event=watching dir=%s mode=events", self._dir)
                await self._watch_events()
                return
            except OSError as exc:  # e.g. no inotify instances left: poll instead
                self._log.warning("event=file_events_unavailable dir=%s error=%s fallback=poll", self._dir, exc)
        self._log.info("event=watching dir=%s mode=poll interval_s=%s", self._dir, self._interval)
        while True:
            await self._clock.sleep(self._interval)
            self.scan()

    async def _watch_events(self) -> None:
        """File events (inotify via watchfiles): no work at all while nothing changes."""
        stop = asyncio.Event()
        try:
            async for events in watchfiles.awatch(
                self._dir, watch_filter=None, debounce=50, step=5, rust_timeout=500, stop_event=stop
            ):
                self.on_events([name for _, name in events])
        finally:
            stop.set()
