"""Debouncer: a burst of events fires `quiet` after the last one, or `max_delay` after the first,
whichever comes first; driven by a fake clock whose sleep advances time and delivers the events
scheduled meanwhile."""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections.abc import Callable

import pytest

from meshd.push.debounce import Debouncer


class FakeClock:
    """now() is virtual time; sleep(s) jumps to now+s, firing every callback scheduled up to then
    (at its own time), as if those events had arrived while the caller slept."""

    def __init__(self, start: float = 0.0) -> None:
        self.time = start
        self.sleeps: list[float] = []
        self._timers: list[tuple[float, int, Callable[[], None]]] = []
        self._seq = itertools.count()

    def now(self) -> float:
        return self.time

    def call_at(self, when: float, callback: Callable[[], None]) -> None:
        heapq.heappush(self._timers, (when, next(self._seq), callback))

    async def sleep(self, seconds: float) -> None:
        assert seconds > 0, "the debouncer must never busy-wait"
        self.sleeps.append(seconds)
        target = self.time + seconds
        while self._timers and self._timers[0][0] <= target:
            when, _, callback = heapq.heappop(self._timers)
            self.time = when
            callback()
        self.time = target
        await asyncio.sleep(0)


@pytest.mark.parametrize(
    ("quiet", "max_delay", "events", "fires_at", "first"),
    [
        pytest.param(1.0, 10.0, [0.0], 1.0, 0.0, id="single-event-fires-quiet-later"),
        pytest.param(1.0, 10.0, [2.0], 3.0, 2.0, id="single-late-event"),
        pytest.param(1.0, 10.0, [0.0, 0.5, 1.25], 2.25, 0.0, id="quiet-after-last-event"),
        pytest.param(1.0, 10.0, [0.0, 0.75, 1.5, 2.25], 3.25, 0.0, id="each-event-extends-the-wait"),
        pytest.param(1.0, 3.0, [i * 0.5 for i in range(40)], 3.0, 0.0, id="continuous-burst-cut-at-max"),
        pytest.param(1.0, 3.0, [2.0 + i * 0.5 for i in range(40)], 5.0, 2.0, id="burst-cut-at-max-after-first"),
        pytest.param(2.0, 3.0, [0.0, 1.5], 3.0, 0.0, id="max-delay-wins-over-quiet"),
    ],
)
async def test_debouncer_fires_after_quiet_or_max_delay(
    quiet: float, max_delay: float, events: list[float], fires_at: float, first: float
) -> None:
    clock = FakeClock(start=events[0])
    debouncer = Debouncer(clock=clock, quiet=quiet, max_delay=max_delay)
    debouncer.touch()
    for when in events[1:]:
        clock.call_at(when, debouncer.touch)

    returned = await debouncer.wait()

    assert clock.now() == pytest.approx(fires_at)
    assert returned == pytest.approx(first)


async def test_debouncer_waits_for_a_first_event() -> None:
    clock = FakeClock(start=5.0)
    debouncer = Debouncer(clock=clock, quiet=1.0, max_delay=10.0)
    waiter = asyncio.create_task(debouncer.wait())
    for _ in range(5):
        await asyncio.sleep(0)
    assert not waiter.done()
    assert clock.sleeps == []

    debouncer.touch()
    assert await waiter == pytest.approx(5.0)
    assert clock.now() == pytest.approx(6.0)


async def test_debouncer_starts_a_new_burst_after_firing() -> None:
    clock = FakeClock()
    debouncer = Debouncer(clock=clock, quiet=1.0, max_delay=10.0)
    debouncer.touch()
    assert await debouncer.wait() == pytest.approx(0.0)
    assert debouncer.first is None

    clock.time = 7.0
    debouncer.touch()
    clock.call_at(7.5, debouncer.touch)
    assert await debouncer.wait() == pytest.approx(7.0)
    assert clock.now() == pytest.approx(8.5)
