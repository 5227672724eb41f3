"""Debouncing store changes: a burst of events becomes one push.

A burst ends `quiet` after its last event, or `max_delay` after its first. A change that finds the
push loop calm, done with its last push (`ready`) for at least `quiet` already, ends its burst after
`calm_quiet` instead: the quiet period was seen before it. A lone edit is then pushed without waiting out a
quiet period nothing needed, and a burst that follows it within `quiet` of that push (the rest of a
`kubectl apply`, a rollout's endpoint changes) is debounced as usual: a burst costs at most one push
more than a fixed quiet period would give (`calm_quiet == quiet`: Istio's PILOT_DEBOUNCE_AFTER).
"""

from __future__ import annotations

import asyncio
import math

from meshd.clock import Clock


class Debouncer:
    """Coalesces bursts of events: fires `quiet` after the last event, or `max_delay` after the first;
    `calm_quiet` after the last when the burst began at least `quiet` after the caller was last `ready`."""

    def __init__(self, *, clock: Clock, quiet: float, max_delay: float, calm_quiet: float | None = None) -> None:
        self._clock, self._quiet, self._max = clock, quiet, max_delay
        self._calm_quiet = quiet if calm_quiet is None else min(calm_quiet, quiet)
        self._event = asyncio.Event()
        self.first: float | None = None
        self._last = 0.0
        self._ready = -math.inf  # never pushed: calm (the first load is pushed once its last list is in)

    def touch(self) -> None:
        now = self._clock.now()
        if self.first is None:
            self.first = now
        self._last = now
        self._event.set()

    def ready(self) -> None:
        """The caller is done with the last burst (its push): the loop is calm from now on."""
        self._ready = self._clock.now()

    async def pending(self) -> None:
        """Return as soon as an event is waiting to be handled."""
        await self._event.wait()

    async def wait(self) -> float:
        """Wait for a burst to settle; returns the time of its first event."""
        await self._event.wait()
        assert self.first is not None
        calm = self.first - self._ready >= self._quiet
        quiet = self._calm_quiet if calm else self._quiet
        while True:
            assert self.first is not None
            deadline = min(self._last + quiet, self.first + self._max)
            now = self._clock.now()
            if now >= deadline:
                break
            await self._clock.sleep(deadline - now)
        first, self.first = self.first, None
        self._event.clear()
        return first
