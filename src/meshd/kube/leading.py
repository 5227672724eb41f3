"""Leading: one Lease elector and the plain list of duties that act only while this replica leads
(status writer, root-cert publisher, webhook configuration patcher...). Every duty runs for as long
as meshd takes part in the election, asks `Leadership.is_leader` before each write, and hears each
change of leadership. xDS serving never waits for any of this.

`keep_trying` runs an attempt again after a failure, with backoff: leader duties must never take
meshd down (an unusable kubeconfig, an API server that refuses the Lease).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol

from meshd.clock import Clock
from meshd.kube.leader import LeaderElector, LeaseConfig, LeaseLock


class LeaderDuty(Protocol):
    def leadership_changed(self, leading: bool) -> None: ...

    async def run(self) -> None: ...


class Leadership:
    """The elector, and whether this replica leads as it last said (deadline-checked)."""

    def __init__(self, *, config: LeaseConfig, lock: LeaseLock, clock: Clock, log: logging.Logger) -> None:
        self._log = log
        self._clock = clock
        self._duties: tuple[LeaderDuty, ...] = ()
        self.elector = LeaderElector(config=config, lock=lock, clock=clock, log=log, on_change=self._changed)

    def is_leader(self) -> bool:
        return self.elector.is_leader

    def _changed(self, leading: bool) -> None:
        for duty in self._duties:
            duty.leadership_changed(leading)

    async def run(self, duties: Sequence[LeaderDuty]) -> None:
        """Take part in the election and run `duties` until cancelled (or one of them fails)."""
        self._duties = tuple(duties)
        config = self.elector.config
        self._log.info(
            "event=leader_election_started lease=%s/%s identity=%s", config.namespace, config.name, config.identity
        )
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(self.elector.run())
            for duty in self._duties:
                tasks.create_task(self._supervise(duty))

    async def _supervise(self, duty: LeaderDuty) -> None:
        """Run one duty; when it fails (any error: an API server that is briefly down raises connection
        errors, not only ApiException) log which duty failed and run it again after a backoff. A failing
        duty never ends the election: leadership is lost only at the Lease's renew deadline."""
        name = duty_name(duty)
        delay = DUTY_RETRY_FIRST_S
        while True:
            try:
                await duty.run()
                return
            except Exception as exc:
                self._log.warning(
                    "event=leader_duty_failed duty=%s error_type=%s error=%r retry_in_s=%.1f",
                    name,
                    type(exc).__name__,
                    str(exc),
                    delay,
                )
            await self._clock.sleep(delay)
            delay = min(delay * 2, DUTY_RETRY_MAX_S)


# A failed duty runs again after 0.5 s, 1 s, 2 s... at most this often.
DUTY_RETRY_FIRST_S = 0.5
DUTY_RETRY_MAX_S = 10.0


def duty_name(duty: object) -> str:
    """What a log line calls a duty: the class it wraps (a PassOnLeading's target) or its own."""
    target = getattr(duty, "target", duty)
    return type(target).__name__


async def keep_trying(
    attempt: Callable[[], Awaitable[None]], *, clock: Clock, log: logging.Logger, max_delay_s: float = 30.0
) -> None:
    """Run `attempt` until cancelled; after a failure, again after 1 s, 2 s, 4 s... up to `max_delay_s`."""
    delay = 1.0
    while True:
        try:
            await attempt()
        except Exception as exc:
            log.error("event=leader_duties_failed error=%s retry_in_s=%.0f", exc, delay)
        await clock.sleep(delay)
        delay = min(delay * 2, max_delay_s)
