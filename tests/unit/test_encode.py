"""Responses assembled from pre-encoded entries decode to exactly what protobuf would build; streams sending
the same response share its bytes, which are always the response's own."""

from __future__ import annotations

from envoy.config.cluster.v3 import cluster_pb2
from envoy.service.discovery.v3 import discovery_pb2
from hypothesis import given, settings
from hypothesis import strategies as st

from meshd.xds.encode import ResponseBytes, delta_response, sotw_response
from meshd.xds.resource import CLUSTER, ENDPOINT, XdsResource, make_resource
from meshd.xds.stream import Response

RESOURCES = tuple(make_resource(n, cluster_pb2.Cluster(name=n, type=cluster_pb2.Cluster.EDS)) for n in ("a", "b" * 300))


def test_sotw_response_bytes_are_a_discovery_response() -> None:
    resp = Response(CLUSTER, nonce="n-1", version="v1", resources=RESOURCES)
    expected = discovery_pb2.DiscoveryResponse(
        version_info="v1", type_url=CLUSTER, nonce="n-1", resources=[r.to_any() for r in RESOURCES]
    )
    assert discovery_pb2.DiscoveryResponse.FromString(sotw_response(resp)) == expected


def test_delta_response_bytes_are_a_delta_discovery_response() -> None:
    resp = Response(CLUSTER, nonce="n-2", version="v2", resources=RESOURCES, removed=("gone", ""))
    expected = discovery_pb2.DeltaDiscoveryResponse(
        system_version_info="v2",
        type_url=CLUSTER,
        nonce="n-2",
        resources=[discovery_pb2.Resource(name=r.name, version=r.version, resource=r.to_any()) for r in RESOURCES],
        removed_resources=["gone", ""],
    )
    assert discovery_pb2.DeltaDiscoveryResponse.FromString(delta_response(resp)) == expected


def test_empty_response() -> None:
    decoded = discovery_pb2.DiscoveryResponse.FromString(
        sotw_response(Response(CLUSTER, nonce="n", version="", resources=()))
    )
    assert (decoded.version_info, list(decoded.resources), decoded.type_url) == ("", [], CLUSTER)


def _cluster(name: str, tag: int = 0) -> XdsResource:
    return make_resource(name, cluster_pb2.Cluster(name=name, alt_stat_name=f"t{tag}"))


responses = st.builds(
    Response,
    type_url=st.sampled_from([CLUSTER, ENDPOINT]),
    nonce=st.sampled_from(["p-1", "p-2", "p-10"]),
    version=st.sampled_from(["", "v1", "v2"]),
    resources=st.lists(st.sampled_from([_cluster("a"), _cluster("a", 1), _cluster("b")]), max_size=3).map(tuple),
    removed=st.sampled_from([(), ("gone",), ("gone", "other")]),
)


@settings(max_examples=200)
@given(seq=st.lists(st.tuples(responses, st.booleans()), min_size=1, max_size=30))
def test_shared_bytes_are_always_the_responses_own(seq: list[tuple[Response, bool]]) -> None:
    """Whatever the order of responses (with a tiny bound, so entries come and go), the bytes handed out
    are the response's own encoding."""
    shared = ResponseBytes(limit_entries=3, limit_bytes=2000)
    for resp, delta in seq:
        assert shared(resp, delta=delta) == (delta_response(resp) if delta else sotw_response(resp))


def test_the_streams_sending_the_same_response_share_its_bytes_and_others_do_not() -> None:
    shared = ResponseBytes()
    resources = (_cluster("a"), _cluster("b"))
    first = shared(Response(CLUSTER, nonce="p-1", version="v1", resources=resources), delta=False)
    again = shared(Response(CLUSTER, nonce="p-1", version="v1", resources=tuple(resources)), delta=False)
    assert again is first and (shared.hits, shared.misses) == (1, 1)
    # another nonce, the same content in other objects, delta: each its own
    other_nonce = shared(Response(CLUSTER, nonce="p-2", version="v1", resources=resources), delta=False)
    equal_objects = shared(
        Response(CLUSTER, nonce="p-1", version="v1", resources=(_cluster("a"), _cluster("b"))), delta=False
    )
    as_delta = shared(Response(CLUSTER, nonce="p-1", version="v1", resources=resources), delta=True)
    assert other_nonce is not first and equal_objects is not first and as_delta is not first
    assert equal_objects == first and shared.hits == 1


def test_the_shared_bytes_are_bounded_by_size_oldest_out() -> None:
    shared = ResponseBytes(limit_bytes=3000)
    big = [(_cluster("x" * 900 + str(i)),) for i in range(5)]
    for i, resources in enumerate(big):
        shared(Response(CLUSTER, nonce=f"p-{i}", version="v", resources=resources), delta=False)
    assert shared.hits == 0
    shared(Response(CLUSTER, nonce="p-4", version="v", resources=big[4]), delta=False)  # the newest: kept
    shared(Response(CLUSTER, nonce="p-0", version="v", resources=big[0]), delta=False)  # the oldest: gone
    assert (shared.hits, shared.misses) == (1, 6)
