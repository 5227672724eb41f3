"""Per-resource isolation of what a proxy rejected (xds/isolation.py)."""

from __future__ import annotations

from envoy.config.cluster.v3 import cluster_pb2
from google.protobuf import duration_pb2

from meshd.xds.isolation import Isolation, named_in
from meshd.xds.resource import CLUSTER, Snapshot, XdsResource, make_resource


def cluster(name: str, timeout: int) -> XdsResource:
    return make_resource(name, cluster_pb2.Cluster(name=name, connect_timeout=duration_pb2.Duration(seconds=timeout)))


def snap(*resources: XdsResource) -> Snapshot:
    return Snapshot(resources={CLUSTER: {r.name: r for r in resources}})


def test_the_changed_resource_is_held_at_its_accepted_version_and_the_rest_flows() -> None:
    iso = Isolation()
    a1, b1 = cluster("a", 1), cluster("b", 1)
    first = snap(a1, b1)
    assert iso.view(first) is first  # nothing rejected: the shared snapshot itself
    iso.sent(CLUSTER, "n1", first)
    iso.accepted(CLUSTER, "n1")

    a_bad = cluster("a", 2)  # pretend Envoy rejects it
    second = snap(a_bad, b1)
    iso.sent(CLUSTER, "n2", iso.view(second))
    rejected = iso.nacked(CLUSTER, "n2", "Invalid duration")  # the error names nothing: what changed
    assert [(r.name, r.version) for r in rejected] == [("a", a_bad.version)]
    assert iso.view(second).resources[CLUSTER] == {"a": a1, "b": b1}

    b2 = cluster("b", 3)  # another change flows; the rejected version stays held
    assert iso.view(snap(a_bad, b2)).resources[CLUSTER] == {"a": a1, "b": b2}
    assert [r.name for r in iso.rejected] == ["a"]

    a3 = cluster("a", 4)  # a new version of the rejected one is tried again
    third = snap(a3, b2)
    assert iso.view(third) is third
    assert iso.rejected == []


def test_a_rejected_resource_never_accepted_is_left_out_and_a_named_one_is_chosen_over_changes() -> None:
    iso = Isolation()
    iso.sent(CLUSTER, "n1", snap(cluster("a", 1)))
    iso.accepted(CLUSTER, "n1")
    sent = snap(cluster("a", 1), cluster("new", 1), cluster("other", 2))
    iso.sent(CLUSTER, "n2", sent)
    rejected = iso.nacked(CLUSTER, "n2", "Error adding/updating cluster(s) new: bad thing")
    assert [r.name for r in rejected] == ["new"]
    assert set(iso.view(sent).resources[CLUSTER]) == {"a", "other"}


def test_a_nack_of_an_unknown_nonce_or_before_any_accept_without_a_name_holds_nothing() -> None:
    iso = Isolation()
    assert iso.nacked(CLUSTER, "nope", "x") == []
    first = snap(cluster("a", 1))
    iso.sent(CLUSTER, "n1", first)
    assert iso.nacked(CLUSTER, "n1", "Invalid duration") == []  # nothing accepted to compare with
    assert iso.view(first) is first


def test_names_are_matched_as_whole_words() -> None:
    sent = {n: cluster(n, 1) for n in ("0.0.0.0_80", "0.0.0.0_8080", "web")}
    assert named_in("Error adding/updating listener(s) 0.0.0.0_8080: malformed IP address", sent) == ["0.0.0.0_8080"]
    assert named_in("cluster 'web' has no endpoints", sent) == ["web"]
    assert named_in("webby things", sent) == []
