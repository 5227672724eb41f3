"""A reflector keeps one kind's objects in sync with the API server, as client-go's does: list,
then watch from the list's resourceVersion (bookmarks on), and again from the last version seen
when a watch ends. The resourceVersion is an opaque string, only ever sent back.

- 410 Gone/Expired (an ERROR event in the stream or an HTTP 410) -> relist; the relist is diffed
  against the cache, so an object deleted while disconnected is reported DELETED (no lost delete)
  and an unchanged one reports nothing (no push storm).
- the same name with a new UID is a replacement: DELETED of the old object, then ADDED.
- any other failure (5xx, 429 with Retry-After, connection refused, a stream cut mid-event, a line
  that is not JSON, a watch that ends at once) -> exponential backoff with jitter; never a hot loop.
- a CRD kind that the cluster does not serve counts as synced and empty, is logged once and is
  looked up again every `recheck_s`; when it appears it is listed and watched.
- the first list asks for resourceVersion 0, as client-go's reflector does: the API server answers from
  its watch cache, at once and whole, instead of reading etcd page by page (616 Pods: two pages, each a
  quorum read). It may be a little behind; the watch from its resourceVersion brings what followed. A
  relist (410, a CRD gone) reads etcd: it must not go back before what was already seen.
"""

from __future__ import annotations

import json
import logging
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from meshd.clock import Clock
from meshd.kube.backoff import Backoff
from meshd.kube.discovery import served_version
from meshd.kube.kinds import KindSpec
from meshd.kube.metrics import KubeMetrics
from meshd.kube.transport import KubeApiError, Transport

Obj = dict[str, Any]
ObjKey = tuple[str, str]  # (namespace, name); namespace "" for cluster-scoped kinds
# (event type, old object, new object): ADDED (None, new), MODIFIED (old, new), DELETED (old, None)
Handler = Callable[[str, Obj | None, Obj | None], None]


@dataclass(frozen=True)
class ReflectorSettings:
    watch_timeout_s: float = 300.0  # asked of the server; each watch picks a random value up to twice this
    page_size: int = 500
    recheck_s: float = 30.0  # how often an absent CRD is looked up again
    short_watch_s: float = 1.0  # a watch that ends sooner without any event counts as a failure


def meta(obj: Obj) -> dict[str, Any]:
    m = obj.get("metadata")
    return m if isinstance(m, dict) else {}


def object_key(obj: Obj) -> ObjKey:
    m = meta(obj)
    return (str(m.get("namespace") or ""), str(m.get("name") or ""))


class Reflector:
    def __init__(
        self,
        *,
        spec: KindSpec,
        transport: Transport,
        clock: Clock,
        log: logging.Logger,
        metrics: KubeMetrics | None = None,
        settings: ReflectorSettings | None = None,
        backoff: Backoff | None = None,
        rand: random.Random | None = None,
    ) -> None:
        self.spec = spec
        self._transport = transport
        self._clock = clock
        self._log = log
        self._metrics = metrics
        self._settings = settings or ReflectorSettings()
        self._rand = rand or random.Random()
        self.backoff = backoff or Backoff(rand=self._rand)
        self._handlers: list[Handler] = []
        self._synced_callbacks: list[Callable[[], None]] = []
        self.cache: dict[ObjKey, Obj] = {}
        self.version: str | None = None  # the served API version (None: not looked up, or absent)
        self.resource_version = ""
        self.has_synced = False
        self.absent = False
        self.lists = 0
        self.relists = 0
        self.errors = 0
        self.last_error = ""
        self.delays: list[float] = []  # every backoff delay taken (bounded), for /debug/informers and tests
        self._need_list = True
        self._expired_streak = 0

    def add_handler(self, handler: Handler) -> None:
        """Handlers see every change after they are added; call before run() to see everything."""
        self._handlers.append(handler)

    def on_synced(self, callback: Callable[[], None]) -> None:
        self._synced_callbacks.append(callback)

    def status(self) -> dict[str, Any]:
        return {
            "kind": self.spec.kind,
            "apiVersion": self.spec.api_version(self.version) if self.version else None,
            "synced": self.has_synced,
            "absent": self.absent,
            "resourceVersion": self.resource_version,
            "objects": len(self.cache),
            "lists": self.lists,
            "relists": self.relists,
            "errors": self.errors,
            "lastError": self.last_error,
        }

    # -- the loop -----------------------------------------------------------------------------

    async def run(self) -> None:
        while True:
            try:
                if self.version is None:
                    self.version = await served_version(self._transport, self.spec)
                    if self.version is None:
                        self._crd_absent()
                        await self._clock.sleep(self._settings.recheck_s)
                        continue
                    if self.absent:
                        self._log.info("event=crd_appeared kind=%s version=%s", self.spec.kind, self.version)
                        self.absent = False
                        self._need_list = True
                if self._need_list:
                    await self._list()
                await self._watch()
            except KubeApiError as exc:
                await self._failed(exc)
            except Exception as exc:  # a bug or an unexpected reply must not stop the watch (or meshd)
                self._log.exception("event=reflector_failed kind=%s", self.spec.kind)
                await self._failed(KubeApiError(0, f"{type(exc).__name__}: {exc}"))

    async def _failed(self, exc: KubeApiError) -> None:
        if exc.expired:
            self._expired_streak += 1
            self._need_list = True
            self._log.info("event=watch_expired kind=%s resource_version=%s", self.spec.kind, self.resource_version)
            if self._expired_streak == 1:
                return  # relist at once; a second 410 in a row backs off like any failure
        elif exc.status == 404 and self.spec.crd and self.version is not None:
            self._log.warning("event=crd_gone kind=%s version=%s", self.spec.kind, self.version)
            self.version = None
            self._need_list = True
        self.errors += 1
        self.last_error = str(exc)
        if self._metrics is not None:
            self._metrics.watch_errors.labels(self.spec.kind).inc()
        delay = self.backoff.failure(self._clock.now(), retry_after=exc.retry_after)
        self.delays = [*self.delays[-99:], delay]
        self._log.warning(
            "event=kube_api_error kind=%s status=%d error=%r retry_in_s=%.2f",
            self.spec.kind,
            exc.status,
            str(exc),
            delay,
        )
        await self._clock.sleep(delay)

    def _crd_absent(self) -> None:
        if not self.absent:
            self._log.warning(
                "event=crd_absent kind=%s.%s recheck_s=%s", self.spec.kind, self.spec.group, self._settings.recheck_s
            )
            self.absent = True
        self._replace_all({}, resource_version="")
        self._mark_synced()

    # -- list -----------------------------------------------------------------------------------

    async def _list(self) -> None:
        assert self.version is not None
        path = self.spec.path(self.version)
        items: dict[ObjKey, Obj] = {}
        token = ""
        while True:
            query = [("limit", str(self._settings.page_size))]
            if token:
                query.append(("continue", token))
            elif not self.lists:  # the first list: from the API server's watch cache (client-go's too)
                query.append(("resourceVersion", "0"))
            if self.spec.field_selector:
                query.append(("fieldSelector", self.spec.field_selector))
            page = await self._transport.get_json(path, query)
            for item in page.get("items") or ():
                if isinstance(item, dict):
                    obj = self._typed(item)
                    items[object_key(obj)] = obj
            list_meta: dict[str, Any] = page["metadata"] if isinstance(page.get("metadata"), dict) else {}
            token = str(list_meta.get("continue") or "")
            if not token:
                resource_version = str(list_meta.get("resourceVersion") or "")
                break
        if self.lists:
            self.relists += 1
            if self._metrics is not None:
                self._metrics.relists.labels(self.spec.kind).inc()
        self.lists += 1
        self._replace_all(items, resource_version=resource_version)
        self._need_list = False
        self._log.info(
            "event=listed kind=%s version=%s objects=%d resource_version=%s relists=%d",
            self.spec.kind, self.version, len(items), resource_version, self.relists,
        )  # fmt: skip
        self._mark_synced()

    def _replace_all(self, items: dict[ObjKey, Obj], *, resource_version: str) -> None:
        """Diff a fresh list against the cache: deletes for what vanished, changes for what moved."""
        for key in sorted(self.cache.keys() - items.keys()):
            self._delete(self.cache[key])
        for key in sorted(items):
            self._upsert(items[key])
        self.resource_version = resource_version

    def _mark_synced(self) -> None:
        if self._metrics is not None:
            self._metrics.synced.labels(self.spec.kind).set(1)
            self._metrics.objects.labels(self.spec.kind).set(len(self.cache))
        if not self.has_synced:
            self.has_synced = True
            for callback in self._synced_callbacks:
                callback()

    # -- watch ----------------------------------------------------------------------------------

    async def _watch(self) -> None:
        assert self.version is not None
        timeout = int(self._settings.watch_timeout_s * (1.0 + self._rand.random()))
        query = [
            ("watch", "1"),
            ("resourceVersion", self.resource_version),
            ("allowWatchBookmarks", "true"),
            ("timeoutSeconds", str(max(1, timeout))),
        ]
        if self.spec.field_selector:
            query.append(("fieldSelector", self.spec.field_selector))
        started = self._clock.now()
        seen = 0
        async for line in self._transport.stream(self.spec.path(self.version), query, read_timeout_s=timeout + 30.0):
            self._on_line(line)
            seen += 1
            self._expired_streak = 0
            self.backoff.healthy(self._clock.now())
        if not seen and self._clock.now() - started < self._settings.short_watch_s:
            raise KubeApiError(0, "watch closed at once without any event")
        self.backoff.healthy(self._clock.now())

    def _on_line(self, line: bytes) -> None:
        try:
            event = json.loads(line)
        except ValueError:
            raise KubeApiError(0, f"watch event is not JSON: {line[:80]!r}") from None
        if not isinstance(event, dict) or not isinstance(event.get("object"), dict):
            raise KubeApiError(0, f"watch event without an object: {line[:80]!r}")
        kind, obj = event.get("type"), event["object"]
        if kind == "ERROR":
            code = obj.get("code")
            raise KubeApiError(code if isinstance(code, int) else 0, str(obj.get("message") or obj.get("reason") or ""))
        if kind == "BOOKMARK":
            pass
        elif kind in ("ADDED", "MODIFIED"):
            self._upsert(self._typed(obj))
        elif kind == "DELETED":
            self._delete(self._typed(obj))
        else:
            raise KubeApiError(0, f"unknown watch event type {kind!r}")
        rv = meta(obj).get("resourceVersion")
        if rv:
            self.resource_version = str(rv)
        if self._metrics is not None:
            self._metrics.events.labels(self.spec.kind, str(kind)).inc()
            self._metrics.objects.labels(self.spec.kind).set(len(self.cache))

    # -- cache ----------------------------------------------------------------------------------

    def _typed(self, obj: Obj) -> Obj:
        """List items of built-in kinds come without apiVersion/kind: give them the served ones. What no
        reader of the cache uses is dropped, as Istio's informers do: `metadata.managedFields` (the field
        managers of server-side apply, often as large as the object) and kubectl's last-applied copy of the
        whole object (an annotation)."""
        assert self.version is not None
        _strip_unused(obj)
        if obj.get("kind") and obj.get("apiVersion"):
            return obj
        return {**obj, "apiVersion": self.spec.api_version(self.version), "kind": self.spec.kind}

    def _upsert(self, obj: Obj) -> None:
        key = object_key(obj)
        old = self.cache.get(key)
        self.cache[key] = obj
        if old is None:
            self._emit("ADDED", None, obj)
            return
        old_meta, new_meta = meta(old), meta(obj)
        if old_meta.get("uid") and new_meta.get("uid") and old_meta["uid"] != new_meta["uid"]:
            self._emit("DELETED", old, None)  # replaced: the old object is gone
            self._emit("ADDED", None, obj)
        elif old_meta.get("resourceVersion") != new_meta.get("resourceVersion") or not new_meta.get("resourceVersion"):
            self._emit("MODIFIED", old, obj)

    def _delete(self, obj: Obj) -> None:
        old = self.cache.pop(object_key(obj), None)
        if old is not None:
            self._emit("DELETED", old, None)

    def _emit(self, kind: str, old: Obj | None, new: Obj | None) -> None:
        for handler in self._handlers:
            try:
                handler(kind, old, new)
            except Exception:  # a consumer's bug must not stop the watch
                self._log.exception("event=handler_failed kind=%s type=%s", self.spec.kind, kind)


LAST_APPLIED = "kubectl.kubernetes.io/last-applied-configuration"


def _strip_unused(obj: Obj) -> None:
    metadata = obj.get("metadata")
    if not isinstance(metadata, dict):
        return
    metadata.pop("managedFields", None)
    annotations = metadata.get("annotations")
    if isinstance(annotations, dict) and LAST_APPLIED in annotations:
        metadata["annotations"] = {k: v for k, v in annotations.items() if k != LAST_APPLIED}
