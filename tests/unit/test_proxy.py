"""parse_node_id: Istio node ids `<type>~<ip>~<pod>.<namespace>~<namespace>.svc.<domain>`."""

from __future__ import annotations

import pytest

from meshd.translate.proxy import InvalidNodeId, Proxy, parse_node_id


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
