"""Layered, the mapping derived by a few changes without a copy: after any sequence of updates (folding into a
new base on the way) it equals the dict the same changes give, and every earlier version is left as it was."""

from __future__ import annotations

import itertools

from hypothesis import given, settings
from hypothesis import strategies as st

from meshd.model.layered import Layered

_keys = st.integers(min_value=0, max_value=150)
_step = st.tuples(st.dictionaries(_keys, st.integers(), max_size=40), st.lists(_keys, max_size=40))


def _check(layered: Layered[int, int], model: dict[int, int]) -> None:
    assert dict(layered) == model
    assert len(layered) == len(model)
    assert list(layered.items()) == [(k, layered[k]) for k in layered]
    assert list(layered.values()) == [layered[k] for k in layered]
    assert layered.keys() | {-1} == model.keys() | {-1}
    for key in range(-1, 152):
        assert (key in layered) == (key in model)
        assert layered.get(key) == model.get(key)
        assert layered.get(key, -7) == model.get(key, -7)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(_keys, st.integers(), max_size=100), st.lists(_step, max_size=30))
def test_updates_equal_a_dict_and_leave_every_version_as_it_was(base: dict[int, int], steps: list) -> None:  # type: ignore[type-arg]
    versions = [(Layered(base), dict(base))]
    for changed, removed in steps:
        layered, model = versions[-1]
        after = dict(model)
        for key in removed:
            if key not in changed:
                after.pop(key, None)
        after.update(changed)
        versions.append((layered.updated(changed, removed), after))
    for layered, model in versions:
        _check(layered, model)
    for (before, _), (after, _) in itertools.pairwise(versions):  # kept keys keep their order (sorted stays sorted)
        assert [k for k in after if k in before] == [k for k in before if k in after]


def test_a_long_run_of_small_changes_folds_into_a_new_base_and_copies_little() -> None:
    layered: Layered[int, int] = Layered({k: k for k in range(1000)})
    bases = {id(layered._base)}
    for step in range(2000):
        layered = layered.updated({step % 1500: -step}, [(step * 7) % 1500])
        bases.add(id(layered._base))
        assert len(layered._over) <= max(64, len(layered._base) // 4) + 2
    assert 2 <= len(bases) <= 2000 // 64 + 1  # folded, but not on every change
