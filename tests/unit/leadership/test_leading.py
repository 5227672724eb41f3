"""The plain list of leader duties in virtual time: every duty runs while meshd takes part in the
election, hears each change of leadership and reads `is_leader`; a failed attempt is retried with
backoff on the same objects, and the Lease is released on the way out."""

from __future__ import annotations

import asyncio
import contextlib
import logging

import pytest

from meshd.kube.leader import LeaseConfig
from meshd.kube.leading import LeaderDuty, Leadership, keep_trying
from tests.unit.leadership.test_leader_clock import ManualClock, MemoryLeases

log = logging.getLogger("meshd.test.leading")
CONFIG = LeaseConfig(name="meshd-leader", namespace="istio-system", identity="a", duration_s=30.0)


class RecordingDuty:
    def __init__(self, leadership: Leadership) -> None:
        self.leadership = leadership
        self.changes: list[bool] = []
        self.runs = 0
        self.leader_seen: list[bool] = []

    def leadership_changed(self, leading: bool) -> None:
        self.changes.append(leading)
        self.leader_seen.append(self.leadership.is_leader())

    async def run(self) -> None:
        self.runs += 1
        await asyncio.Event().wait()


async def test_duties_hear_leadership_and_run_while_electing() -> None:
    clock, leases = ManualClock(), MemoryLeases()
    leadership = Leadership(config=CONFIG, lock=leases.client(), clock=clock, log=log)
    duties = [RecordingDuty(leadership), RecordingDuty(leadership)]
    listed: list[LeaderDuty] = list(duties)
    task = asyncio.create_task(leadership.run(listed))
    await clock.advance(1)
    assert leadership.is_leader()
    assert [d.changes for d in duties] == [[True], [True]]
    assert [d.leader_seen for d in duties] == [[True], [True]]  # is_leader already true when told
    assert [d.runs for d in duties] == [1, 1]
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    assert [d.changes for d in duties] == [[True, False], [True, False]]  # stepped down on the way out
    assert leases.lease is not None and leases.lease["spec"]["holderIdentity"] == ""  # released


async def test_keep_trying_retries_with_backoff() -> None:
    clock = ManualClock()
    attempts: list[float] = []

    async def attempt() -> None:
        attempts.append(clock.now())
        raise OSError("kubeconfig unusable")

    task = asyncio.create_task(keep_trying(attempt, clock=clock, log=log, max_delay_s=4.0))
    await clock.advance(20)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    assert attempts == [0.0, 1.0, 3.0, 7.0, 11.0, 15.0, 19.0]  # 1, 2, 4, then capped at 4


class FlakyPublisher:
    """A duty whose passes fail as a briefly unreachable API server makes them fail: not an ApiException."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.runs = 0

    def leadership_changed(self, leading: bool) -> None:
        pass

    async def run(self) -> None:
        self.runs += 1
        if self.runs <= self.failures:
            raise ConnectionRefusedError("Cannot connect to host 127.0.0.1:6443")
        await asyncio.Event().wait()


async def test_a_failing_duty_neither_drops_leadership_nor_stops_the_others(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger=log.name)
    clock, leases = ManualClock(), MemoryLeases()
    leadership = Leadership(config=CONFIG, lock=leases.client(), clock=clock, log=log)
    flaky, steady = FlakyPublisher(failures=3), RecordingDuty(leadership)
    task = asyncio.create_task(leadership.run([flaky, steady]))
    await clock.advance(10)
    assert leadership.is_leader() and steady.changes == [True]  # never stepped down
    assert flaky.runs == 4  # run again after each failure (0.5 s, 1 s, 2 s)
    assert steady.runs == 1  # the other duty was never restarted
    failed = [r.getMessage() for r in caplog.records if "event=leader_duty_failed" in r.getMessage()]
    assert len(failed) == 3 and all("duty=FlakyPublisher error_type=ConnectionRefusedError" in m for m in failed)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
