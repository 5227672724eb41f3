"""SotW endpoints and routes are pushed as they change; clusters and listeners always in full."""

from __future__ import annotations

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.endpoint.v3 import endpoint_pb2

from meshd.xds.resource import CLUSTER, ENDPOINT, Snapshot, make_resource
from meshd.xds.stream import Request, SotwStream


def _snapshot(endpoint_versions: dict[str, int], clusters: tuple[str, ...] = ("a", "b", "c")) -> Snapshot:
    eds = {}
    for name, n in endpoint_versions.items():
        cla = endpoint_pb2.ClusterLoadAssignment(cluster_name=name)
        cla.endpoints.add().lb_endpoints.add().load_balancing_weight.value = n
        eds[name] = make_resource(name, cla)
    cds = {n: make_resource(n, cluster_pb2.Cluster(name=n)) for n in clusters}
    return Snapshot(resources={CLUSTER: cds, ENDPOINT: eds})


def _ack_all(stream: SotwStream, responses: list, names: tuple[str, ...]) -> None:  # type: ignore[type-arg]
    for r in responses:
        stream.on_request(
            Request(r.type_url, version_info=r.version, response_nonce=r.nonce,
                    resource_names=names if r.type_url == ENDPOINT else ())
        )  # fmt: skip


def test_an_endpoint_push_carries_only_the_changed_assignment() -> None:
    names = ("a", "b", "c")
    stream = SotwStream(nonce_prefix="t")
    stream.on_request(Request(CLUSTER))
    stream.on_request(Request(ENDPOINT, resource_names=names))
    first = stream.responses(_snapshot({"a": 1, "b": 1, "c": 1}))
    assert [len(r.resources) for r in first] == [3, 3]  # initial: everything requested
    _ack_all(stream, first, names)
    stream.responses(_snapshot({"a": 1, "b": 1, "c": 1}))  # the post-CDS EDS answer

    pushed = stream.responses(_snapshot({"a": 1, "b": 2, "c": 1}))
    assert [(r.type_url, [x.name for x in r.resources]) for r in pushed] == [(ENDPOINT, ["b"])]


def test_a_cluster_push_is_always_the_whole_set() -> None:
    stream = SotwStream(nonce_prefix="t")
    stream.on_request(Request(CLUSTER))
    first = stream.responses(_snapshot({}, clusters=("a", "b")))
    _ack_all(stream, first, ())
    pushed = stream.responses(_snapshot({}, clusters=("a", "b", "c")))
    assert [x.name for x in pushed[0].resources] == ["a", "b", "c"]


def test_after_a_cluster_push_the_next_endpoint_request_gets_every_assignment() -> None:
    names = ("a", "b")
    stream = SotwStream(nonce_prefix="t")
    stream.on_request(Request(CLUSTER))
    stream.on_request(Request(ENDPOINT, resource_names=names))
    _ack_all(stream, stream.responses(_snapshot({"a": 1, "b": 1}, clusters=names)), names)
    last_eds = stream.responses(_snapshot({"a": 1, "b": 1}, clusters=names))
    _ack_all(stream, last_eds, names)
    cds = stream.responses(_snapshot({"a": 1, "b": 1}, clusters=("a", "b", "x")))
    assert [r.type_url for r in cds] == [CLUSTER]
    _ack_all(stream, cds, names)
    # Envoy re-requests the endpoints of the clusters it is warming (same names, last EDS nonce).
    _ack_all(stream, last_eds, names)
    eds = stream.responses(_snapshot({"a": 1, "b": 1}, clusters=("a", "b", "x")))
    assert [(r.type_url, [x.name for x in r.resources]) for r in eds] == [(ENDPOINT, ["a", "b"])]
