"""The stuck-write detector (xds/write_watch.py) on a fake clock and timer queue: one timer per timeout
period however many writes, a write older than the timeout cancels the stream's task (and only then is the
cancellation the watch's), and a real stream whose proxy never reads is ended after the timeout."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from meshd.xds.write_watch import WriteWatch


class FakeTask:
    def __init__(self) -> None:
        self.cancels = 0

    def cancel(self, msg: Any | None = None) -> bool:
        self.cancels += 1
        return True

    def uncancel(self) -> int:
        self.cancels -= 1
        return self.cancels


class Timers:
    """A fake clock and its timer queue."""

    def __init__(self) -> None:
        self.t = 0.0
        self.queue: list[tuple[float, Callable[[], None], Timers.Handle]] = []

    class Handle:
        def __init__(self) -> None:
            self.cancelled = False

        def cancel(self) -> None:
            self.cancelled = True

    def now(self) -> float:
        return self.t

    def call_at(self, when: float, callback: Callable[[], None]) -> Timers.Handle:
        handle = Timers.Handle()
        self.queue.append((when, callback, handle))
        return handle

    def advance(self, to: float) -> None:
        self.t = to
        while due := sorted((e for e in self.queue if e[0] <= to), key=lambda e: e[0]):
            entry = due[0]
            self.queue.remove(entry)
            if not entry[2].cancelled:
                entry[1]()


def _watch(timeout: float = 30.0) -> tuple[WriteWatch, FakeTask, Timers]:
    task, timers = FakeTask(), Timers()
    return WriteWatch(timeout, task=task, now=timers.now, call_at=timers.call_at), task, timers


def test_many_quick_writes_set_one_timer_per_period_and_never_cancel() -> None:
    watch, task, timers = _watch()
    for i in range(1000):
        timers.advance(i * 0.1)  # 100 s of writes, each done at once
        watch.writing()
        watch.written()
    assert task.cancels == 0
    assert watch.timers <= 5  # set at 0, re-set by the writes after each firing: not 1000


def test_a_write_older_than_the_timeout_cancels_the_task_and_is_told_apart() -> None:
    watch, task, timers = _watch()
    watch.writing()
    watch.written()
    timers.advance(20.0)
    watch.writing()  # a later write: the timer set at 0 fires at 30 and is set again for 50
    timers.advance(49.9)
    assert task.cancels == 0
    timers.advance(50.0)
    assert task.cancels == 1
    assert watch.stuck() and task.cancels == 0  # the watch's cancellation, withdrawn
    assert not watch.stuck()  # once


def test_another_cancellation_is_not_the_watchs() -> None:
    watch, task, timers = _watch()
    watch.writing()
    task.cancel()  # the stream ended by its client while the write waits
    assert not watch.stuck() and task.cancels == 1
    timers.advance(30.0)  # and also stuck: both cancellations stand
    assert task.cancels == 2 and not watch.stuck() and task.cancels == 1


def test_an_idle_stream_has_no_timer_and_close_cancels_it() -> None:
    watch, task, timers = _watch()
    watch.writing()
    watch.written()
    timers.advance(30.0)
    assert not [e for e in timers.queue if not e[2].cancelled]  # idle: not set again
    watch.writing()
    watch.close()
    timers.advance(100.0)
    assert task.cancels == 0


async def test_a_write_that_never_completes_is_cancelled_on_the_loop() -> None:
    """With the event loop's own time and timers: a write waiting forever raises CancelledError after the
    timeout, and the watch says it is stuck."""
    never = asyncio.Event()

    async def stream() -> str:
        watch = WriteWatch(0.01)
        watch.writing()
        try:
            await never.wait()
        except asyncio.CancelledError:
            return "stuck" if watch.stuck() else "cancelled"
        finally:
            watch.written()
        return "written"

    assert await asyncio.wait_for(stream(), timeout=10) == "stuck"
