"""Rate limit repeated log events per key (a peer, a proxy), with a count of what was dropped. Pure: the
clock is passed in. At most `burst` events per key in each `window_s`; the first event of a new window
carries how many were dropped in the ones before (log it as `dropped=N`). At most `max_keys` keys are
remembered (the oldest forgotten first), so a flood of distinct keys cannot grow it."""

from __future__ import annotations

from collections.abc import Callable, Hashable
from dataclasses import dataclass


@dataclass
class _Window:
    start: float
    count: int = 0
    dropped: int = 0


class LogLimiter:
    def __init__(
        self, *, now: Callable[[], float], burst: int = 5, window_s: float = 60.0, max_keys: int = 10_000
    ) -> None:
        self._now, self._burst, self._window, self._max_keys = now, burst, window_s, max_keys
        self._keys: dict[Hashable, _Window] = {}

    def allow(self, key: Hashable) -> int | None:
        """None: drop this event. Else log it, with the returned number of events dropped before it."""
        now = self._now()
        window = self._keys.get(key)
        if window is None or now - window.start >= self._window:
            dropped = window.dropped if window is not None else 0
            self._keys.pop(key, None)
            if len(self._keys) >= self._max_keys:
                del self._keys[next(iter(self._keys))]
            self._keys[key] = _Window(start=now, count=1)
            return dropped
        if window.count < self._burst:
            window.count += 1
            dropped, window.dropped = window.dropped, 0
            return dropped
        window.dropped += 1
        return None
