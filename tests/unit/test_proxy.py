"""parse_node_id: Istio node ids `<type>~<ip>~<pod>.<namespace>~<namespace>.svc.<domain>`; the node metadata
depth bound."""

from __future__ import annotations

import pytest

from meshd.translate.proxy import (
    MAX_METADATA_DEPTH,
    InvalidNodeId,
    InvalidNodeMetadata,
    Proxy,
    check_node_metadata,
    parse_node_id,
)


@pytest.mark.parametrize(
    ("node_id", "expected"),
    [
        pytest.param(
            "sidecar~10.0.0.5~reviews-v1-abc.bookinfo~bookinfo.svc.cluster.local",
            ("sidecar", "10.0.0.5", "reviews-v1-abc", "bookinfo", "bookinfo.svc.cluster.local"),
            id="sidecar-ipv4",
        ),
        pytest.param(
            "router~10.1.2.3~istio-ingressgateway-5d9f.istio-system~istio-system.svc.cluster.local",
            ("router", "10.1.2.3", "istio-ingressgateway-5d9f", "istio-system", "istio-system.svc.cluster.local"),
            id="router",
        ),
        pytest.param(
            "sidecar~fd00::5~web.default~default.svc.example.org",
            ("sidecar", "fd00::5", "web", "default", "default.svc.example.org"),
            id="ipv6-custom-domain",
        ),
        pytest.param(
            "sidecar~127.0.0.1~my.dotted.pod.ns~ns.svc.cluster.local",
            ("sidecar", "127.0.0.1", "my.dotted.pod", "ns", "ns.svc.cluster.local"),
            id="namespace-is-after-the-last-dot",
        ),
    ],
)
def test_valid_node_ids(node_id: str, expected: tuple[str, str, str, str, str]) -> None:
    kind, ip, pod, namespace, domain = expected
    assert parse_node_id(node_id) == Proxy(
        node_id=node_id, type=kind, ip=ip, pod=pod, namespace=namespace, dns_domain=domain
    )


@pytest.mark.parametrize(
    ("node_id", "message"),
    [
        pytest.param("sidecar~10.0.0.5~web.ns", "must have 4 '~'-separated parts", id="three-parts"),
        pytest.param(
            "sidecar~10.0.0.5~web.ns~ns.svc.cluster.local~x", "must have 4 '~'-separated parts", id="five-parts"
        ),
        pytest.param("", "must have 4 '~'-separated parts", id="empty"),
        pytest.param(
            "gateway~10.0.0.5~web.ns~ns.svc.cluster.local",
            "type 'gateway' is not one of sidecar, router",
            id="bad-type",
        ),
        pytest.param("Sidecar~10.0.0.5~web.ns~ns.svc.cluster.local", "type 'Sidecar' is not one of", id="type-case"),
        pytest.param(
            "sidecar~10.0.0.256~web.ns~ns.svc.cluster.local",
            "'10.0.0.256' is not an IP address",
            id="ip-octet-out-of-range",
        ),
        pytest.param(
            "sidecar~web-host~web.ns~ns.svc.cluster.local", "'web-host' is not an IP address", id="hostname-not-ip"
        ),
        pytest.param("sidecar~~web.ns~ns.svc.cluster.local", "'' is not an IP address", id="empty-ip"),
        pytest.param("sidecar~10.0.0.5~web~ns.svc.cluster.local", "'web' must be <pod>.<namespace>", id="no-namespace"),
        pytest.param(
            "sidecar~10.0.0.5~web.~ns.svc.cluster.local", "'web.' must be <pod>.<namespace>", id="empty-namespace"
        ),
        pytest.param("sidecar~10.0.0.5~.ns~ns.svc.cluster.local", "'.ns' must be <pod>.<namespace>", id="empty-pod"),
        pytest.param(
            "sidecar~10.0.0.5~web.ns~other.svc.cluster.local",
            "domain 'other.svc.cluster.local' must be ns.svc.<domain>",
            id="domain-other-namespace",
        ),
        pytest.param(
            "sidecar~10.0.0.5~web.ns~ns.cluster.local",
            "domain 'ns.cluster.local' must be ns.svc.<domain>",
            id="domain-without-svc",
        ),
    ],
)
def test_malformed_node_ids(node_id: str, message: str) -> None:
    with pytest.raises(InvalidNodeId) as info:
        parse_node_id(node_id)
    assert message in str(info.value)
    assert repr(node_id) in str(info.value)
    assert isinstance(info.value, ValueError)


def _nested(depth: int, *, container: str = "map") -> dict[str, object]:
    """Node metadata whose maps (or lists under the top map) nest `depth` levels, the top map included."""
    value: object = "REDIRECT"
    for _ in range(depth - 1):
        value = {"x": value} if container == "map" else [value]
    return {"INTERCEPTION_MODE": "REDIRECT", "deep": value} if depth > 1 else {"INTERCEPTION_MODE": "REDIRECT"}


ISTIO_METADATA = {
    "ISTIO_VERSION": "1.24.0",
    "LABELS": {"app": "web", "version": "v1"},
    "PROXY_CONFIG": {"tracing": {"zipkin": {"address": "zipkin:9411"}}, "proxyMetadata": {"A": "b"}},
    "APP_CONTAINERS": ["web"],
    "SDS": "true",
}


@pytest.mark.parametrize("metadata", [{}, ISTIO_METADATA, _nested(MAX_METADATA_DEPTH), _nested(20, container="list")])
def test_node_metadata_within_the_depth_bound_is_accepted(metadata: dict[str, object]) -> None:
    check_node_metadata(metadata)


@pytest.mark.parametrize("metadata", [_nested(MAX_METADATA_DEPTH + 1), _nested(40), _nested(5000, container="list")])
def test_node_metadata_nested_too_deep_is_refused(metadata: dict[str, object]) -> None:
    # Issue 20, low: a stream whose node metadata nested 40 levels was closed silently with status OK.
    with pytest.raises(InvalidNodeMetadata, match="nested deeper than 20 levels"):
        check_node_metadata(metadata)
