"""The fake API server's object store: one resourceVersion counter for everything (as etcd's
revision), a bounded event history that watches resume from, and the write semantics of the real
API server (uid, generation, optimistic concurrency, status subresource)."""

from __future__ import annotations

import asyncio
import copy
import datetime
import uuid
from dataclasses import dataclass, field
from typing import Any

from tests.kubeapi.kinds import Kind

Obj = dict[str, Any]


class ApiError(Exception):
    """A failure the API server answers with a `Status` object."""

    def __init__(self, code: int, reason: str, message: str, *, details: Obj | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason
        self.message = message
        self.details = details or {}

    def status(self) -> Obj:
        return status_object(self.code, self.reason, self.message, self.details)


def status_object(code: int, reason: str, message: str, details: Obj | None = None) -> Obj:
    body: Obj = {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }
    if details:
        body["details"] = details
    return body


@dataclass
class Event:
    rv: int
    kind: Kind
    type: str  # ADDED, MODIFIED, DELETED
    obj: Obj


@dataclass(eq=False)
class Watcher:
    kind: Kind
    namespace: str | None
    match: Any  # Callable[[Obj], bool]: label/field selectors
    queue: asyncio.Queue[Event | str] = field(default_factory=asyncio.Queue)

    def offer(self, event: Event) -> None:
        if event.kind.key != self.kind.key:
            return
        meta = event.obj["metadata"]
        if self.namespace and meta.get("namespace") != self.namespace:
            return
        if self.match(event.obj):
            self.queue.put_nowait(event)


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _spec_part(obj: Obj) -> Obj:
    return {k: v for k, v in obj.items() if k not in ("metadata", "status", "apiVersion", "kind")}


class ObjectStore:
    def __init__(self, *, history_limit: int = 10_000) -> None:
        self.rv = 100
        self.horizon = 0  # a watch may resume from any resourceVersion >= horizon
        self.history: list[Event] = []
        self.history_limit = history_limit
        self.objects: dict[tuple[str, str], dict[tuple[str, str], Obj]] = {}
        self.watchers: set[Watcher] = set()

    def _bucket(self, kind: Kind) -> dict[tuple[str, str], Obj]:
        return self.objects.setdefault(kind.key, {})

    def _record(self, kind: Kind, type_: str, obj: Obj) -> None:
        event = Event(self.rv, kind, type_, copy.deepcopy(obj))
        self.history.append(event)
        if len(self.history) > self.history_limit:
            dropped = self.history[: len(self.history) - self.history_limit]
            del self.history[: len(dropped)]
            self.horizon = dropped[-1].rv
        for watcher in list(self.watchers):
            watcher.offer(event)

    def _next_rv(self) -> str:
        self.rv += 1
        return str(self.rv)

    def compact(self) -> None:
        """Forget every event so far: resuming a watch from an older resourceVersion is now 410."""
        self.history.clear()
        self.horizon = self.rv

    def get(self, kind: Kind, namespace: str, name: str) -> Obj | None:
        return self._bucket(kind).get((namespace if kind.namespaced else "", name))

    def list(self, kind: Kind, namespace: str | None = None) -> list[Obj]:
        bucket = self._bucket(kind)
        return [bucket[key] for key in sorted(bucket) if not namespace or key[0] == namespace]

    def create(self, kind: Kind, obj: Obj) -> Obj:
        obj = copy.deepcopy(obj)
        meta = obj.setdefault("metadata", {})
        if not meta.get("name") and meta.get("generateName"):
            meta["name"] = meta["generateName"] + uuid.uuid4().hex[:5]
        name = meta.get("name")
        if not name:
            raise ApiError(422, "Invalid", f"{kind.kind}: metadata.name: Required value")
        if kind.namespaced:
            meta.setdefault("namespace", "default")
        else:
            meta.pop("namespace", None)
        key = (meta.get("namespace", ""), name)
        bucket = self._bucket(kind)
        if key in bucket:
            raise ApiError(
                409,
                "AlreadyExists",
                f'{kind.plural}{"." + kind.group if kind.group else ""} "{name}" already exists',
                details={"name": name, "group": kind.group, "kind": kind.plural},
            )
        meta.pop("resourceVersion", None)
        meta["uid"] = str(uuid.uuid4())
        meta["creationTimestamp"] = _now()
        meta["generation"] = 1
        meta["resourceVersion"] = self._next_rv()
        bucket[key] = obj
        self._record(kind, "ADDED", obj)
        return obj

    def _current(self, kind: Kind, namespace: str, name: str) -> Obj:
        current = self.get(kind, namespace, name)
        if current is None:
            raise ApiError(
                404,
                "NotFound",
                f'{kind.plural}{"." + kind.group if kind.group else ""} "{name}" not found',
                details={"name": name, "group": kind.group, "kind": kind.plural},
            )
        return current

    @staticmethod
    def _check_rv(kind: Kind, current: Obj, wanted: str | None) -> None:
        if wanted and wanted != current["metadata"]["resourceVersion"]:
            name = current["metadata"]["name"]
            raise ApiError(
                409,
                "Conflict",
                f'Operation cannot be fulfilled on {kind.plural} "{name}": the object has been modified; '
                "please apply your changes to the latest version and try again",
                details={"name": name, "group": kind.group, "kind": kind.plural},
            )

    def update(self, kind: Kind, obj: Obj, *, subresource: str = "") -> Obj:
        """PUT: replace the object (or only its status); `metadata.resourceVersion` is a precondition."""
        meta = obj.get("metadata") or {}
        namespace = meta.get("namespace", "") if kind.namespaced else ""
        current = self._current(kind, namespace, meta.get("name", ""))
        self._check_rv(kind, current, meta.get("resourceVersion"))
        if subresource == "status":
            new = copy.deepcopy(current)
            if "status" in obj:
                new["status"] = copy.deepcopy(obj["status"])
            else:
                new.pop("status", None)
        else:
            new = copy.deepcopy(obj)
            if kind.status:  # the main resource ignores status when a status subresource exists
                if "status" in current:
                    new["status"] = copy.deepcopy(current["status"])
                else:
                    new.pop("status", None)
            new_meta = new.setdefault("metadata", {})
            for fixed in ("uid", "creationTimestamp", "namespace", "name", "generation", "deletionTimestamp"):
                if fixed in current["metadata"]:
                    new_meta[fixed] = current["metadata"][fixed]
            if _spec_part(new) != _spec_part(current):
                new_meta["generation"] = current["metadata"].get("generation", 1) + 1
        if new == current:
            return current  # a no-op write does not move the resourceVersion (as the real server)
        new["metadata"]["resourceVersion"] = self._next_rv()
        self._bucket(kind)[(namespace, current["metadata"]["name"])] = new
        self._record(kind, "MODIFIED", new)
        return new

    def delete(self, kind: Kind, namespace: str, name: str, *, preconditions: Obj | None = None) -> Obj:
        namespace = namespace if kind.namespaced else ""
        current = self._current(kind, namespace, name)
        preconditions = preconditions or {}
        if preconditions.get("uid") and preconditions["uid"] != current["metadata"]["uid"]:
            raise ApiError(
                409,
                "Conflict",
                f"Precondition failed: UID in precondition: {preconditions['uid']}, "
                f"UID in object meta: {current['metadata']['uid']}",
            )
        self._check_rv(kind, current, preconditions.get("resourceVersion"))
        del self._bucket(kind)[(namespace, name)]
        gone = copy.deepcopy(current)
        gone["metadata"]["resourceVersion"] = self._next_rv()
        self._record(kind, "DELETED", gone)
        return gone

    def drop_kind(self, kind: Kind) -> None:
        """A CRD was removed: its objects vanish without events (watches on it are closed)."""
        self.objects.pop(kind.key, None)
