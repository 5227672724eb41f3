"""Unknown type URLs cost linear work (issue 20, defect 11: one stream with 10k of them took 38 s of CPU,
quadratic): what a stream may subscribe is bounded, so each request costs at most MAX_TYPES types' work.
An operation count, not a timing: calls to the snapshot per request."""

from __future__ import annotations

import pytest

from meshd.xds.resource import CLUSTER, Snapshot
from meshd.xds.stream import MAX_NAMES, MAX_TYPES, DeltaStream, Request, SotwStream


class CountingSnapshot(Snapshot):
    calls = 0

    def version(self, type_url: str, names: frozenset[str] | None) -> str:
        CountingSnapshot.calls += 1
        return super().version(type_url, names)


@pytest.mark.parametrize("kind", ["sotw", "delta"])
def test_unknown_type_urls_cost_linear_work(kind: str) -> None:
    stream = SotwStream(nonce_prefix="n") if kind == "sotw" else DeltaStream(nonce_prefix="n")
    snapshot = CountingSnapshot(resources={})
    CountingSnapshot.calls = 0
    requests = 3000
    outcomes = []
    for i in range(requests):
        outcomes.append(stream.on_request(Request(type_url=f"type.googleapis.com/unknown.T{i}")).kind)
        stream.responses(snapshot)
    assert len(stream.types) == MAX_TYPES
    assert outcomes.count("limit") == requests - MAX_TYPES
    assert CountingSnapshot.calls <= 2 * MAX_TYPES * requests  # quadratic was ~requests**2 / 2 = 4.5 million


def test_too_many_names_are_refused() -> None:
    sotw = SotwStream(nonce_prefix="n")
    names = tuple(f"c{i}" for i in range(MAX_NAMES + 1))
    assert sotw.on_request(Request(type_url=CLUSTER, resource_names=names)).kind == "limit"
    assert CLUSTER not in sotw.types
    delta = DeltaStream(nonce_prefix="n")
    assert delta.on_request(Request(type_url=CLUSTER, subscribe=names[:MAX_NAMES])).kind == "initial"
    assert delta.on_request(Request(type_url=CLUSTER, subscribe=names[MAX_NAMES:])).kind == "limit"
    assert len(delta.types[CLUSTER].names or ()) == MAX_NAMES
