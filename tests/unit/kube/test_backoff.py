"""Backoff, pure: 0.8 s doubling to 30 s with jitter; Retry-After is a floor; reset after a healthy period."""

from __future__ import annotations

import random

from meshd.kube.backoff import Backoff


def test_doubles_to_the_cap_with_jitter_within_bounds() -> None:
    backoff = Backoff(rand=random.Random(3))
    delays = [backoff.failure(float(i)) for i in range(10)]
    for i, delay in enumerate(delays):
        base = min(30.0, 0.8 * 2**i)
        assert base <= delay <= min(30.0, base * 1.5)
    assert delays[-1] == 30.0


def test_retry_after_is_a_floor() -> None:
    assert Backoff(rand=random.Random(1)).failure(0.0, retry_after=12) == 12


def test_resets_after_a_healthy_period_only() -> None:
    backoff = Backoff(rand=random.Random(1), jitter=0.0, reset_after_s=60)
    assert [backoff.failure(t) for t in (0, 1, 2)] == [0.8, 1.6, 3.2]
    backoff.healthy(30)  # not long enough
    assert backoff.failure(31) == 6.4
    backoff.healthy(100)  # 69 s without a failure
    assert backoff.failure(101) == 0.8
    assert backoff.failure(300) == 0.8  # a long gap since the last failure resets too
