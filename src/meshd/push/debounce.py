"""Debouncing store changes: a burst of events becomes one push."""

from __future__ import annotations

import asyncio

from meshd.clock import Clock


class Debouncer:
    """Coalesces bursts of events: fires `quiet` after the last event, or `max_delay` after the first."""

    def __init__(self, *, clock: Clock, quiet: float, max_delay: float) -> None:
        self._clock, self._quiet, self._max = clock, quiet, max_delay
        self._event = asyncio.Event()
        self.first: float | None = None
        self._last = 0.0

    def touch(self) -> None:
        now = self._clock.now()
        if self.first is None:
            self.first = now
        self._last = now
        self._event.set()

    async def pending(self) -> None:
        """Return as soon as an event is waiting to be handled."""
        await self._event.wait()

    async def wait(self) -> float:
        """Wait for a burst to settle; returns the time of its first event."""
        await self._event.wait()
        while True:
            assert self.first is not None
            deadline = min(self._last + self._quiet, self.first + self._max)
            now = self._clock.now()
            if now >= deadline:
                break
            await self._clock.sleep(deadline - now)
        first, self.first = self.first, None
        self._event.clear()
        return first
