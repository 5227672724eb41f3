"""Exponential backoff with jitter for API failures (as client-go's reflector): 0.8 s doubling to a
30 s cap, each delay stretched by up to `jitter` of itself, back to the start once the API has been
healthy for `reset_after_s`. Pure: the caller passes the time and the random source."""

from __future__ import annotations

import random
from dataclasses import dataclass, field


@dataclass
class Backoff:
    initial_s: float = 0.8
    cap_s: float = 30.0
    factor: float = 2.0
    jitter: float = 0.5
    reset_after_s: float = 60.0
    rand: random.Random = field(default_factory=random.Random)
    _step: int = 0
    _last_failure: float | None = None

    def failure(self, now: float, *, retry_after: float | None = None) -> float:
        """The delay before the next attempt after a failure at `now` (never below Retry-After)."""
        if self._last_failure is not None and now - self._last_failure > self.reset_after_s:
            self._step = 0
        base = min(self.cap_s, self.initial_s * self.factor**self._step)
        self._step += 1
        self._last_failure = now
        delay = min(self.cap_s, base * (1.0 + self.jitter * self.rand.random()))
        if retry_after is not None:
            delay = max(delay, min(retry_after, self.cap_s * 4))
        return delay

    def healthy(self, now: float) -> None:
        """Work went well at `now`: after reset_after_s without a failure the next delay starts over."""
        if self._last_failure is not None and now - self._last_failure > self.reset_after_s:
            self._step = 0
            self._last_failure = None

    @property
    def step(self) -> int:
        return self._step
