"""Status writer: Istio-style status on the `/status` subresource of the Istio objects meshd holds, and the
Gateway API's own status (`model/gateway_api/status.py`) on the GatewayClasses, Gateways and HTTPRoutes meshd
handles.

While this replica leads, every `interval` it computes what each object's status should be
(`status_message.desired_messages` from the objects in the store and the errors meshd reports)
and visits only the objects whose verdict or resourceVersion changed since it last handled them.
A visit reads the object, renders the status against the one already there and writes only if
they differ, replacing the object with the resourceVersion it read: a 409 (someone changed the
object meanwhile) is never overwritten; the object is read again at a later round, with a
per-object backoff that also covers API errors. Gaining leadership forgets what was handled, so
a new leader checks everything once.

An Istio object's first visit reads it from the informers' cache (`cached`) instead of the API
server when the cache holds it in the version written to: a status that is already right then
costs no request at all (a restart or a new leader over a settled cluster), and one that is not
is written with the cached resourceVersion (a 409 sends the next try to the API server). Visits
that call the API server are paced (`max_visits` a round), so that a bulk of statuses (a new
install, a thousand objects applied at once) never competes with proxies' pushes for the API
server and the event loop; the rest wait for the next rounds.
"""

from __future__ import annotations

import datetime
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from kubernetes_asyncio import client
from kubernetes_asyncio.client.exceptions import ApiException

from meshd.api.meta import GATEWAY_API_GROUP, InvalidResource, ResourceKey
from meshd.clock import Clock
from meshd.kube.status_message import ISTIO_KINDS, KIND_VERSIONS, Message, desired_messages, render_status
from meshd.model.gateway_api.status import STATUS_KINDS, STATUS_VERSIONS, ApiStatus, desired_statuses, render_api_status
from meshd.model.store import ConfigStore

Desired = tuple[Message, ...] | ApiStatus  # an Istio object's messages, or a Gateway API object's status


# The other kinds a Gateway API object's status depends on (grants, namespaces, backends, certificates, pods).
_GATEWAY_API_INPUTS = ("ReferenceGrant", "Namespace", "Service", "Secret", "Pod", "ConfigMap")


class StatusConflict(Exception):
    """The object changed since it was read (409)."""


class StatusApi(Protocol):
    async def preferred_version(self, group: str) -> str | None: ...

    async def get(self, group: str, version: str, plural: str, namespace: str, name: str) -> dict[str, Any] | None: ...

    async def replace_status(
        self, group: str, version: str, plural: str, namespace: str, name: str, body: dict[str, Any]
    ) -> dict[str, Any]: ...


class KubeStatusApi:
    """StatusApi over kubernetes-asyncio's custom objects API."""

    def __init__(self, api: client.ApiClient) -> None:
        self._custom = client.CustomObjectsApi(api)
        self._apis = client.ApisApi(api)

    async def preferred_version(self, group: str) -> str | None:
        groups = await self._apis.get_api_versions()
        for item in groups.groups or []:
            if item.name == group and item.preferred_version is not None:
                return str(item.preferred_version.version)
        return None

    async def get(self, group: str, version: str, plural: str, namespace: str, name: str) -> dict[str, Any] | None:
        """`namespace` "": a cluster-scoped object (GatewayClass)."""
        try:
            if namespace:
                obj: dict[str, Any] = await self._custom.get_namespaced_custom_object(
                    group, version, namespace, plural, name
                )
            else:
                obj = await self._custom.get_cluster_custom_object(group, version, plural, name)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
        return obj

    async def replace_status(
        self, group: str, version: str, plural: str, namespace: str, name: str, body: dict[str, Any]
    ) -> dict[str, Any]:
        try:
            if namespace:
                out: dict[str, Any] = await self._custom.replace_namespaced_custom_object_status(
                    group, version, namespace, plural, name, body
                )
            else:
                out = await self._custom.replace_cluster_custom_object_status(group, version, plural, name, body)
        except ApiException as exc:
            if exc.status == 409:
                raise StatusConflict(name) from None
            raise
        return out


class _Paced(Exception):
    """A visit that would call the API server when this round's budget is spent."""


@dataclass
class _Budget:
    """Visits that may still call the API server this round."""

    left: int

    def take(self) -> bool:
        if self.left <= 0:
            return False
        self.left -= 1
        return True


@dataclass
class _Retry:
    at: float
    delay: float


def _utcnow() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


class StatusWriter:
    def __init__(
        self,
        *,
        api: StatusApi,
        store: ConfigStore,
        errors: Callable[[], list[InvalidResource]],
        is_leader: Callable[[], bool],
        clock: Clock,
        settled: Callable[[], bool] = lambda: True,
        log: logging.Logger,
        interval_s: float = 1.0,
        max_backoff_s: float = 30.0,
        recheck_rejected_s: float = 30.0,
        wall: Callable[[], datetime.datetime] = _utcnow,
        domain_suffix: str = "cluster.local",
        cached: Callable[[ResourceKey], dict[str, Any] | None] = lambda _: None,
        max_visits: int = 100,
    ) -> None:
        self._cached, self._max_visits = cached, max_visits
        self._domain_suffix = domain_suffix
        self._api, self._store, self._errors, self._is_leader = api, store, errors, is_leader
        self._settled = settled
        self._recheck_rejected = recheck_rejected_s
        self._clock, self._log, self._interval, self._max_backoff, self._wall = (
            clock,
            log,
            interval_s,
            max_backoff_s,
            wall,
        )
        # key -> (resourceVersions that need no visit, messages) when handled, and when: the store's
        # version then, and the one the object had after our write (the informer brings it next)
        self._handled: dict[ResourceKey, tuple[frozenset[str], Desired]] = {}
        self._handled_at: dict[ResourceKey, float] = {}
        self._retry: dict[ResourceKey, _Retry] = {}
        self._versions: dict[str, str] = {}  # API group -> version to use for objects not in the store
        # a round that ended with nothing left to do: (the store's updates, the errors) it saw, and when an
        # object meshd rejected is due to be read again. While both hold, a round would visit nothing: skipped.
        self._idle: tuple[int, list[InvalidResource]] | None = None
        self._next_recheck = math.inf
        self.skipped = 0
        self.writes = 0
        self.conflicts = 0
        self.rounds = 0
        self.requests = 0  # requests to the API server (reads and writes)

    def leadership_changed(self, leading: bool) -> None:
        """A new term starts from scratch: statuses may have changed while another replica led."""
        self._handled.clear()
        self._handled_at.clear()
        self._retry.clear()
        self._idle = None

    async def run(self) -> None:
        while True:
            if self._is_leader():
                try:
                    await self.sync_once()
                except Exception as exc:  # never let one bad round stop status writing
                    self._log.warning("event=status_round_failed error=%s", exc)
            self.rounds += 1
            await self._clock.sleep(self._interval)

    def _targets(
        self, errors: list[InvalidResource]
    ) -> tuple[dict[ResourceKey, Desired], dict[ResourceKey, tuple[str, str]]]:
        """Desired status per object, and (apiVersion, resourceVersion) of the objects in the store."""
        held = {
            r.key: (r.api_version, r.metadata.resource_version)
            for kind in (*ISTIO_KINDS, *STATUS_KINDS)
            for r in self._store.of_kind(kind)  # (not the Pods, Services and EndpointSlices)
        }
        desired: dict[ResourceKey, Desired] = dict(
            desired_messages(objects=[k for k in held if k.kind in ISTIO_KINDS], errors=errors)
        )
        gateway_api = [r for kind in STATUS_KINDS for r in self._store.of_kind(kind)]
        if gateway_api:  # what their status reads besides themselves
            gateway_api += [r for kind in _GATEWAY_API_INPUTS for r in self._store.of_kind(kind)]
        desired.update(desired_statuses(gateway_api, errors=errors, domain_suffix=self._domain_suffix))
        return desired, held

    async def sync_once(self) -> int:
        """One round; returns how many objects were visited. Skipped while the errors lag behind the
        store (a push not yet built), so a verdict is never written and reverted a moment later."""
        if not self._settled():
            return 0
        errors = self._errors()
        stamp = (self._store.updates, errors)
        if self._idle is not None and self._idle == stamp and self._clock.now() < self._next_recheck:
            self.skipped += 1  # what every status depends on is as the last round left it, all handled
            return 0
        self._idle = None
        desired, held = self._targets(errors)
        for key in [k for k in self._handled if k not in desired]:
            del self._handled[key]
            self._handled_at.pop(key, None)
            self._retry.pop(key, None)
        visited, paced = 0, False
        budget = _Budget(self._max_visits)
        for key, messages in desired.items():
            api_version, store_rv = held.get(key, ("", ""))
            handled = self._handled.get(key)
            if handled and store_rv in handled[0] and handled[1] == messages and not self._recheck_due(key, held):
                continue
            retry = self._retry.get(key)
            if retry is not None and self._clock.now() < retry.at:
                continue
            if not self._is_leader():
                return visited
            cached = None if key in self._retry else self._cached_object(key, messages, api_version)
            try:
                seen_rv = await self._visit(key, messages, api_version, cached=cached, budget=budget)
            except _Paced:
                paced = True
                continue  # the next round
            except StatusConflict:
                visited += 1
                self.conflicts += 1
                self._log.info("event=status_conflict resource=%s action=reread_later", key)
                self._backoff(key)
                continue
            except Exception as exc:
                visited += 1
                self._log.warning("event=status_write_failed resource=%s error=%s", key, _describe(exc))
                self._backoff(key)
                continue
            visited += 1
            self._handled[key] = (frozenset({store_rv, seen_rv}), messages)
            self._handled_at[key] = self._clock.now()
            self._retry.pop(key, None)
        if not paced and not self._retry:
            self._idle = stamp
            rejected = [self._handled_at.get(k, 0.0) for k in desired if k not in held]
            self._next_recheck = min(rejected, default=math.inf) + self._recheck_rejected
        return visited

    def _cached_object(self, key: ResourceKey, messages: Desired, api_version: str) -> dict[str, Any] | None:
        """The informers' copy of an Istio object, when it is in the version of the store's copy (any version
        of its group the informer watched, for an object meshd rejected)."""
        if isinstance(messages, ApiStatus) or key.kind not in ISTIO_KINDS:
            return None
        obj = self._cached(key)
        if obj is None:
            return None
        group, _ = ISTIO_KINDS[key.kind]
        version = str(obj.get("apiVersion") or "")
        if (api_version and version != api_version) or not version.startswith(f"{group}/"):
            return None
        return obj

    def _recheck_due(self, key: ResourceKey, held: dict[ResourceKey, tuple[str, str]]) -> bool:
        """An object meshd rejected outright is not in the store, so an edit that keeps the same
        error goes unseen there: such objects are read again now and then (observedGeneration)."""
        return key not in held and self._clock.now() - self._handled_at.get(key, 0.0) >= self._recheck_rejected

    def _backoff(self, key: ResourceKey) -> None:
        previous = self._retry.get(key)
        delay = min(previous.delay * 2, self._max_backoff) if previous else self._interval
        self._retry[key] = _Retry(at=self._clock.now() + delay, delay=delay)

    async def _version(self, group: str, api_version: str) -> str | None:
        if api_version.startswith(group + "/"):
            return api_version.split("/", 1)[1]
        if group not in self._versions:
            version = await self._api.preferred_version(group)
            if version is None:
                return None
            self._versions[group] = version
        return self._versions[group]

    async def _visit(
        self,
        key: ResourceKey,
        messages: Desired,
        api_version: str,
        *,
        cached: dict[str, Any] | None = None,
        budget: _Budget | None = None,
    ) -> str:
        """Read (or take `cached`), render, write if different; returns the object's resourceVersion
        afterwards. Raises _Paced, having called nothing, when it would call the API server and `budget`
        is spent."""
        pins = KIND_VERSIONS
        if isinstance(messages, ApiStatus):
            group, plural, pins = GATEWAY_API_GROUP, STATUS_KINDS[key.kind], STATUS_VERSIONS
        else:
            group, plural = ISTIO_KINDS[key.kind]
        pinned = f"{group}/{pins[key.kind]}" if key.kind in pins else ""
        if cached is not None:
            version: str | None = str(cached["apiVersion"]).split("/", 1)[1]
            obj: dict[str, Any] | None = cached
        else:
            version = await self._version(group, api_version or pinned)
            if version is None:
                return ""  # the CRD is not served: nothing to write on
            if budget is not None and not budget.take():
                raise _Paced
            self.requests += 1
            obj = await self._api.get(group, version, plural, key.namespace, key.name)
        assert version is not None
        if obj is None:
            return ""  # not in the cluster (deleted meanwhile, or a file in standalone mode)
        meta = obj.get("metadata") or {}
        current = obj.get("status") if isinstance(obj.get("status"), dict) else None
        generation = int(meta.get("generation") or 0)
        if isinstance(messages, ApiStatus):
            status = render_api_status(key, messages, obj=obj, generation=generation, now=self._wall())
            if status is None:
                return str(meta.get("resourceVersion", ""))  # another controller's object
        else:
            status = render_status(messages, generation=generation, previous=current, now=self._wall())
        read_rv = str(meta.get("resourceVersion", ""))
        if status == current or not self._is_leader():  # (leadership may have ended while reading)
            return read_rv
        if cached is not None and budget is not None and not budget.take():
            raise _Paced  # (a visit that read the object has its turn already)
        self.requests += 1
        written = await self._api.replace_status(
            group, version, plural, key.namespace, key.name, {**obj, "status": status}
        )
        self.writes += 1
        self._log.info(
            "event=status_written resource=%s accepted=%s messages=%d generation=%s",
            key,
            not messages if not isinstance(messages, ApiStatus) else not messages.refused,
            len(messages) if not isinstance(messages, ApiStatus) else int(bool(messages.refused)),
            meta.get("generation"),
        )
        return str((written.get("metadata") or {}).get("resourceVersion", ""))


def _describe(exc: BaseException) -> str:
    status = getattr(exc, "status", None)
    return f"{type(exc).__name__}({status})" if status else f"{type(exc).__name__}: {exc}"[:200]
