"""Kubernetes objects -> the mesh model: Istio's protocol selection (appProtocol, then the port-name
prefix), EndpointSlice conditions, headless and ExternalName services."""

from __future__ import annotations

import pytest

from meshd.api.kube import EndpointConditions
from meshd.api.parse import parse_resource
from meshd.model.derive import serves_traffic
from meshd.model.services import protocol_of
from meshd.model.world import build_world


@pytest.mark.parametrize(
    ("name", "app_protocol", "expected"),
    [
        ("http", None, "HTTP"),
        ("http-web", None, "HTTP"),
        ("httpweb", None, "UNKNOWN"),  # `<protocol>[-<suffix>]`: no dash, no prefix: sniffed
        ("http2-x", None, "HTTP2"),
        ("grpc", None, "GRPC"),
        ("grpc-web", None, "GRPC-WEB"),
        ("tcp-db", None, "TCP"),
        ("tls-x", None, "TLS"),
        ("https", None, "HTTPS"),
        ("mongo", None, "MONGO"),
        ("redis-main", None, "REDIS"),
        ("mysql", None, "MYSQL"),
        ("", None, "UNKNOWN"),  # unnamed: sniffed
        ("web", None, "UNKNOWN"),
        ("tcp", "http", "HTTP"),  # appProtocol wins over the name
        ("http", "tcp", "TCP"),
        ("anything", "HTTP2", "HTTP2"),
        ("x", "grpc", "GRPC"),
        ("x", "grpc-web", "GRPC-WEB"),
        ("x", "kubernetes.io/h2c", "HTTP2"),
        ("x", "kubernetes.io/grpc", "GRPC"),
        ("http-ok", "example.com/custom", "HTTP"),  # an unknown appProtocol falls back to the name
    ],
)
def test_protocol_selection(name: str, app_protocol: str | None, expected: str) -> None:
    assert protocol_of(name=name, app_protocol=app_protocol) == expected


def test_udp_and_sctp_ports_are_their_transport_whatever_their_name() -> None:
    assert protocol_of(name="http", transport="UDP") == "UDP"
    assert protocol_of(name="dns", transport="SCTP") == "SCTP"
    assert protocol_of(name="dns", transport="TCP") == "UNKNOWN"


@pytest.mark.parametrize(
    ("conditions", "serves"),
    [
        ({"ready": True}, True),
        ({}, True),  # unset ready: ready (EndpointSlice API semantics)
        ({"ready": False}, False),
        ({"ready": False, "serving": True, "terminating": True}, False),  # draining pod: out of the LB set
        ({"ready": True, "terminating": True}, False),
    ],
)
def test_endpoint_conditions(conditions: dict[str, bool], serves: bool) -> None:
    assert serves_traffic(EndpointConditions.model_validate(conditions)) is serves


def test_external_name_and_headless_services() -> None:
    docs = [
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "search", "namespace": "default"},
            "spec": {
                "type": "ExternalName",
                "externalName": "search.example.com.",
                "ports": [{"name": "https", "port": 443}],
            },
        },
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "db", "namespace": "default"},
            "spec": {"clusterIP": "None", "ports": [{"name": "tcp", "port": 5432}]},
        },
    ]
    world = build_world([parse_resource(d) for d in docs], domain_suffix="cluster.local")
    search = world.services["search.default.svc.cluster.local"]
    assert search.resolution == "DNS"
    [endpoint] = world.endpoints[("search.default.svc.cluster.local", 443)]
    assert (endpoint.address, endpoint.port) == ("search.example.com", 443)
    db = world.services["db.default.svc.cluster.local"]
    assert db.resolution == "EDS" and db.addresses == ()
