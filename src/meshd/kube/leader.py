"""Leader election on a `coordination.k8s.io/v1` Lease, as client-go's leaderelection does it.

One replica holds the Lease and renews it every `duration/2`; the others read it every `retry`
and take it over once it has not changed for a whole `leaseDurationSeconds` (measured on their
own clock, so clock skew between replicas does not matter) or as soon as it is released. Every
write carries the resourceVersion it read (optimistic concurrency): a 409 means someone else
wrote first, and the Lease is read again.

A leader whose renewals keep failing stops leading at its renew deadline (2/3 of the duration
after its last successful renewal), before any other replica may take over. `is_leader` is
computed from that deadline, so a write guarded by it stops on time even while a renewal hangs.
Serving xDS never looks at any of this: only writers (status, ...) ask `is_leader`.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import secrets
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from meshd.clock import Clock


class LeaseConflict(Exception):
    """The Lease changed (or appeared) since it was read: 409."""


class LeaseLock(Protocol):
    """Where the Lease lives. `get` returns None when it does not exist."""

    async def get(self) -> dict[str, Any] | None: ...

    async def create(self, lease: dict[str, Any]) -> dict[str, Any]: ...

    async def replace(self, lease: dict[str, Any]) -> dict[str, Any]: ...


@dataclass(frozen=True)
class LeaseConfig:
    name: str
    namespace: str
    identity: str
    duration_s: float = 30.0

    @property
    def renew_interval_s(self) -> float:
        return self.duration_s / 2

    @property
    def renew_deadline_s(self) -> float:
        return self.duration_s * 2 / 3

    @property
    def retry_s(self) -> float:
        return max(self.duration_s / 10, 0.05)


def default_identity(hostname: str | None = None) -> str:
    """Pod name (the hostname in a pod) plus a random suffix, so a restarted pod is a new holder."""
    return f"{hostname or socket.gethostname()}_{secrets.token_hex(4)}"


def micro_time(when: datetime.datetime) -> str:
    """Kubernetes MicroTime: RFC 3339 with microseconds, in UTC."""
    return when.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _utcnow() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


class LeaderElector:
    def __init__(
        self,
        *,
        config: LeaseConfig,
        lock: LeaseLock,
        clock: Clock,
        log: logging.Logger,
        on_change: Callable[[bool], None] | None = None,
        wall: Callable[[], datetime.datetime] = _utcnow,
        request_timeout_s: float | None = None,
    ) -> None:
        self.config = config
        self._lock, self._clock, self._log, self._wall = lock, clock, log, wall
        self._on_change = on_change
        self._timeout = request_timeout_s or max(config.retry_s, 1.0)
        self._leading = False
        self._leader_until = 0.0  # monotonic: leadership ends here unless renewed
        self._observed_rv: str | None = None
        self._observed_at = 0.0
        self.holder: str = ""  # last holder seen in the Lease
        self.transitions = 0  # how many times this elector gained leadership

    @property
    def is_leader(self) -> bool:
        return self._leading and self._clock.now() < self._leader_until

    def _set_leading(self, leading: bool, reason: str) -> None:
        if leading == self._leading:
            return
        self._leading = leading
        if leading:
            self.transitions += 1
        self._log.info(
            "event=%s lease=%s/%s identity=%s reason=%s",
            "leader_elected" if leading else "leader_lost",
            self.config.namespace,
            self.config.name,
            self.config.identity,
            reason,
        )
        if self._on_change is not None:
            self._on_change(leading)

    async def run(self) -> None:
        """Acquire, renew, retry; on cancellation (clean shutdown) release the Lease if held."""
        try:
            while True:
                started = self._clock.now()
                try:
                    # (asyncio.timeout, not wait_for: on Python 3.11 wait_for can swallow a cancellation that
                    # arrives as the attempt completes, and the elector would then never stop)
                    async with asyncio.timeout(self._timeout):
                        acquired = await self._try_acquire_or_renew()
                except Exception as exc:  # API down, 5xx, timeout: retried, stepping down at the deadline
                    self._log.warning(
                        "event=lease_error lease=%s/%s error=%s",
                        self.config.namespace,
                        self.config.name,
                        _describe(exc),
                    )
                    acquired = False
                now = self._clock.now()
                if acquired:
                    self._leader_until = started + self.config.renew_deadline_s
                    self._set_leading(True, "acquired" if not self._leading else "renewed")
                    await self._clock.sleep(max(started + self.config.renew_interval_s - now, 0.01))
                    continue
                if self._leading and (self.holder not in ("", self.config.identity) or now >= self._leader_until):
                    self._set_leading(False, "held by " + self.holder if now < self._leader_until else "deadline")
                wait = self.config.retry_s
                if self._leading:  # wake up at the deadline at the latest, to step down on time
                    wait = min(wait, max(self._leader_until - now, 0.01))
                await self._clock.sleep(wait)
        finally:
            if self._leading:
                self._leader_until = 0.0
                self._set_leading(False, "shutdown")
                await asyncio.shield(self._release())

    async def _try_acquire_or_renew(self) -> bool:
        """One attempt; a 409 re-reads the Lease once at once (someone wrote between our read and write)."""
        for attempt in range(2):
            try:
                return await self._attempt()
            except LeaseConflict:
                self._log.info(
                    "event=lease_conflict lease=%s/%s attempt=%d", self.config.namespace, self.config.name, attempt
                )
        return False

    async def _attempt(self) -> bool:
        lease = await self._lock.get()
        now_wall = micro_time(self._wall())
        me = self.config.identity
        if lease is None:
            self.holder = me
            await self._lock.create(self._new_lease(now_wall))
            return True
        spec = dict(lease.get("spec") or {})
        holder = str(spec.get("holderIdentity") or "")
        self.holder = holder
        rv = str((lease.get("metadata") or {}).get("resourceVersion", ""))
        if rv != self._observed_rv:
            self._observed_rv, self._observed_at = rv, self._clock.now()
        duration = float(spec.get("leaseDurationSeconds") or self.config.duration_s)
        if holder and holder != me and self._clock.now() < self._observed_at + duration:
            return False  # someone else holds an unexpired lease
        if holder != me:
            spec["acquireTime"] = now_wall
            spec["leaseTransitions"] = int(spec.get("leaseTransitions") or 0) + 1
        spec.update(
            holderIdentity=me,
            leaseDurationSeconds=round(self.config.duration_s),
            renewTime=now_wall,
        )
        updated = await self._lock.replace({**lease, "spec": spec})
        self.holder = me
        self._observed_rv = str((updated.get("metadata") or {}).get("resourceVersion", ""))
        self._observed_at = self._clock.now()
        return True

    def _new_lease(self, now_wall: str) -> dict[str, Any]:
        return {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {"name": self.config.name, "namespace": self.config.namespace},
            "spec": {
                "holderIdentity": self.config.identity,
                "leaseDurationSeconds": round(self.config.duration_s),
                "acquireTime": now_wall,
                "renewTime": now_wall,
                "leaseTransitions": 0,
            },
        }

    async def _release(self) -> None:
        """Give the Lease up so another replica takes over at its next retry, not after a TTL."""
        try:
            async with asyncio.timeout(self._timeout):
                lease = await self._lock.get()
                if lease is None or (lease.get("spec") or {}).get("holderIdentity") != self.config.identity:
                    return
                spec = {**lease["spec"], "holderIdentity": "", "leaseDurationSeconds": 1}
                spec["renewTime"] = micro_time(self._wall())
                await self._lock.replace({**lease, "spec": spec})
            self._log.info("event=lease_released lease=%s/%s", self.config.namespace, self.config.name)
        except Exception as exc:  # best effort: the lease expires anyway
            self._log.warning(
                "event=lease_release_failed lease=%s/%s error=%s",
                self.config.namespace,
                self.config.name,
                _describe(exc),
            )


def _describe(exc: BaseException) -> str:
    status = getattr(exc, "status", None)
    return f"{type(exc).__name__}({status})" if status else f"{type(exc).__name__}: {exc}"[:200]
