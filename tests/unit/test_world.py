"""build_world: services, endpoints, rules and workloads indexed from parsed resources; semantic
problems become errors instead of exceptions."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from meshd.api.meta import Resource, ResourceKey
from meshd.api.parse import parse_resource
from meshd.model.services import Endpoint
from meshd.model.world import World, build_world, resolve_host

SUFFIX = "cluster.local"
REVIEWS = "reviews.bookinfo.svc.cluster.local"


def parse_all(text: str) -> list[Resource]:
    return [parse_resource(d) for d in yaml.safe_load_all(text) if d is not None]


def world(text: str, *, suffix: str = SUFFIX) -> World:
    return build_world(parse_all(text), domain_suffix=suffix)


def meta(name: str, namespace: str, created: str = "", **extra: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"name": name, "namespace": namespace, **extra}
    if created:
        out["creationTimestamp"] = created
    return out


def dump(*docs: dict[str, Any]) -> str:
    return yaml.safe_dump_all(docs)


def service(
    name: str = "reviews", namespace: str = "bookinfo", ports: list[dict[str, Any]] | None = None
) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": meta(name, namespace),
        "spec": {"ports": ports or [{"name": "http", "port": 9080}], "clusterIP": "10.96.0.9"},
    }


def pod(name: str, ip: str, labels: dict[str, str], account: str = "bookinfo-reviews") -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": meta(name, "bookinfo", labels=labels),
        "spec": {"serviceAccountName": account},
        "status": {"podIP": ip},
    }


def endpoint_slice(endpoints: list[dict[str, Any]], ports: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": meta("reviews-x1", "bookinfo", labels={"kubernetes.io/service-name": "reviews"}),
        "endpoints": endpoints,
        "ports": ports or [{"name": "http", "port": 9080}],
    }


# --- host names ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("host", "namespace", "suffix", "expected"),
    [
        ("reviews", "bookinfo", SUFFIX, REVIEWS),
        ("reviews", "other", "corp.internal", "reviews.other.svc.corp.internal"),
        ("reviews.bookinfo", "other", SUFFIX, "reviews.bookinfo"),
        ("reviews.bookinfo.svc.cluster.local", "other", SUFFIX, REVIEWS),
        ("api.example.com", "bookinfo", SUFFIX, "api.example.com"),
        ("*", "bookinfo", SUFFIX, "*"),
        ("*.example.com", "bookinfo", SUFFIX, "*.example.com"),
    ],
)
def test_resolve_host_short_names(host: str, namespace: str, suffix: str, expected: str) -> None:
    assert resolve_host(host, namespace=namespace, domain_suffix=suffix) == expected


@pytest.mark.parametrize(
    ("vs_namespace", "host", "indexed_as"),
    [
        pytest.param("bookinfo", "reviews", REVIEWS, id="short-name-in-own-namespace"),
        pytest.param("frontend", "reviews", "reviews.frontend.svc.cluster.local", id="short-name-other-namespace"),
        pytest.param("frontend", REVIEWS, REVIEWS, id="fqdn"),
    ],
)
def test_virtual_service_and_destination_rule_hosts_are_resolved(vs_namespace: str, host: str, indexed_as: str) -> None:
    w = world(
        dump(
            service(),
            {
                "apiVersion": "networking.istio.io/v1",
                "kind": "VirtualService",
                "metadata": meta("vs", vs_namespace),
                "spec": {"hosts": [host], "http": [{"route": [{"destination": {"host": host}}]}]},
            },
            {
                "apiVersion": "networking.istio.io/v1",
                "kind": "DestinationRule",
                "metadata": meta("dr", vs_namespace),
                "spec": {"host": host},
            },
        )
    )
    assert list(w.virtual_services) == [indexed_as]
    assert list(w.destination_rules) == [indexed_as]
    assert list(w.services) == [REVIEWS]
    assert w.services[REVIEWS].addresses == ("10.96.0.9",)


# --- EndpointSlices -----------------------------------------------------------------------------

POD_LABELS = {"app": "reviews", "version": "v1"}


@pytest.mark.parametrize(
    ("slice_endpoint", "expected"),
    [
        pytest.param(
            {"addresses": ["10.0.0.1"], "targetRef": {"kind": "Pod", "name": "reviews-v1"}},
            [Endpoint("10.0.0.1", 9080, tuple(sorted(POD_LABELS.items())), "bookinfo-reviews", "reviews-v1")],
            id="labels-from-target-ref-pod",
        ),
        pytest.param(
            # The targetRef wins over an address that belongs to another pod.
            {"addresses": ["10.0.0.2"], "targetRef": {"kind": "Pod", "name": "reviews-v1", "namespace": "bookinfo"}},
            [Endpoint("10.0.0.2", 9080, tuple(sorted(POD_LABELS.items())), "bookinfo-reviews", "reviews-v1")],
            id="target-ref-beats-address",
        ),
        pytest.param(
            {"addresses": ["10.0.0.2"]},
            [Endpoint("10.0.0.2", 9080, (("app", "reviews"), ("version", "v2")), "other-sa", "reviews-v2")],
            id="no-target-ref-labels-by-address",
        ),
        pytest.param(
            {"addresses": ["10.0.0.9"], "targetRef": {"kind": "Pod", "name": "gone"}},
            [Endpoint("10.0.0.9", 9080)],
            id="unknown-pod-no-labels",
        ),
        pytest.param(
            {"addresses": ["10.0.0.1"], "conditions": {"ready": True}},
            [Endpoint("10.0.0.1", 9080, tuple(sorted(POD_LABELS.items())), "bookinfo-reviews", "reviews-v1")],
            id="ready-true",
        ),
        pytest.param({"addresses": ["10.0.0.1"], "conditions": {"ready": False}}, [], id="ready-false-excluded"),
        pytest.param(
            {"addresses": ["10.0.0.1"], "conditions": {"ready": False, "serving": True}},
            [],
            id="not-ready-but-serving-excluded",
        ),
        pytest.param(
            {"addresses": ["10.0.0.7", "10.0.0.8"]},
            [Endpoint("10.0.0.7", 9080), Endpoint("10.0.0.8", 9080)],
            id="every-address",
        ),
    ],
)
def test_endpoint_slice_endpoints(slice_endpoint: dict[str, Any], expected: list[Endpoint]) -> None:
    w = world(
        dump(
            service(),
            pod("reviews-v1", "10.0.0.1", POD_LABELS),
            pod("reviews-v2", "10.0.0.2", {"app": "reviews", "version": "v2"}, account="other-sa"),
            endpoint_slice([slice_endpoint]),
        )
    )
    assert list(w.endpoints.get((REVIEWS, 9080), ())) == expected


@pytest.mark.parametrize(
    ("service_ports", "slice_ports", "expected"),
    [
        pytest.param([{"name": "http", "port": 80}], [{"name": "http", "port": 8080}], {80: 8080}, id="by-name"),
        pytest.param(
            [{"name": "http", "port": 80}], [{"name": "web", "port": 8080}], {80: 8080}, id="single-port-fallback"
        ),
        pytest.param(
            [{"name": "http", "port": 80}, {"name": "grpc", "port": 90}],
            [{"name": "grpc", "port": 9090}, {"name": "http", "port": 8080}],
            {80: 8080, 90: 9090},
            id="multi-port",
        ),
        pytest.param(
            [{"name": "http", "port": 80}, {"name": "grpc", "port": 90}],
            [{"name": "metrics", "port": 15090}],
            {},
            id="multi-port-no-match",
        ),
    ],
)
def test_endpoint_slice_ports_match_service_ports(
    service_ports: list[dict[str, Any]], slice_ports: list[dict[str, Any]], expected: dict[int, int]
) -> None:
    w = world(dump(service(ports=service_ports), endpoint_slice([{"addresses": ["10.0.0.1"]}], ports=slice_ports)))
    got = {port: [e.port for e in eps] for (host, port), eps in w.endpoints.items() if host == REVIEWS}
    assert got == {port: [target] for port, target in expected.items()}


def test_endpoint_slice_of_unknown_service_is_ignored() -> None:
    w = world(dump(endpoint_slice([{"addresses": ["10.0.0.1"]}])))
    assert dict(w.endpoints) == {}


# --- ServiceEntry ---------------------------------------------------------------------------------


def service_entry(spec: dict[str, Any], namespace: str = "ext", created: str = "") -> dict[str, Any]:
    return {
        "apiVersion": "networking.istio.io/v1",
        "kind": "ServiceEntry",
        "metadata": meta("se-" + spec["hosts"][0].replace("*", "w"), namespace, created),
        "spec": spec,
    }


def workload_entry(
    name: str, namespace: str, address: str, labels: dict[str, str], ports: dict[str, int]
) -> dict[str, Any]:
    return {
        "apiVersion": "networking.istio.io/v1",
        "kind": "WorkloadEntry",
        "metadata": meta(name, namespace),
        "spec": {"address": address, "labels": labels, "ports": ports, "serviceAccount": "vm-sa"},
    }


HTTPS = [{"number": 443, "name": "https", "protocol": "HTTPS"}]


@pytest.mark.parametrize(
    ("spec", "host", "resolution", "expected"),
    [
        pytest.param(
            {
                "hosts": ["api.example.com"],
                "ports": HTTPS,
                "resolution": "STATIC",
                "endpoints": [
                    {"address": "10.1.1.2"},
                    {"address": "10.1.1.1", "ports": {"https": 8443}, "labels": {"zone": "a"}, "weight": 3},
                ],
            },
            "api.example.com",
            "EDS",
            [Endpoint("10.1.1.1", 8443, (("zone", "a"),), weight=3), Endpoint("10.1.1.2", 443)],
            id="static-endpoints",
        ),
        pytest.param(
            {
                "hosts": ["api.example.com"],
                "resolution": "STATIC",
                "endpoints": [{"address": "10.1.1.1"}],
                "ports": [{"number": 443, "name": "https", "protocol": "HTTPS", "targetPort": 9443}],
            },
            "api.example.com",
            "EDS",
            [Endpoint("10.1.1.1", 9443)],
            id="static-target-port",
        ),
        pytest.param(
            {"hosts": ["httpbin.org"], "ports": HTTPS, "resolution": "DNS"},
            "httpbin.org",
            "DNS",
            [Endpoint("httpbin.org", 443)],
            id="dns-host-is-the-endpoint",
        ),
        pytest.param(
            {"hosts": ["httpbin.org"], "ports": HTTPS, "resolution": "DNS_ROUND_ROBIN"},
            "httpbin.org",
            "DNS_ROUND_ROBIN",
            [Endpoint("httpbin.org", 443)],
            id="dns-round-robin",
        ),
        pytest.param(
            {
                "hosts": ["httpbin.org"],
                "ports": HTTPS,
                "resolution": "DNS",
                "endpoints": [{"address": "eu.httpbin.org"}, {"address": "us.httpbin.org"}],
            },
            "httpbin.org",
            "DNS",
            [Endpoint("eu.httpbin.org", 443), Endpoint("us.httpbin.org", 443)],
            id="dns-listed-endpoints",
        ),
        pytest.param(
            {"hosts": ["httpbin.org"], "ports": HTTPS, "resolution": "DNS", "endpoints": [{"labels": {"zone": "a"}}]},
            "httpbin.org",
            "DNS",
            [Endpoint("httpbin.org", 443, (("zone", "a"),))],
            id="dns-endpoint-without-address-uses-host",
        ),
        pytest.param(
            {"hosts": ["*.example.com"], "ports": HTTPS, "resolution": "NONE"},
            "*.example.com",
            "NONE",
            [],
            id="resolution-none",
        ),
        pytest.param(
            {"hosts": ["legacy"], "ports": HTTPS, "resolution": "STATIC", "endpoints": [{"address": "10.9.9.9"}]},
            "legacy.ext.svc.cluster.local",
            "EDS",
            [Endpoint("10.9.9.9", 443)],
            id="short-host-resolved",
        ),
    ],
)
def test_service_entry_resolution_and_endpoints(
    spec: dict[str, Any], host: str, resolution: str, expected: list[Endpoint]
) -> None:
    w = world(dump(service_entry(spec)))
    assert w.errors == ()
    assert list(w.services) == [host]
    assert w.services[host].resolution == resolution
    assert w.services[host].namespace == "ext"
    assert list(w.endpoints.get((host, 443), ())) == expected


def test_service_entry_workload_selector_selects_workload_entries_in_its_namespace() -> None:
    w = world(
        dump(
            service_entry(
                {
                    "hosts": ["vm.example.internal"],
                    "resolution": "STATIC",
                    "ports": [{"number": 80, "name": "http"}],
                    "workloadSelector": {"labels": {"app": "vm"}},
                },
                namespace="vms",
            ),
            workload_entry("vm-1", "vms", "10.2.0.1", {"app": "vm", "zone": "a"}, {"http": 8080}),
            workload_entry("vm-2", "vms", "10.2.0.2", {"app": "vm"}, {}),
            workload_entry("other-app", "vms", "10.2.0.3", {"app": "db"}, {"http": 8080}),
            workload_entry("other-ns", "elsewhere", "10.2.0.4", {"app": "vm"}, {"http": 8080}),
        )
    )
    assert list(w.endpoints[("vm.example.internal", 80)]) == [
        Endpoint("10.2.0.1", 8080, (("app", "vm"), ("zone", "a")), "vm-sa"),
        Endpoint("10.2.0.2", 80, (("app", "vm"),), "vm-sa"),
    ]
    # Every WorkloadEntry is a workload a sidecar may be attached to.
    assert sorted(w.workloads) == ["10.2.0.1", "10.2.0.2", "10.2.0.3", "10.2.0.4"]
    assert w.workloads["10.2.0.1"].service_account == "vm-sa"


def test_service_entry_for_an_existing_host_is_an_error() -> None:
    w = world(
        dump(
            service(),
            service_entry({"hosts": [REVIEWS, "new.example.com"], "ports": HTTPS, "resolution": "DNS"}),
        )
    )
    assert sorted(w.services) == ["new.example.com", REVIEWS]
    assert w.services[REVIEWS].resolution == "EDS"  # the Kubernetes Service stays
    [err] = w.errors
    assert (err.key, err.field) == (ResourceKey("ServiceEntry", "ext", "se-" + REVIEWS), "spec.hosts")
    assert REVIEWS in err.message


# --- DestinationRules and VirtualServices ---------------------------------------------------------


def destination_rule(name: str, namespace: str, host: str, created: str) -> dict[str, Any]:
    return {
        "apiVersion": "networking.istio.io/v1",
        "kind": "DestinationRule",
        "metadata": meta(name, namespace, created),
        "spec": {"host": host},
    }


def test_destination_rules_for_one_host_in_two_namespaces_are_both_kept() -> None:
    # Istio allows one rule per namespace (e.g. a client namespace's own rule with exportTo: ["."]).
    w = world(
        dump(
            destination_rule("dr-new", "other", REVIEWS, created="2024-02-01T00:00:00Z"),
            destination_rule("dr-old", "bookinfo", "reviews", created="2024-01-01T00:00:00Z"),
        )
    )
    assert not w.errors
    assert [r.metadata.name for r in w.rules_by_host[REVIEWS]] == ["dr-old", "dr-new"]
    assert w.destination_rules[REVIEWS].metadata.name == "dr-old"


@pytest.mark.parametrize(
    ("first", "second"),
    [
        pytest.param(("dr-old", "bookinfo", "reviews"), ("dr-new", "bookinfo", REVIEWS), id="short-and-fqdn"),
        pytest.param(("dr-old", "bookinfo", REVIEWS), ("dr-new", "bookinfo", REVIEWS), id="same-host"),
    ],
)
def test_duplicate_destination_rule_in_one_namespace_is_an_error(
    first: tuple[str, str, str], second: tuple[str, str, str]
) -> None:
    # The newer rule is listed first: age, not input order, decides which one stays.
    w = world(
        dump(
            destination_rule(*second, created="2024-02-01T00:00:00Z"),
            destination_rule(*first, created="2024-01-01T00:00:00Z"),
        )
    )
    assert w.destination_rules[REVIEWS].metadata.name == "dr-old"
    [err] = w.errors
    assert (err.key, err.field) == (ResourceKey("DestinationRule", second[1], "dr-new"), "spec.host")
    assert err.message.startswith(f"{REVIEWS} already has DestinationRule")
    assert err.message.endswith(f" {first[1]}/dr-old; this rule is ignored")


@pytest.mark.parametrize(
    ("gateways", "applies_to_sidecars"),
    [
        pytest.param(None, True, id="no-gateways"),
        pytest.param(["mesh"], True, id="mesh"),
        pytest.param(["istio-system/ingress", "mesh"], True, id="gateway-and-mesh"),
        pytest.param(["istio-system/ingress"], False, id="gateway-only"),
    ],
)
def test_virtual_service_bound_to_gateways_only_is_ignored(
    gateways: list[str] | None, applies_to_sidecars: bool
) -> None:
    spec: dict[str, Any] = {"hosts": ["reviews"], "http": [{"route": [{"destination": {"host": "reviews"}}]}]}
    if gateways is not None:
        spec["gateways"] = gateways
    w = world(
        dump(
            service(),
            {
                "apiVersion": "networking.istio.io/v1",
                "kind": "VirtualService",
                "metadata": meta("vs", "bookinfo"),
                "spec": spec,
            },
        )
    )
    assert (REVIEWS in w.virtual_services) is applies_to_sidecars


def test_virtual_services_for_a_host_are_oldest_first() -> None:
    def vs(name: str, created: str) -> dict[str, Any]:
        return {
            "apiVersion": "networking.istio.io/v1",
            "kind": "VirtualService",
            "metadata": meta(name, "bookinfo", created),
            "spec": {"hosts": ["reviews"], "http": [{"route": [{"destination": {"host": "reviews"}}]}]},
        }

    w = world(dump(vs("c", "2024-03-01T00:00:00Z"), vs("a", "2024-01-01T00:00:00Z"), vs("b", "2024-02-01T00:00:00Z")))
    assert [v.metadata.name for v in w.virtual_services[REVIEWS]] == ["a", "b", "c"]


def test_build_world_is_deterministic() -> None:
    text = dump(service(), pod("reviews-v1", "10.0.0.1", POD_LABELS), endpoint_slice([{"addresses": ["10.0.0.1"]}]))
    resources = parse_all(text)
    assert build_world(resources, domain_suffix=SUFFIX) == build_world(list(reversed(resources)), domain_suffix=SUFFIX)
