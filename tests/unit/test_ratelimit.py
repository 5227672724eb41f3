"""Repeated log events per key are rate-limited with a dropped count (issue 20, item 5): a fake clock."""

from __future__ import annotations

from meshd.obs.ratelimit import LogLimiter


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def now(self) -> float:
        return self.t


def test_burst_then_drop_then_report_the_dropped_count() -> None:
    clock = Clock()
    limiter = LogLimiter(now=clock.now, burst=3, window_s=10.0)
    assert [limiter.allow("peer-a") for _ in range(1000)][:4] == [0, 0, 0, None]
    assert limiter.allow("peer-b") == 0  # another key is not affected
    clock.t = 10.0
    assert limiter.allow("peer-a") == 997  # the first line of the next window says what was dropped
    assert limiter.allow("peer-a") == 0


def test_keys_are_bounded() -> None:
    limiter = LogLimiter(now=Clock().now, burst=1, window_s=10.0, max_keys=100)
    for i in range(10_000):
        assert limiter.allow(f"peer-{i}") == 0
    assert len(limiter._keys) <= 100
