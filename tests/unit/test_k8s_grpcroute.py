"""GRPCRoute (gateway.networking.k8s.io v1), pure parts: the model's refusals by field, the method match as a
path match, precedence with HTTPRoutes of one hostname, the listener kinds that take it, backends, ReferenceGrants
and status (model/gateway_api/grpc.py)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from meshd.api.meta import InvalidResource, ResourceKey
from meshd.api.parse import parse_resource
from meshd.model.gateway_api.convert import convert
from meshd.model.gateway_api.inputs import inputs_of
from tests.unit.test_k8s_gateway_api import GW, http_route, k8s_gateway, service


def grpc_route(name: str = "g", ns: str = "apps", **spec: Any) -> dict[str, Any]:
    body = {"parentRefs": [{"name": "gw", "namespace": "infra"}],
            "rules": [{"backendRefs": [{"name": "web", "port": 80}]}], **spec}  # fmt: skip
    return {"apiVersion": GW, "kind": "GRPCRoute", "metadata": {"name": name, "namespace": ns}, "spec": body}


def _convert(*docs: dict[str, Any]) -> Any:
    resources = [parse_resource(d) for d in docs]
    services = {(r.metadata.namespace, r.metadata.name): frozenset({80}) for r in resources if r.kind == "Service"}
    return convert(inputs_of(resources), services=services, domain_suffix="cluster.local")


def _parent(result: Any, name: str = "g") -> dict[str, str]:
    parent = result.status[ResourceKey("GRPCRoute", "apps", name)]["parents"][0]
    return {c["type"]: c["reason"] for c in parent["conditions"]}


@pytest.mark.parametrize(
    ("rule", "field", "words"),
    [
        ({"matches": [{"method": {"type": "Exact"}}]}, "spec.rules[0].matches[0].method", "one of service or method"),
        ({"matches": [{"method": {"service": "a/b"}}]}, "spec.rules[0].matches[0].method", "not a valid gRPC service"),
        ({"matches": [{"method": {"type": "RegularExpression", "method": "("}}]}, "spec.rules[0].matches[0].method",
         "RE2 regex"),
        ({"filters": [{"type": "URLRewrite"}]}, "spec.rules[0].filters[0]", "not supported by meshd on a GRPCRoute"),
        ({"filters": [{"type": "ExtensionRef", "extensionRef": {"name": "x"}}]}, "spec.rules[0].filters[0]",
         "extension"),
        ({"sessionPersistence": {"sessionName": "x"}}, "spec.rules[0].sessionPersistence", "session persistence"),
        ({"backendRefs": [{"name": "web", "port": 80, "filters": [
            {"type": "RequestMirror", "requestMirror": {"backendRef": {"name": "a", "port": 80}}}]}]},
         "spec.rules[0].backendRefs[0]", "not supported"),
        ({"nope": 1}, "spec.rules[0].nope", "unknown field"),
    ],
)  # fmt: skip
def test_grpc_route_fields_are_checked_and_refused_by_name(rule: dict[str, Any], field: str, words: str) -> None:
    with pytest.raises(InvalidResource) as err:
        parse_resource(grpc_route(rules=[rule]))
    assert err.value.key == ResourceKey("GRPCRoute", "apps", "g")
    assert err.value.field.startswith(field) and words in err.value.message, err.value


def test_method_matches_become_path_matches_ordered_by_precedence() -> None:
    exact = {"method": {"service": "pkg.Echo", "method": "Say"}}
    service_only = {"method": {"service": "pkg.Echo"}}
    method_only = {"method": {"method": "Say"}}
    regex = {"method": {"type": "RegularExpression", "service": "pkg\\..*"}}
    headers = {"method": {"service": "pkg.Echo"}, "headers": [{"name": "X-Tier", "value": "gold"}]}
    route = grpc_route(rules=[{"matches": [regex, method_only, service_only, headers, exact],
                               "backendRefs": [{"name": "web", "port": 80}]}])  # fmt: skip
    [vs] = _convert(k8s_gateway(), route, service()).virtual_services
    seen = [
        (json.dumps(r.match[0].uri.model_dump(exclude_none=True)), sorted(r.match[0].headers)) for r in vs.spec.http
    ]
    assert seen == [
        ('{"exact": "/pkg.Echo/Say"}', []),
        ('{"prefix": "/pkg.Echo/"}', ["x-tier"]),  # more header matches first
        ('{"prefix": "/pkg.Echo/"}', []),
        ('{"regex": "/pkg\\\\..*/[^/]+"}', []),  # then regular expressions, the longer first
        ('{"regex": "/[^/]+/Say"}', []),
    ]
    assert all(r.route[0].destination.host == "web.apps.svc.cluster.local" for r in vs.spec.http)


def test_grpc_and_http_routes_of_one_hostname_share_a_virtual_service() -> None:
    grpc = grpc_route(rules=[{"matches": [{"method": {"service": "pkg.Echo", "method": "Say"}}],
                              "backendRefs": [{"name": "web", "port": 80}]}])  # fmt: skip
    [vs] = _convert(k8s_gateway(), grpc, http_route(), service()).virtual_services
    assert [r.name for r in vs.spec.http] == ["apps.g.grpc.0.0", "apps.r.0.0"]


def test_filters_weights_and_unusable_backends() -> None:
    rule = {
        "filters": [
            {"type": "RequestHeaderModifier", "requestHeaderModifier": {"set": [{"name": "x-a", "value": "1"}]}},
            {"type": "ResponseHeaderModifier", "responseHeaderModifier": {"remove": ["x-b"]}},
            {"type": "RequestMirror", "requestMirror": {"backendRef": {"name": "web", "port": 80}, "percent": 10}},
        ],
        "backendRefs": [
            {"name": "web", "port": 80, "weight": 3,
             "filters": [{"type": "RequestHeaderModifier", "requestHeaderModifier": {"add": [{"name": "x-c",
                                                                                          "value": "2"}]}}]},
            {"name": "gone", "port": 80, "weight": 1},
        ],
    }  # fmt: skip
    result = _convert(k8s_gateway(), grpc_route(rules=[rule]), service())
    [vs] = result.virtual_services
    [r] = vs.spec.http
    assert r.headers is not None and r.headers.request is not None and r.headers.request.set == {"x-a": "1"}
    assert r.headers.response is not None and r.headers.response.remove == ["x-b"]
    assert [m.destination.host for m in r.mirrors] == ["web.apps.svc.cluster.local"]
    assert [(d.destination.host, d.weight) for d in r.route] == [("web.apps.svc.cluster.local", 3)]
    assert _parent(result) == {"Accepted": "Accepted", "ResolvedRefs": "BackendNotFound"}
    # no usable backend at all: 503 (gRPC UNAVAILABLE)
    result = _convert(k8s_gateway(), grpc_route(rules=[{"backendRefs": [{"name": "gone", "port": 80}]}]))
    [vs] = result.virtual_services
    assert vs.spec.http[0].direct_response is not None and vs.spec.http[0].direct_response.status == 503


def test_listeners_take_grpc_routes_unless_their_kinds_exclude_them() -> None:
    gw = k8s_gateway(
        {"name": "http", "port": 80, "protocol": "HTTP", "allowedRoutes": {"namespaces": {"from": "All"},
                                                                           "kinds": [{"kind": "HTTPRoute"}]}},
    )  # fmt: skip
    assert _parent(_convert(gw, grpc_route(), service()))["Accepted"] == "NotAllowedByListeners"
    gw["spec"]["listeners"][0]["allowedRoutes"]["kinds"] = [{"kind": "GRPCRoute"}]
    result = _convert(gw, grpc_route(), service())
    assert _parent(result)["Accepted"] == "Accepted"
    listener = result.status[ResourceKey("KubernetesGateway", "infra", "gw")]["listeners"][0]
    assert listener["attachedRoutes"] == 1
    assert listener["supportedKinds"] == [{"group": "gateway.networking.k8s.io", "kind": "GRPCRoute"}]
    # default kinds of an HTTP listener: both
    default = _convert(k8s_gateway()).status[ResourceKey("KubernetesGateway", "infra", "gw")]["listeners"][0]
    assert [k["kind"] for k in default["supportedKinds"]] == ["HTTPRoute", "GRPCRoute"]
    # a TCP listener does not take it
    tcp = k8s_gateway(
        {"name": "tcp", "port": 9000, "protocol": "TCP", "allowedRoutes": {"namespaces": {"from": "All"}}}
    )
    assert _parent(_convert(tcp, grpc_route(), service()))["Accepted"] == "NotAllowedByListeners"


def test_hostnames_service_parents_and_reference_grants() -> None:
    gw = k8s_gateway({"name": "http", "port": 80, "protocol": "HTTP", "hostname": "*.example.com",
                      "allowedRoutes": {"namespaces": {"from": "All"}}})  # fmt: skip
    assert _parent(_convert(gw, grpc_route(hostnames=["a.other.org"]), service()))["Accepted"] == (
        "NoMatchingListenerHostname"
    )
    [vs] = _convert(gw, grpc_route(hostnames=["a.example.com", "b.other.org"]), service()).virtual_services
    assert vs.spec.hosts == ["a.example.com"]
    # a Service parent (GAMMA): a mesh VirtualService for the Service's host, on the GRPCRoute's paths
    mesh = grpc_route(
        parentRefs=[{"group": "", "kind": "Service", "name": "web", "port": 80}],
        rules=[{"matches": [{"method": {"service": "pkg.Echo", "method": "Say"}}],
                "backendRefs": [{"name": "web", "port": 80}]}],
    )  # fmt: skip
    result = _convert(gw, mesh, service())
    assert _parent(result)["Accepted"] == "Accepted"
    [mesh_vs] = [vs for vs in result.virtual_services if vs.metadata.name == "gamma~apps~web"]
    assert mesh_vs.spec.hosts == ["web.apps.svc.cluster.local"] and mesh_vs.spec.gateways == ["mesh"]
    assert "/pkg.Echo/Say" in json.dumps(mesh_vs.model_dump(by_alias=True, exclude_none=True)["spec"]["http"])
    missing = grpc_route(parentRefs=[{"group": "", "kind": "Service", "name": "nowhere", "port": 80}])
    assert _parent(_convert(gw, missing, service()))["Accepted"] == "NoMatchingParent"
    cross = grpc_route(rules=[{"backendRefs": [{"name": "web", "namespace": "team", "port": 80}]}])
    grant = {"apiVersion": "gateway.networking.k8s.io/v1beta1", "kind": "ReferenceGrant",
             "metadata": {"name": "g", "namespace": "team"},
             "spec": {"from": [{"group": "gateway.networking.k8s.io", "kind": "HTTPRoute", "namespace": "apps"}],
                      "to": [{"group": "", "kind": "Service"}]}}  # fmt: skip
    assert _parent(_convert(k8s_gateway(), cross, service(ns="team"), grant))["ResolvedRefs"] == "RefNotPermitted"
    grant["spec"]["from"][0]["kind"] = "GRPCRoute"
    assert _parent(_convert(k8s_gateway(), cross, service(ns="team"), grant))["ResolvedRefs"] == "ResolvedRefs"
