"""Per-resource isolation of what a proxy rejected (xds/isolation.py)."""

from __future__ import annotations

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import base_pb2, extension_pb2
from envoy.extensions.filters.http.wasm.v3 import wasm_pb2 as http_wasm_pb2
from envoy.extensions.wasm.v3 import wasm_pb2
from google.protobuf import any_pb2, duration_pb2

from meshd.generate.nacks import ECDS
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
    assert iso.view(first) is first and not iso.holding  # nothing rejected: the shared snapshot itself
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
    assert [r.name for r in iso.rejected] == ["a"] and iso.holding  # (the hub lists only holding streams)

    a3 = cluster("a", 4)  # a new version of the rejected one is tried again
    third = snap(a3, b2)
    assert iso.view(third) is third
    assert iso.rejected == [] and not iso.holding


def test_a_rejected_resource_never_accepted_is_left_out_and_a_named_one_is_chosen_over_changes() -> None:
    iso = Isolation()
    iso.sent(CLUSTER, "n1", snap(cluster("a", 1)))
    iso.accepted(CLUSTER, "n1")
    sent = snap(cluster("a", 1), cluster("new", 1), cluster("other", 2))
    iso.sent(CLUSTER, "n2", sent)
    rejected = iso.nacked(CLUSTER, "n2", "Error adding/updating cluster(s) new: bad thing")
    assert [r.name for r in rejected] == ["new"]
    assert set(iso.view(sent).resources[CLUSTER]) == {"a", "other"}


def test_a_nack_of_an_unknown_nonce_or_of_a_first_response_that_tells_nothing_holds_nothing() -> None:
    iso = Isolation()
    assert iso.nacked(CLUSTER, "nope", "x") == []
    first = snap(cluster("a", 1), cluster("b", 1))
    iso.sent(CLUSTER, "n1", first)
    # nothing accepted to compare with, no name, no word of the error in one resource but not the other
    assert iso.nacked(CLUSTER, "n1", "Invalid duration") == []
    assert iso.view(first) is first


def test_a_rejected_first_response_holds_its_one_resource_or_the_one_the_error_quotes() -> None:
    """A proxy's very first response of a type is NACKed: nothing accepted to compare with, and Envoy's error
    about a Wasm config names the module's path, not the resource: the resource holding that path is held."""
    iso = Isolation()
    only = snap(cluster("a", 1))
    iso.sent(CLUSTER, "n1", only)
    assert [r.name for r in iso.nacked(CLUSTER, "n1", "Invalid duration")] == ["a"]
    assert iso.view(only).resources[CLUSTER] == {}

    def wasm(name: str, path: str) -> XdsResource:
        code = base_pb2.AsyncDataSource(local=base_pb2.DataSource(filename=path))
        vm = wasm_pb2.VmConfig(runtime="envoy.wasm.runtime.v8", code=code)
        config = wasm_pb2.PluginConfig(name=name, vm_config=vm)
        typed = any_pb2.Any()
        typed.Pack(http_wasm_pb2.Wasm(config=config))
        return make_resource(name, extension_pb2.TypedExtensionConfig(name=name, typed_config=typed))

    good, bad = wasm("default.good~1", "/modules/header.wasm"), wasm("default.bad~2", "/nonexistent/header.wasm")
    iso = Isolation()
    sent = Snapshot(resources={ECDS: {good.name: good, bad.name: bad}})
    iso.sent(ECDS, "n1", sent)
    error = "Error adding/updating filter config: Invalid path: /nonexistent/header.wasm"
    assert [r.name for r in iso.nacked(ECDS, "n1", error)] == ["default.bad~2"]
    assert iso.view(sent).resources[ECDS] == {"default.good~1": good}


def test_names_are_matched_as_whole_words() -> None:
    sent = {n: cluster(n, 1) for n in ("0.0.0.0_80", "0.0.0.0_8080", "web")}
    assert named_in("Error adding/updating listener(s) 0.0.0.0_8080: malformed IP address", sent) == ["0.0.0.0_8080"]
    assert named_in("cluster 'web' has no endpoints", sent) == ["web"]
    assert named_in("webby things", sent) == []
