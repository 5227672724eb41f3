"""Debouncer: a burst of events fires `quiet` after the last one, or `max_delay` after the first,
whichever comes first, and `calm_quiet` after the last when it began `quiet` or more after the caller was
last ready (done with its push); driven by a fake clock whose sleep advances time and delivers the events
scheduled meanwhile."""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import logging
from collections.abc import Callable

import pytest
from prometheus_client import CollectorRegistry

from meshd.api.parse import parse_resource
from meshd.model.store import ConfigStore
from meshd.obs.metrics import Metrics
from meshd.push.debounce import Debouncer
from meshd.push.loop import PushLoop
from meshd.settings import Settings
from meshd.xds.hub import Hub


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


@pytest.mark.parametrize(
    ("ready", "max_delay", "events", "fires_at", "first"),
    [
        pytest.param(0.0, 10.0, [5.0], 5.1, 5.0, id="a-lone-change-after-calm-waits-calm-quiet"),
        pytest.param(0.0, 10.0, [5.0, 5.05, 5.12], 5.22, 5.0, id="calm-quiet-after-each-event-of-the-burst"),
        pytest.param(0.0, 0.3, [5.0 + i * 0.05 for i in range(40)], 5.3, 5.0, id="a-calm-burst-cut-at-max"),
        pytest.param(4.5, 10.0, [5.0], 6.0, 5.0, id="a-change-within-quiet-of-ready-waits-quiet"),
        pytest.param(4.0, 10.0, [5.0], 5.1, 5.0, id="exactly-quiet-after-ready-is-calm"),
    ],
)
async def test_a_change_that_finds_the_caller_calm_waits_calm_quiet(
    ready: float, max_delay: float, events: list[float], fires_at: float, first: float
) -> None:
    clock = FakeClock()
    debouncer = Debouncer(clock=clock, quiet=1.0, max_delay=max_delay, calm_quiet=0.1)
    clock.time = ready
    debouncer.ready()
    clock.time = events[0]
    debouncer.touch()
    for when in events[1:]:
        clock.call_at(when, debouncer.touch)

    assert await debouncer.wait() == pytest.approx(first)
    assert clock.now() == pytest.approx(fires_at)


async def test_a_change_made_before_the_caller_was_ready_waits_quiet() -> None:
    """A change arriving while the last burst was being pushed did not find the caller calm."""
    clock = FakeClock()
    debouncer = Debouncer(clock=clock, quiet=1.0, max_delay=10.0, calm_quiet=0.1)
    clock.time = 5.0
    debouncer.touch()  # during a push
    clock.time = 5.4
    debouncer.ready()  # the push is done
    assert await debouncer.wait() == pytest.approx(5.0)
    assert clock.now() == pytest.approx(6.0)


@pytest.mark.parametrize(("calm_quiet", "fires_at"), [(None, 6.0), (1.0, 6.0), (3.0, 6.0), (0.0, 5.0)])
async def test_calm_quiet_defaults_to_quiet_and_never_exceeds_it(calm_quiet: float | None, fires_at: float) -> None:
    clock = FakeClock()
    debouncer = Debouncer(clock=clock, quiet=1.0, max_delay=10.0, calm_quiet=calm_quiet)
    clock.time = 5.0
    debouncer.touch()
    assert await debouncer.wait() == pytest.approx(5.0)
    assert clock.now() == pytest.approx(fires_at)


async def test_the_push_loop_pushes_a_calm_change_at_once_and_debounces_what_follows_a_push() -> None:
    """The push loop marks the debouncer ready after each push: a change 0.2 s after a push waits the
    full quiet period, one 3.7 s after a push (or before any) is pushed after calm_quiet."""
    clock = FakeClock()
    store, hub = ConfigStore(), Hub()
    loop = PushLoop(
        store=store,
        hub=hub,
        settings=Settings(debounce_quiet_s=1.0, debounce_calm_quiet_s=0.1),
        clock=clock,
        metrics=Metrics(CollectorRegistry()),
        log=logging.getLogger("meshd.test.push"),
    )
    pushed: list[float] = []
    loop.push = lambda *, changed_at: pushed.append(clock.now()) is None  # type: ignore[method-assign]

    def change(name: str) -> None:
        service = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": "a"}, "spec": {}}
        store.replace_origin(name, {parse_resource(service).key: parse_resource(service)}, [])

    async def settle() -> None:
        for _ in range(20):
            await asyncio.sleep(0)

    store.mark_loaded()
    runner = asyncio.create_task(loop.run())
    try:
        clock.time = 0.5
        change("first")  # nothing pushed yet: calm
        await settle()
        assert pushed == [pytest.approx(0.6)]

        clock.time = 0.8
        change("after-a-push")
        await settle()
        assert pushed[1:] == [pytest.approx(1.8)]

        clock.time = 5.5
        change("calm")
        await settle()
        assert pushed[2:] == [pytest.approx(5.6)]
    finally:
        runner.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await runner
