"""Serialised xDS resources: type URL from the message, content-hash versions shared by equal
content, and snapshots selecting resources by name or wildcard."""

from __future__ import annotations

import pytest
from envoy.config.cluster.v3 import cluster_pb2
from google.protobuf import any_pb2

from meshd.xds.resource import CLUSTER, Snapshot, XdsResource, make_resource, version_of


def cluster(name: str, tag: int = 0) -> XdsResource:
    """A small real resource; a different tag gives different content."""
    return make_resource(name, cluster_pb2.Cluster(name=name, alt_stat_name=f"t{tag}"))


def snapshot(*, cds: list[str]) -> Snapshot:
    return Snapshot(resources={CLUSTER: {n: cluster(n) for n in cds}})


@pytest.mark.parametrize(
    ("a", "b", "same_version"),
    [
        pytest.param(("c1", 0), ("c1", 0), True, id="equal-content"),
        pytest.param(("c1", 0), ("c1", 1), False, id="different-content"),
        pytest.param(("c1", 0), ("c2", 0), False, id="different-name-in-body"),
    ],
)
def test_make_resource_version_is_content_hash(a: tuple[str, int], b: tuple[str, int], same_version: bool) -> None:
    ra, rb = cluster(*a), cluster(*b)
    assert (ra.version == rb.version) is same_version
    assert (ra.body == rb.body) is same_version


def test_make_resource_type_url_body_and_any() -> None:
    msg = cluster_pb2.Cluster(name="c1", alt_stat_name="x")
    r = make_resource("c1", msg)
    assert r.type_url == CLUSTER
    assert r.name == "c1"
    assert cluster_pb2.Cluster.FromString(r.body) == msg
    packed = r.to_any()
    assert isinstance(packed, any_pb2.Any)
    assert (packed.type_url, packed.value) == (CLUSTER, r.body)


@pytest.mark.parametrize(
    ("a", "b", "equal"),
    [
        pytest.param({"x": 0, "y": 0}, {"y": 0, "x": 0}, True, id="same-set-other-order"),
        pytest.param({"x": 0, "y": 0}, {"x": 0, "y": 1}, False, id="one-resource-changed"),
        pytest.param({"x": 0}, {"x": 0, "y": 0}, False, id="resource-added"),
        pytest.param({}, {}, True, id="both-empty"),
    ],
)
def test_version_of_equal_iff_content_equal(a: dict[str, int], b: dict[str, int], equal: bool) -> None:
    va = version_of(cluster(n, t) for n, t in a.items())
    vb = version_of(cluster(n, t) for n, t in b.items())
    assert (va == vb) is equal


@pytest.mark.parametrize(
    ("selection", "expected"),
    [
        pytest.param(None, ["a", "b", "c"], id="wildcard-all-sorted"),
        pytest.param(frozenset({"c", "a"}), ["a", "c"], id="named-sorted"),
        pytest.param(frozenset({"a", "missing"}), ["a"], id="missing-names-skipped"),
        pytest.param(frozenset(), [], id="empty-selection"),
    ],
)
def test_snapshot_select(selection: frozenset[str] | None, expected: list[str]) -> None:
    snap = snapshot(cds=["c", "a", "b"])
    assert [r.name for r in snap.select(CLUSTER, selection)] == expected
    assert snap.version(CLUSTER, selection) == version_of(snap.select(CLUSTER, selection))


@pytest.mark.parametrize("size", [0, 1, 100, 127, 128, 16_383, 16_384, 70_000, 2_097_152])
def test_entries_and_body_decode_whatever_the_length_prefix(size: int) -> None:
    from envoy.service.discovery.v3 import discovery_pb2

    from meshd.xds.resource import make_raw_resource

    body = bytes(i % 251 for i in range(size))
    resource = make_raw_resource("r", CLUSTER, body)
    held = [s for s in XdsResource.__slots__ if isinstance(getattr(resource, s), bytes) and len(getattr(resource, s))]
    assert held == ["sotw_entry"]  # the bytes are held once (the delta entry only once asked for)
    assert resource.body == body and resource.to_any().value == body
    [packed] = discovery_pb2.DiscoveryResponse.FromString(resource.sotw_entry).resources
    assert (packed.type_url, packed.value) == (CLUSTER, body)
    [entry] = discovery_pb2.DeltaDiscoveryResponse.FromString(resource.delta_entry).resources
    assert (entry.name, entry.version, entry.resource.type_url, entry.resource.value) == (
        "r", resource.version, CLUSTER, body
    )  # fmt: skip
    assert resource.delta_entry is resource.delta_entry  # made once
    assert resource == make_raw_resource("r", CLUSTER, body)  # the delta entry made or not: equal
