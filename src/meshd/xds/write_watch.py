"""A stream's stuck-write detector: one timer per timeout period, not one per write.

A proxy that stops reading its stream blocks meshd's writes to it (HTTP/2 flow control); after the send
timeout the stream is ended so that its memory and slot are freed. Arming a timer around every write
(`asyncio.timeout`) cost a timer-heap insertion and cancellation per response: ~2% of a cold storm's CPU
at thousands of proxies. The watch instead notes when the current write began; its one timer checks, when
it fires, whether that write is older than the timeout. If so it cancels the stream's task (the write
raises CancelledError, which `stuck()` tells apart from any other cancellation); if a later write is in
progress the timer is set again for that write's deadline; if none is, it stays unset until the next
write. Time and timers are injected (the event loop's by default) so that the behaviour is tested
without waiting.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, Protocol


class Cancellable(Protocol):
    def cancel(self, msg: Any | None = None) -> bool: ...

    def uncancel(self) -> int: ...


class Timer(Protocol):
    def cancel(self) -> None: ...


class WriteWatch:
    def __init__(
        self,
        timeout_s: float,
        *,
        task: Cancellable | None = None,
        now: Callable[[], float] | None = None,
        call_at: Callable[[float, Callable[[], None]], Timer] | None = None,
    ) -> None:
        if now is None or call_at is None:
            loop = asyncio.get_running_loop()
            now, call_at = now or loop.time, call_at or loop.call_at
        self._timeout = timeout_s
        self._task: Cancellable | None = task if task is not None else asyncio.current_task()
        self._now, self._call_at = now, call_at
        self._since: float | None = None  # when the write in progress began
        self._timer: Timer | None = None
        self._fired = False
        self.timers = 0  # timers set so far

    def writing(self) -> None:
        """A write begins."""
        self._since = self._now()
        if self._timer is None:
            self._arm(self._since + self._timeout)

    def written(self) -> None:
        """The write ended (done, failed or cancelled)."""
        self._since = None

    def stuck(self) -> bool:
        """In the handler of a write's CancelledError: whether the watch cancelled it for being stuck, and
        nothing else did (that cancellation is then withdrawn, so the stream can be ended in order)."""
        if not self._fired or self._task is None:
            return False
        self._fired = False
        return self._task.uncancel() == 0

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _arm(self, when: float) -> None:
        self.timers += 1
        self._timer = self._call_at(when, self._check)

    def _check(self) -> None:
        self._timer = None
        if self._since is None:
            return  # idle: the next write sets the timer again
        due = self._since + self._timeout
        if self._now() < due:
            self._arm(due)  # a later write than the one the timer was set for
        elif self._task is not None:
            self._fired = True
            self._task.cancel()
