"""Leader election in virtual time (a manual clock and an in-memory Lease): renewals at half the
duration, stepping down exactly at the renew deadline when renewals fail, never two leaders,
takeover only after a full lease duration unobserved, release on shutdown, 409 re-read."""

from __future__ import annotations

import asyncio
import copy
import logging
from typing import Any

import pytest

from meshd.kube.leader import LeaderElector, LeaseConfig, LeaseConflict


class ManualClock:
    """Time moves only when the test calls advance(); sleepers wake at their own time."""

    def __init__(self) -> None:
        self.time = 0.0
        self._sleepers: list[tuple[float, asyncio.Future[None]]] = []

    def now(self) -> float:
        return self.time

    async def sleep(self, seconds: float) -> None:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._sleepers.append((self.time + seconds, future))
        await future

    async def advance(self, seconds: float) -> None:
        target = self.time + seconds
        while True:
            for _ in range(20):  # let woken tasks run their (in-memory, instant) API calls
                await asyncio.sleep(0)
            due = sorted((t for t, f in self._sleepers if t <= target and not f.done()))
            if not due:
                break
            self.time = max(self.time, due[0])
            for t, f in self._sleepers:
                if t <= self.time and not f.done():
                    f.set_result(None)
            self._sleepers = [(t, f) for t, f in self._sleepers if not f.done()]
        self.time = target


class MemoryLeases:
    """One Lease in memory with resourceVersion checks, shared by several clients."""

    def __init__(self) -> None:
        self.lease: dict[str, Any] | None = None
        self.rv = 0
        self.conflicts_to_inject = 0
        self.writes = 0

    def client(self) -> MemoryLock:
        return MemoryLock(self)


class MemoryLock:
    def __init__(self, leases: MemoryLeases) -> None:
        self.leases = leases
        self.broken = False

    def _check(self) -> None:
        if self.broken:
            raise OSError("connection refused")

    async def get(self) -> dict[str, Any] | None:
        self._check()
        return copy.deepcopy(self.leases.lease)

    async def create(self, lease: dict[str, Any]) -> dict[str, Any]:
        self._check()
        if self.leases.lease is not None:
            raise LeaseConflict("exists")
        return self._store(lease)

    async def replace(self, lease: dict[str, Any]) -> dict[str, Any]:
        self._check()
        assert self.leases.lease is not None
        if self.leases.conflicts_to_inject:
            self.leases.conflicts_to_inject -= 1
            self._store(self.leases.lease)  # someone else wrote meanwhile
            raise LeaseConflict("changed")
        if lease["metadata"].get("resourceVersion") != self.leases.lease["metadata"]["resourceVersion"]:
            raise LeaseConflict("changed")
        return self._store(lease)

    def _store(self, lease: dict[str, Any]) -> dict[str, Any]:
        self.leases.rv += 1
        self.leases.writes += 1
        stored = copy.deepcopy(lease)
        stored.setdefault("metadata", {})["resourceVersion"] = str(self.leases.rv)
        self.leases.lease = stored
        return copy.deepcopy(stored)


def elector(name: str, lock: MemoryLock, clock: ManualClock, changes: list[tuple[str, bool, float]]) -> LeaderElector:
    return LeaderElector(
        config=LeaseConfig(name="meshd-leader", namespace="istio-system", identity=name, duration_s=30),
        lock=lock,
        clock=clock,
        log=logging.getLogger("test"),
        on_change=lambda leading: changes.append((name, leading, clock.now())),
    )


def holder(leases: MemoryLeases) -> str:
    assert leases.lease is not None
    return str(leases.lease["spec"]["holderIdentity"])


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


async def test_failing_renewals_step_down_at_the_deadline_before_anyone_takes_over(clock: ManualClock) -> None:
    leases, changes = MemoryLeases(), []
    lock_a, lock_b = leases.client(), leases.client()
    a, b = elector("a", lock_a, clock, changes), elector("b", lock_b, clock, changes)
    async with asyncio.TaskGroup() as tasks:
        ta = tasks.create_task(a.run())
        await clock.advance(0)
        tb = tasks.create_task(b.run())
        await clock.advance(0)
        assert a.is_leader and not b.is_leader and holder(leases) == "a"
        await clock.advance(15)  # a renews at 15: its deadline is now 15 + 20 = 35
        assert leases.lease is not None and leases.lease["spec"]["renewTime"]
        lock_a.broken = True  # a can no longer reach the API server
        for _ in range(19):  # up to t = 34: still the leader, and b waits
            await clock.advance(1)
            assert a.is_leader and not b.is_leader, clock.now()
        await clock.advance(1)  # t = 35: the deadline
        assert not a.is_leader
        assert ("a", False, 35.0) in changes
        # b takes over only after a full duration without seeing the lease change (15 + 30 = 45)
        await clock.advance(9)
        assert not b.is_leader and holder(leases) == "a"
        await clock.advance(4)
        assert b.is_leader and holder(leases) == "b"
        assert leases.lease is not None and leases.lease["spec"]["leaseTransitions"] == 1
        assert [c for c in changes if c[1]] == [("a", True, 0.0), ("b", True, 45.0)]
        ta.cancel()
        tb.cancel()


async def test_renewals_happen_at_half_the_duration(clock: ManualClock) -> None:
    leases, changes = MemoryLeases(), []
    a = elector("a", leases.client(), clock, changes)
    task = asyncio.create_task(a.run())
    await clock.advance(0)
    writes = leases.writes
    await clock.advance(14.9)
    assert leases.writes == writes
    await clock.advance(0.1)
    assert leases.writes == writes + 1
    await clock.advance(15)
    assert leases.writes == writes + 2 and a.is_leader
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_shutdown_releases_and_the_other_takes_over_at_its_next_retry(clock: ManualClock) -> None:
    leases, changes = MemoryLeases(), []
    a, b = elector("a", leases.client(), clock, changes), elector("b", leases.client(), clock, changes)
    ta = asyncio.create_task(a.run())
    await clock.advance(0)
    tb = asyncio.create_task(b.run())
    await clock.advance(1)
    ta.cancel()
    with pytest.raises(asyncio.CancelledError):
        await ta
    assert holder(leases) == ""  # released
    assert ("a", False, 1.0) in changes
    await clock.advance(3)  # b's retry period is duration / 10
    assert b.is_leader and holder(leases) == "b"
    tb.cancel()
    with pytest.raises(asyncio.CancelledError):
        await tb


async def test_a_conflict_on_renew_is_read_again_and_leadership_kept(clock: ManualClock) -> None:
    leases, changes = MemoryLeases(), []
    a = elector("a", leases.client(), clock, changes)
    task = asyncio.create_task(a.run())
    await clock.advance(0)
    leases.conflicts_to_inject = 1
    await clock.advance(15)
    assert a.is_leader and holder(leases) == "a"
    assert changes == [("a", True, 0.0)]  # never stepped down
    assert leases.conflicts_to_inject == 0
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_a_cancellation_that_arrives_as_an_attempt_completes_stops_the_elector(clock: ManualClock) -> None:
    """Shutdown cancels the elector; if the cancel lands as a Lease call returns, it must still stop (and
    release): Python 3.11's asyncio.wait_for returned the call's result instead and the elector ran on."""
    leases, changes = MemoryLeases(), []
    task: asyncio.Task[None] | None = None

    class CancelledAsItAnswers(MemoryLock):
        async def get(self) -> dict[str, Any] | None:
            assert task is not None
            task.cancel()  # the shutdown, at the very moment the API server answers
            return await super().get()

    a = elector("a", CancelledAsItAnswers(leases), clock, changes)
    task = asyncio.create_task(a.run())
    async with asyncio.timeout(5):
        for _ in range(100):
            await clock.advance(1)
            if task.done():
                break
    assert task.done() and task.cancelled()
    assert not a.is_leader
