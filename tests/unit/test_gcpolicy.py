"""The GC policy freezes the live config after each push and fully collects every N pushes."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from meshd.gcpolicy import GcPolicy


@pytest.fixture(autouse=True)
def _unfreeze() -> Iterator[None]:
    yield
    gc.unfreeze()


def test_freezes_after_each_push_and_collects_every_n() -> None:
    policy = GcPolicy(every=3)
    gc.unfreeze()
    policy.after_push()
    assert gc.get_freeze_count() > 0
    policy.after_push()
    policy.after_push()
    assert policy.full_collections == 1


def test_cyclic_garbage_is_collected_at_the_periodic_full_collection() -> None:
    policy = GcPolicy(every=2)
    gc.unfreeze()

    class Node:
        other: object = None

    a, b = Node(), Node()
    a.other, b.other = b, a  # a cycle: only the cyclic collector frees it
    import weakref

    probe = weakref.ref(a)
    policy.after_push()  # frozen while still alive
    del a, b
    gc.collect()
    assert probe() is not None  # frozen objects are not collected...
    policy.after_push()  # ...until the periodic full collection
    assert probe() is None


def test_disabled_policy_touches_nothing() -> None:
    gc.unfreeze()
    GcPolicy(every=1, enabled=False).after_push()
    assert gc.get_freeze_count() == 0
