"""The plain list of leader duties in virtual time: every duty runs while meshd takes part in the
election, hears each change of leadership and reads `is_leader`; a failed attempt is retried with
backoff on the same objects, and the Lease is released on the way out."""

from __future__ import annotations

import asyncio
import contextlib
import logging

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
