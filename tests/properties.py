"""Shared Hypothesis strategies and the bounded budget of the property tests (issue 20: every parser
turns any input into a value or an InvalidResource; the whole property suite stays within ~20 s of
`make test`). No example database is written: runs are reproducible from the printed seed."""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from tests.typefuzz import CONFUSED, paths, replaced, seed_files


def budget(examples: int) -> settings:
    return settings(
        max_examples=examples,
        deadline=None,  # wall-clock per example varies on a shared machine; the budget is the count
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
        derandomize=False,
    )


scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
    st.sampled_from(CONFUSED[:2]),
)
# JSON/YAML-shaped values: what a document, or any part of it, could be.
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.one_of(st.text(max_size=12), st.integers()), inner, max_size=4)
    ),
    max_leaves=12,
)

_SEEDS: list[dict[str, Any]] = [doc for docs in seed_files() for doc in docs]


@st.composite
def confused_documents(draw: st.DrawFn) -> dict[str, Any]:
    """A real document (golden inputs, examples) with one value, at any depth, of any type."""
    doc = draw(st.sampled_from(_SEEDS))
    path = draw(st.sampled_from(list(paths(doc))))
    out: dict[str, Any] = replaced(doc, path, draw(values))
    return out
