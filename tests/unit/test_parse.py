"""parse_resource: every supported kind and apiVersion parses; every invalid document raises an
InvalidResource whose message names the resource (kind namespace/name) and the field path."""

from __future__ import annotations

from typing import Any

import pytest

from meshd.api.destinationrule import DestinationRule
from meshd.api.kube import EndpointSlice, Pod, Service
from meshd.api.meta import InvalidResource, ResourceKey
from meshd.api.networking import ServiceEntry, WorkloadEntry
from meshd.api.parse import parse_resource
from meshd.api.virtualservice import VirtualService

NETWORKING = ["networking.istio.io/v1", "networking.istio.io/v1beta1", "networking.istio.io/v1alpha3"]


def doc(
    kind: str, api_version: str, body: dict[str, Any], *, name: str = "x", namespace: str | None = "ns"
) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name}
    if namespace is not None:
        meta["namespace"] = namespace
    return {"apiVersion": api_version, "kind": kind, "metadata": meta, **body}


def route(*weights: int) -> list[dict[str, Any]]:
    return [{"destination": {"host": f"h{i}"}, "weight": w} for i, w in enumerate(weights)]


VS_SPEC = {
    "hosts": ["reviews"],
    "http": [
        {
            "match": [{"uri": {"prefix": "/v2"}, "headers": {"end-user": {"exact": "jason"}}}],
            "route": [
                {"destination": {"host": "reviews", "subset": "v2", "port": {"number": 9080}}, "weight": 75},
                {"destination": {"host": "reviews", "subset": "v1"}, "weight": 25},
            ],
        },
        {"route": [{"destination": {"host": "reviews", "subset": "v1"}}]},
    ],
}
DR_SPEC = {
    "host": "reviews",
    "trafficPolicy": {"tls": {"mode": "ISTIO_MUTUAL"}},
    "subsets": [{"name": "v1", "labels": {"version": "v1"}}, {"name": "v2", "labels": {"version": "v2"}}],
}
SE_SPEC = {
    "hosts": ["api.example.com"],
    "ports": [{"number": 443, "name": "https", "protocol": "HTTPS"}],
    "location": "MESH_EXTERNAL",
    "resolution": "STATIC",
    "endpoints": [{"address": "10.1.1.1", "ports": {"https": 8443}}],
}
WE_SPEC = {"address": "10.2.0.1", "labels": {"app": "vm"}, "serviceAccount": "vm-sa", "ports": {"http": 8080}}

VALID = [
    pytest.param(
        doc(
            "Service",
            "v1",
            {
                "spec": {
                    "ports": [{"name": "http", "port": 80, "targetPort": 8080}],
                    "selector": {"app": "a"},
                    "clusterIP": "10.96.0.10",
                }
            },
        ),
        Service,
        id="Service",
    ),
    pytest.param(
        doc("Pod", "v1", {"spec": {"serviceAccountName": "sa"}, "status": {"podIP": "10.0.0.5"}}), Pod, id="Pod"
    ),
    pytest.param(
        doc(
            "EndpointSlice",
            "discovery.k8s.io/v1",
            {
                "endpoints": [{"addresses": ["10.0.0.5"], "conditions": {"ready": True}}],
                "ports": [{"name": "http", "port": 8080}],
            },
        ),
        EndpointSlice,
        id="EndpointSlice",
    ),
    *[
        pytest.param(doc(kind, version, {"spec": spec}), model, id=f"{kind}-{version.rsplit('/', 1)[1]}")
        for kind, model, spec in [
            ("VirtualService", VirtualService, VS_SPEC),
            ("DestinationRule", DestinationRule, DR_SPEC),
            ("ServiceEntry", ServiceEntry, SE_SPEC),
            ("WorkloadEntry", WorkloadEntry, WE_SPEC),
        ]
        for version in NETWORKING
    ],
]


@pytest.mark.parametrize(("document", "model"), VALID)
def test_valid_documents_parse(document: dict[str, Any], model: type) -> None:
    parsed = parse_resource(document)
    assert isinstance(parsed, model)
    assert parsed.key == ResourceKey(document["kind"], "ns", "x")
    assert parsed.api_version == document["apiVersion"]


def test_parsed_fields_follow_camel_case_wire_names() -> None:
    svc = parse_resource(VALID[0].values[0])
    assert isinstance(svc, Service)
    assert (svc.spec.cluster_ip, svc.spec.ports[0].target_port) == ("10.96.0.10", 8080)
    vs = parse_resource(doc("VirtualService", NETWORKING[0], {"spec": VS_SPEC}))
    assert isinstance(vs, VirtualService)
    assert vs.spec.http[0].weights() == [75, 25]
    assert vs.spec.http[1].weights() == [100]


@pytest.mark.parametrize(
    ("given", "default_namespace", "expected"),
    [(None, "default", "default"), (None, "other", "other"), ("ns", "other", "ns")],
)
def test_missing_namespace_takes_the_default(given: str | None, default_namespace: str, expected: str) -> None:
    parsed = parse_resource(doc("Service", "v1", {}, namespace=given), default_namespace=default_namespace)
    assert parsed.metadata.namespace == expected


def _vs(http: list[dict[str, Any]], **spec: Any) -> dict[str, Any]:
    return doc(
        "VirtualService",
        "networking.istio.io/v1",
        {"spec": {"hosts": ["reviews"], "http": http, **spec}},
        name="reviews",
    )


INVALID = [
    pytest.param(
        _vs([{"route": route(0, 0)}]),
        "VirtualService ns/reviews",
        "spec.http[0].route",
        "weights add up to 0",
        id="weights-total-0",
    ),
    pytest.param(
        _vs([{"route": route(100)}, {"route": route(0, 0)}]),
        "VirtualService ns/reviews",
        "spec.http[1].route",
        "add up to 0",
        id="weights-second-route",
    ),
    pytest.param(
        _vs([{"route": []}]),
        "VirtualService ns/reviews",
        "spec.http[0].route",
        "one of route, redirect, directResponse or delegate is required",
        id="route-empty",
    ),
    pytest.param(
        _vs([{"match": [{"uri": {"exact": "/a", "prefix": "/"}}], "route": route(100)}]),
        "VirtualService ns/reviews",
        "spec.http[0].match[0].uri",
        "exactly one of exact, prefix, regex",
        id="stringmatch-exact-and-prefix",
    ),
    pytest.param(
        _vs([{"match": [{"uri": {"prefix": "/"}}, {"uri": {"prefix": "/", "regex": ".*"}}], "route": route(100)}]),
        "VirtualService ns/reviews",
        "spec.http[0].match[1].uri",
        "exactly one of",
        id="stringmatch-prefix-regex",
    ),
    pytest.param(
        _vs([{"match": [{"uri": {}}], "route": route(100)}]),
        "VirtualService ns/reviews",
        "spec.http[0].match[0].uri",
        "one of exact, prefix, regex is required",
        id="stringmatch-none-set",
    ),
    *[
        pytest.param(_vs([http]), "VirtualService ns/reviews", field, message, id=case)
        for case, http, field, message in (
            (
                "regex-lookahead",
                {"match": [{"uri": {"regex": "(?=x)"}}], "route": route(100)},
                "spec.http[0].match[0].uri.regex",
                "invalid RE2 regex",
            ),
            (
                "regex-header-repeat",
                {"match": [{"headers": {"x": {"regex": "a{1001}"}}}], "route": route(100)},
                "spec.http[0].match[0].headers.x.regex",
                "invalid repetition size",
            ),
            (
                "timeout-not-a-duration",
                {"timeout": "10 seconds", "route": route(100)},
                "spec.http[0].timeout",
                "is not a duration",
            ),
            (
                "per-try-timeout",
                {"retries": {"attempts": 2, "perTryTimeout": "1x"}, "route": route(100)},
                "spec.http[0].retries.perTryTimeout",
                "is not a duration",
            ),
            (
                "retry-on-unknown",
                {"retries": {"attempts": 2, "retryOn": "5xx,sometimes"}, "route": route(100)},
                "spec.http[0].retries.retryOn",
                "'sometimes' is neither",
            ),
            (
                "abort-status",
                {"fault": {"abort": {"httpStatus": 99}}, "route": route(100)},
                "spec.http[0].fault.abort.httpStatus",
                "not an HTTP status",
            ),
            (
                "abort-grpc-status",
                {"fault": {"abort": {"grpcStatus": "NOPE"}}, "route": route(100)},
                "spec.http[0].fault.abort.grpcStatus",
                "not a gRPC status name",
            ),
            (
                "delay-percentage",
                {"fault": {"delay": {"fixedDelay": "1s", "percentage": {"value": 150}}}, "route": route(100)},
                "spec.http[0].fault.delay.percentage.value",
                "less than or equal to 100",
            ),
            (
                "redirect-code",
                {"redirect": {"uri": "/x", "redirectCode": 305}},
                "spec.http[0].redirect.redirectCode",
                "not a redirect code",
            ),
            (
                "header-name",
                {"headers": {"request": {"set": {"bad/header": "x"}}}, "route": route(100)},
                "spec.http[0].headers.request.set.bad/header",
                "not a valid HTTP header name",
            ),
            (
                "header-host",
                {"headers": {"request": {"set": {"Host": "x"}}}, "route": route(100)},
                "spec.http[0].headers.request.set.Host",
                "use rewrite.authority",
            ),
            (
                "rewrite-both",
                {"rewrite": {"uri": "/a", "uriRegexRewrite": {"match": "a", "rewrite": "b"}}, "route": route(100)},
                "spec.http[0].rewrite.uriRegexRewrite",
                "only one of",
            ),
            (
                "cors-method",
                {"corsPolicy": {"allowMethods": ["GE T"]}, "route": route(100)},
                "spec.http[0].corsPolicy.allowMethods[0]",
                "not an HTTP method",
            ),
            (
                "mirror-and-mirrors",
                {"mirror": {"host": "a"}, "mirrors": [{"destination": {"host": "b"}}], "route": route(100)},
                "spec.http[0].mirrors",
                "only one of mirror or mirrors",
            ),
            (
                "delegate-and-route",
                {"delegate": {"name": "d"}, "route": route(100)},
                "spec.http[0].delegate",
                "cannot also route",
            ),
            (
                "query-prefix",
                {"match": [{"queryParams": {"q": {"prefix": "a"}}}], "route": route(100)},
                "spec.http[0].match[0].queryParams.q",
                "prefix match is not supported",
            ),
            (
                "regex-empty",
                {"match": [{"uri": {"regex": ""}}], "route": route(100)},
                "spec.http[0].match[0].uri.regex",
                "empty regex",
            ),
            (
                "cors-origin-empty-prefix",
                {"corsPolicy": {"allowOrigins": [{"prefix": ""}]}, "route": route(100)},
                "spec.http[0].corsPolicy.allowOrigins[0]",
                "empty prefix",
            ),
            ("timeout-too-long", {"timeout": "3000000h", "route": route(100)}, "spec.http[0].timeout", "longer than"),
            (
                "redirect-authority-crlf",
                {"redirect": {"authority": "a\r\nb"}},
                "spec.http[0].redirect.authority",
                "CR or LF",
            ),
            ("rewrite-uri-nul", {"rewrite": {"uri": "/a\0"}, "route": route(100)}, "spec.http[0].rewrite.uri", "NUL"),
            (
                "retry-attempts",
                {"retries": {"attempts": 2**40}, "route": route(100)},
                "spec.http[0].retries.attempts",
                "less than",
            ),
            (
                "direct-status",
                {"directResponse": {"status": 700}},
                "spec.http[0].directResponse.status",
                "less than or equal to 599",
            ),
        )
    ],
    pytest.param(
        doc("VirtualService", "networking.istio.io/v1", {"spec": {"hosts": ["a.*.com"]}}, name="r"),
        "VirtualService ns/r",
        "spec.hosts[0]",
        "only allowed as the leftmost label",
        id="hosts-wildcard-middle",
    ),
    pytest.param(
        doc("ServiceEntry", "networking.istio.io/v1beta1", {"spec": {"hosts": []}}, name="se"),
        "ServiceEntry ns/se",
        "spec.hosts",
        "at least 1 item",
        id="hosts-empty",
    ),
    pytest.param(
        doc("VirtualService", "networking.istio.io/v2", {"spec": {"hosts": ["a"]}}, name="r"),
        "VirtualService ns/r",
        "apiVersion",
        "'networking.istio.io/v2' is not one of networking.istio.io/v1",
        id="bad-apiVersion-networking",
    ),
    pytest.param(
        doc("Service", "apps/v1", {}, name="s"),
        "Service ns/s",
        "apiVersion",
        "is not one of v1",
        id="bad-apiVersion-core",
    ),
    pytest.param(
        doc("Frobnicator", "networking.istio.io/v1", {}, name="fr"),
        "Frobnicator ns/fr",
        "kind",
        "unsupported kind 'Frobnicator'",
        id="unknown-kind",
    ),
    pytest.param(
        doc("Service", "v1", {"spec": {"ports": [{"port": 80}, {"port": 70000}]}}, name="s"),
        "Service ns/s",
        "spec.ports[1].port",
        "less than or equal to 65535",
        id="service-port-too-big",
    ),
    pytest.param(
        doc(
            "ServiceEntry",
            "networking.istio.io/v1",
            {"spec": {"hosts": ["a.com"], "ports": [{"number": 0}]}},
            name="se",
        ),
        "ServiceEntry ns/se",
        "spec.ports[0].number",
        "greater than or equal to 1",
        id="se-port-zero",
    ),
    pytest.param(
        doc(
            "ServiceEntry",
            "networking.istio.io/v1",
            {"spec": {"hosts": ["a.com"], "ports": [{"number": 80, "targetPort": 65536}]}},
            name="se",
        ),
        "ServiceEntry ns/se",
        "spec.ports[0].targetPort",
        "less than or equal to 65535",
        id="se-target-port-too-big",
    ),
    pytest.param(
        _vs([{"route": [{"destination": {"host": "r", "port": {"number": 99999}}}]}]),
        "VirtualService ns/reviews",
        "spec.http[0].route[0].destination.port.number",
        "65535",
        id="destination-port-too-big",
    ),
    pytest.param(
        doc(
            "DestinationRule",
            "networking.istio.io/v1alpha3",
            {"spec": {"host": "reviews", "subsets": [{"name": "v1"}, {"name": "v2"}, {"name": "v1"}]}},
            name="dr",
        ),
        "DestinationRule ns/dr",
        "spec.subsets[2].name",
        "duplicate subset name 'v1'",
        id="duplicate-subset",
    ),
    pytest.param(
        doc(
            "ServiceEntry",
            "networking.istio.io/v1",
            {"spec": {"hosts": ["a.com"], "resolution": "STATIC", "endpoints": [{"address": ""}]}},
            name="se",
        ),
        "ServiceEntry ns/se",
        "spec.endpoints",
        "STATIC resolution requires an address",
        id="static-no-address",
    ),
    pytest.param(
        doc("EndpointSlice", "discovery.k8s.io/v1", {"endpoints": [{"addresses": []}]}, name="s-1"),
        "EndpointSlice ns/s-1",
        "endpoints[0].addresses",
        "at least 1 item",
        id="slice-no-addresses",
    ),
]


@pytest.mark.parametrize(("document", "resource", "field", "message"), INVALID)
def test_invalid_documents_name_resource_and_field(
    document: dict[str, Any], resource: str, field: str, message: str
) -> None:
    with pytest.raises(InvalidResource) as info:
        parse_resource(document, origin="mesh.yaml")
    err = info.value
    assert err.field == field
    assert message in err.message
    assert str(err) == f"mesh.yaml: {resource}: {field}: {err.message}"


@pytest.mark.parametrize(
    ("document", "field"),
    [
        pytest.param(["not", "a", "mapping"], "<root>", id="not-a-mapping"),
        pytest.param({"apiVersion": "v1", "kind": "Service"}, "metadata", id="no-metadata"),
        pytest.param({"apiVersion": "v1", "metadata": {"name": "s"}}, "kind", id="no-kind"),
    ],
)
def test_invalid_document_without_identity(document: Any, field: str) -> None:
    with pytest.raises(InvalidResource) as info:
        parse_resource(document)
    assert info.value.key is None
    assert info.value.field == field
    assert str(info.value).startswith(f"resource: {field}: ")


def test_istio_kinds_meshd_does_not_translate_are_refused_with_what_that_means() -> None:
    from meshd.api.parse import REFUSED_KINDS

    for kind, api_version in (("WorkloadGroup", "networking.istio.io/v1"),):
        doc = {"apiVersion": api_version, "kind": kind, "metadata": {"name": "x", "namespace": "ns"}, "spec": {}}
        with pytest.raises(InvalidResource) as info:
            parse_resource(doc, origin="f.yaml")
        err = info.value
        assert (str(err.key), err.field, err.origin) == (f"{kind} ns/x", "kind", "f.yaml")
        assert err.message == REFUSED_KINDS[kind] and "not supported by meshd" in err.message
