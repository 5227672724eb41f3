"""Responses assembled from pre-encoded entries decode to exactly what protobuf would build."""

from __future__ import annotations

from envoy.config.cluster.v3 import cluster_pb2
from envoy.service.discovery.v3 import discovery_pb2

from meshd.xds.encode import delta_response, sotw_response
from meshd.xds.resource import CLUSTER, make_resource
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
