"""Watch a directory of YAML files (standalone mode): added, changed and deleted files replace what
each file contributes to the store. Changes arrive as file events (inotify, through watchfiles), or
by polling where events are unavailable. Invalid input is logged and skipped; a file over the size
limit is refused (what it contributed before stays). Reading and parsing run in a worker thread, so
ADS and /ready never wait on a large file (the GIL is shared, but handed over every few ms)."""

from __future__ import annotations

import asyncio
import functools
import hashlib
import logging
import pathlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import watchfiles

from meshd.api.meta import InvalidResource
from meshd.api.proxyconfig import STANDALONE_REFUSAL
from meshd.clock import Clock
from meshd.model.store import ConfigStore
from meshd.sources.yaml_file import FileResult, parse_file, refuse_kinds

SUFFIXES = (".yaml", ".yml", ".json")
# kinds that act only in Kubernetes mode: refused here, naming why
STANDALONE_REFUSED = {"ProxyConfig": STANDALONE_REFUSAL}
MAX_FILE_BYTES = 16 * 1024 * 1024


@dataclass(frozen=True)
class _Loaded:
    origin: str
    result: FileResult


@dataclass(frozen=True)
class _Forget:
    origin: str


_Step = _Loaded | _Forget


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
        max_file_bytes: int = MAX_FILE_BYTES,
    ) -> None:
        self._max_bytes = max_file_bytes
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

    # The work is split in two: planning (stat, read, parse: slow for a large file, so run in a worker
    # thread by run()) and applying the plan to the store (on the event loop).

    def scan(self) -> bool:
        """One pass over the whole directory; returns True if the store changed."""
        return self._apply(self._plan_scan())

    def rescan(self, paths: Iterable[str]) -> bool:
        """Look again at just these paths (from file events): load, reload or forget each."""
        return self._apply(self._plan_paths(paths))

    def on_events(self, paths: list[str]) -> bool:
        return self._apply(self._plan_events(paths))

    async def _off_loop(self, plan: Callable[[], list[_Step]]) -> bool:
        return self._apply(await asyncio.to_thread(plan))

    def _plan_scan(self) -> list[_Step]:
        files = self._files()
        seen = {str(path) for path in files}
        steps = [step for path in files if (step := self._plan_load(path)) is not None]
        return steps + [_Forget(origin) for origin in sorted(set(self._digests) - seen) if self._drop(origin)]

    def _plan_paths(self, paths: Iterable[str]) -> list[_Step]:
        steps: list[_Step] = []
        for name in sorted(set(paths)):
            path = pathlib.Path(name)
            if path.suffix not in SUFFIXES:
                continue
            if path.is_file():
                if (step := self._plan_load(path)) is not None:
                    steps.append(step)
            elif self._drop(str(path)):
                steps.append(_Forget(str(path)))
        return steps

    def _plan_events(self, paths: list[str]) -> list[_Step]:
        """Files named by events are looked at again; a directory event means a full scan."""
        if any(name == str(self._dir) or pathlib.Path(name).is_dir() for name in paths):
            return self._plan_scan()
        if any(name in self._subdirs for name in paths):
            return self._plan_scan()  # a known directory vanished (or was renamed)
        return self._plan_paths(paths)

    def _plan_load(self, path: pathlib.Path) -> _Step | None:
        origin = str(path)
        try:
            stat = path.stat()
            signature = (stat.st_mtime_ns, stat.st_size, stat.st_ino)
            if self._stats.get(origin) == signature and origin in self._digests:
                return None
            self._stats[origin] = signature
            with path.open("rb") as f:
                data = f.read(self._max_bytes + 1)
        except OSError as exc:
            self._log.warning("event=file_unreadable file=%s error=%s", origin, exc)
            return None
        digest = hashlib.sha256(data).hexdigest()
        if self._digests.get(origin) == digest:
            return None
        self._digests[origin] = digest
        if len(data) > self._max_bytes:
            message = f"file larger than {self._max_bytes} bytes (--max-config-file-bytes): not read"
            error = InvalidResource(None, "<file>", message, origin)
            return _Loaded(origin, FileResult({}, [error], malformed=True))
        result = parse_file(data.decode("utf-8", errors="replace"), origin=origin)
        return _Loaded(origin, refuse_kinds(result, STANDALONE_REFUSED, origin=origin))

    def _drop(self, origin: str) -> bool:
        if origin not in self._digests:
            return False
        del self._digests[origin]
        self._stats.pop(origin, None)
        return True

    def _apply(self, steps: list[_Step]) -> bool:
        changed = False
        for step in steps:
            if isinstance(step, _Forget):
                self._log.info("event=file_removed file=%s", step.origin)
                changed |= self._store.remove_origin(step.origin)
                continue
            origin, result = step.origin, step.result
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
            changed |= result.apply(self._store, origin=origin)
        return changed

    async def run(self) -> None:
        if not self._dir.is_dir():
            self._log.error("event=config_dir_missing dir=%s", self._dir)
        await self._off_loop(self._plan_scan)
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
            await self._off_loop(self._plan_scan)

    async def _watch_events(self) -> None:
        """File events (inotify via watchfiles): no work at all while nothing changes."""
        stop = asyncio.Event()
        try:
            async for events in watchfiles.awatch(
                self._dir, watch_filter=None, debounce=50, step=5, rust_timeout=500, stop_event=stop
            ):
                await self._off_loop(functools.partial(self._plan_events, [name for _, name in events]))
        finally:
            stop.set()
