# ruff: noqa: E501  (the tables read best one case per line)
"""One Istio HTTPRoute -> Envoy routes (translate/http_route.py, http_match.py, retries.py,
http_filters.py), field by field."""

from __future__ import annotations

from typing import Any

import pytest
from envoy.extensions.filters.http.cors.v3 import cors_pb2
from envoy.extensions.filters.http.fault.v3 import fault_pb2
from google.protobuf import json_format

from meshd.api.destinationrule import DestinationRule
from meshd.api.meta import InvalidResource, ResourceKey
from meshd.api.parse import parse_resource
from meshd.api.virtualservice import HTTPRoute
from meshd.model.services import MeshService, ServicePort
from meshd.translate.http_match import MatchContext
from meshd.translate.http_route import RouteContext, http_routes

WEB = MeshService(
    hostname="web.default.svc.cluster.local",
    namespace="default",
    name="web",
    ports=(ServicePort(name="http", number=9080, protocol="HTTP", target_port=8080),),
)
TWO_PORTS = MeshService(
    hostname="multi.default.svc.cluster.local",
    namespace="default",
    name="multi",
    ports=(
        ServicePort(name="http", number=9080, protocol="HTTP", target_port=8080),
        ServicePort(name="http-admin", number=9090, protocol="HTTP", target_port=8090),
    ),
)
RULE = parse_resource(
    {
        "apiVersion": "networking.istio.io/v1",
        "kind": "DestinationRule",
        "metadata": {"name": "web", "namespace": "default"},
        "spec": {"host": "web", "subsets": [{"name": "v1", "labels": {"version": "v1"}}]},
    }
)
KEY = ResourceKey("VirtualService", "default", "vs")


def _resolve(host: str) -> tuple[str, MeshService | None]:
    fqdn = host if "." in host else f"{host}.default.svc.cluster.local"
    return fqdn, {s.hostname: s for s in (WEB, TWO_PORTS)}.get(fqdn)


def _rule_for(host: str) -> DestinationRule | None:
    assert isinstance(RULE, DestinationRule)
    return RULE if host == WEB.hostname else None


def _ctx(*, port: int = 9080, namespace: str = "default", labels: dict[str, str] | None = None) -> RouteContext:
    mine = labels or {}
    return RouteContext(
        key=KEY,
        namespace="default",
        resolve=_resolve,
        rule_for=_rule_for,
        match=MatchContext(
            port=port, namespace=namespace, source_matches=lambda sel: all(mine.get(k) == v for k, v in sel.items())
        ),
    )


def _routes(spec: dict[str, Any], **ctx: Any) -> list[dict[str, Any]]:
    route = HTTPRoute.model_validate({"route": [{"destination": {"host": "web"}}], **spec})
    built = http_routes(_ctx(**ctx), route, "spec.http[0]", default_name="default/vs")
    return [json_format.MessageToDict(r) for r in built]


def _one(spec: dict[str, Any], path: str) -> Any:
    (route,) = _routes(spec)
    value: Any = route
    for part in path.split("."):
        value = value[int(part)] if isinstance(value, list) else value[part]
    return value


CLUSTER = "outbound|9080||web.default.svc.cluster.local"
V1 = "outbound|9080|v1|web.default.svc.cluster.local"


@pytest.mark.parametrize(
    ("spec", "path", "expected"),
    [
        # match
        ({"match": [{"uri": {"exact": "/a"}}]}, "match.path", "/a"),
        ({"match": [{"uri": {"prefix": "/a"}}]}, "match.prefix", "/a"),
        ({"match": [{"uri": {"regex": "/a.*"}}]}, "match.safeRegex.regex", "/a.*"),
        ({"match": [{"uri": {"prefix": "/A"}, "ignoreUriCase": True}]}, "match.caseSensitive", False),
        ({"match": [{"scheme": {"exact": "https"}}]}, "match.headers.0", {"name": ":scheme", "stringMatch": {"exact": "https"}}),
        ({"match": [{"method": {"exact": "PUT"}}]}, "match.headers.0", {"name": ":method", "stringMatch": {"exact": "PUT"}}),
        ({"match": [{"authority": {"prefix": "web"}}]}, "match.headers.0", {"name": ":authority", "stringMatch": {"prefix": "web"}}),
        ({"match": [{"headers": {"X-User": {"exact": "jo"}}}]}, "match.headers.0", {"name": "x-user", "stringMatch": {"exact": "jo"}}),
        ({"match": [{"headers": {"x-user": {}}}]}, "match.headers.0", {"name": "x-user", "presentMatch": True}),
        ({"match": [{"headers": {"x-user": {"regex": "j.*"}}}]}, "match.headers.0.stringMatch.safeRegex.regex", "j.*"),
        ({"match": [{"withoutHeaders": {"x-user": {"exact": "jo"}}}]}, "match.headers.0", {"name": "x-user", "stringMatch": {"exact": "jo"}, "invertMatch": True}),
        ({"match": [{"withoutHeaders": {"x-user": {}}}]}, "match.headers.0", {"name": "x-user", "presentMatch": True, "invertMatch": True}),
        ({"match": [{"queryParams": {"v": {"exact": "2"}}}]}, "match.queryParameters.0", {"name": "v", "stringMatch": {"exact": "2"}}),
        ({"match": [{"queryParams": {"v": {"regex": "[0-9]"}}}]}, "match.queryParameters.0.stringMatch.safeRegex.regex", "[0-9]"),
        ({"match": [{"queryParams": {"v": {}}}]}, "match.queryParameters.0", {"name": "v", "presentMatch": True}),
        ({}, "match", {"prefix": "/"}),
        ({"name": "r", "match": [{"name": "m"}]}, "name", "r.m"),
        ({"match": [{"name": "m"}]}, "name", "m"),
        ({}, "name", "default/vs"),
        # destinations
        ({}, "route.cluster", CLUSTER),
        ({"route": [{"destination": {"host": "web", "subset": "v1", "port": {"number": 9080}}}]}, "route.cluster", V1),
        (
            {"route": [{"destination": {"host": "web"}, "weight": 30}, {"destination": {"host": "web", "subset": "v1"}, "weight": 70}]},
            "route.weightedClusters.clusters",
            [{"name": CLUSTER, "weight": 30}, {"name": V1, "weight": 70}],
        ),
        (
            {"route": [{"destination": {"host": "web"}, "weight": 100}, {"destination": {"host": "web", "subset": "v1"}, "weight": 0}]},
            "route.weightedClusters.clusters",
            [{"name": CLUSTER, "weight": 100}],
        ),
        (
            {"route": [
                {"destination": {"host": "web"}, "weight": 50, "headers": {"request": {"set": {"x-d": "a"}}, "response": {"remove": ["x-r"]}}},
                {"destination": {"host": "web", "subset": "v1"}, "weight": 50},
            ]},
            "route.weightedClusters.clusters.0",
            {"name": CLUSTER, "weight": 50, "requestHeadersToAdd": [{"header": {"key": "x-d", "value": "a"}, "appendAction": "OVERWRITE_IF_EXISTS_OR_ADD"}], "responseHeadersToRemove": ["x-r"]},
        ),
        ({"route": [{"destination": {"host": "web"}, "headers": {"request": {"add": {"x-d": "a"}}}}]}, "requestHeadersToAdd", [{"header": {"key": "x-d", "value": "a"}}]),
        # route-level headers, `%` literal
        ({"headers": {"request": {"set": {"x-q": "100%"}, "remove": ["x-a"]}}}, "requestHeadersToAdd.0.header.value", "100%%"),
        ({"headers": {"request": {"remove": ["X-A"]}}}, "requestHeadersToRemove", ["x-a"]),
        ({"headers": {"response": {"add": {"x-b": "1"}, "remove": ["server"]}}}, "responseHeadersToAdd", [{"header": {"key": "x-b", "value": "1"}}]),
        ({"headers": {"response": {"remove": ["server"]}}}, "responseHeadersToRemove", ["server"]),
        # redirect
        ({"route": [], "redirect": {"uri": "/n", "authority": "h", "port": 81, "scheme": "https", "redirectCode": 302}}, "redirect",
         {"pathRedirect": "/n", "hostRedirect": "h", "portRedirect": 81, "schemeRedirect": "https", "responseCode": "FOUND"}),
        ({"route": [], "redirect": {"uri": "/n"}}, "redirect", {"pathRedirect": "/n"}),
        ({"route": [], "redirect": {"scheme": "https", "derivePort": "FROM_PROTOCOL_DEFAULT"}}, "redirect.portRedirect", 443),
        ({"route": [], "redirect": {"authority": "h", "derivePort": "FROM_REQUEST_PORT"}}, "redirect", {"hostRedirect": "h", "portRedirect": 9080}),
        # direct response
        ({"route": [], "directResponse": {"status": 418, "body": {"string": "tea"}}}, "directResponse", {"status": 418, "body": {"inlineString": "tea"}}),
        ({"route": [], "directResponse": {"status": 200, "body": {"bytes": "aGk="}}}, "directResponse.body.inlineBytes", "aGk="),
        # rewrite
        ({"rewrite": {"uri": "/v2/"}}, "route.prefixRewrite", "/v2/"),
        ({"rewrite": {"authority": "other"}}, "route.hostRewriteLiteral", "other"),
        ({"rewrite": {"uriRegexRewrite": {"match": "^/a/(.*)", "rewrite": "/\\1"}}}, "route.regexRewrite", {"pattern": {"regex": "^/a/(.*)"}, "substitution": "/\\1"}),
        ({"match": [{"uri": {"prefix": "/a"}}], "rewrite": {"uri": "/"}}, "route.regexRewrite", {"pattern": {"regex": "^/a/*"}, "substitution": "/"}),
        ({"match": [{"uri": {"prefix": "/a/"}}], "rewrite": {"uri": "/"}}, "route.prefixRewrite", "/"),
        ({"match": [{"uri": {"prefix": "/a-b.c"}}], "rewrite": {"uri": "/"}}, "route.regexRewrite.pattern.regex", "^/a\\-b\\.c/*"),
        # timeout and retries
        ({}, "route.timeout", "0s"),
        ({"timeout": "1.5s"}, "route.timeout", "1.500s"),
        ({"timeout": "1.5s"}, "route.maxGrpcTimeout", "1.500s"),
        ({}, "route.maxGrpcTimeout", "0s"),
        ({}, "route.retryPolicy.numRetries", 2),
        ({}, "route.retryPolicy.retryOn", "connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes"),
        ({"retries": {"attempts": 4, "retryOn": "5xx,409"}}, "route.retryPolicy.retryOn", "5xx,retriable-status-codes"),
        ({"retries": {"attempts": 4, "retryOn": "5xx,409"}}, "route.retryPolicy.retriableStatusCodes", [409]),
        ({"retries": {"attempts": 4}}, "route.retryPolicy.numRetries", 4),
        ({"retries": {"attempts": 1, "perTryTimeout": "250ms"}}, "route.retryPolicy.perTryTimeout", "0.250s"),
        ({"retries": {"attempts": 1, "retryRemoteLocalities": True}}, "route.retryPolicy.retryPriority.name", "envoy.retry_priorities.previous_priorities"),
        # mirrors
        ({"mirror": {"host": "web", "subset": "v1"}}, "route.requestMirrorPolicies.0.cluster", V1),
        ({"mirror": {"host": "web"}}, "route.requestMirrorPolicies.0.runtimeFraction.defaultValue", {"numerator": 1000000, "denominator": "MILLION"}),
        ({"mirror": {"host": "web"}, "mirrorPercentage": {"value": 0.5}}, "route.requestMirrorPolicies.0.runtimeFraction.defaultValue.numerator", 5000),
        ({"mirror": {"host": "web"}, "mirrorPercent": 20}, "route.requestMirrorPolicies.0.runtimeFraction.defaultValue.numerator", 200000),
        ({"mirrors": [{"destination": {"host": "web"}}, {"destination": {"host": "web", "subset": "v1"}, "percentage": {"value": 5}}]},
         "route.requestMirrorPolicies.1.runtimeFraction.defaultValue.numerator", 50000),
    ],
)  # fmt: skip
def test_field_translation(spec: dict[str, Any], path: str, expected: Any) -> None:
    assert _one(spec, path) == expected


def test_retries_with_zero_attempts_mean_none() -> None:
    assert "retryPolicy" not in _one({"retries": {"attempts": 0}}, "route")


def _filter(spec: dict[str, Any], name: str, message: Any) -> Any:
    (route,) = http_routes(
        _ctx(), HTTPRoute.model_validate({"route": [{"destination": {"host": "web"}}], **spec}), "f", default_name="d"
    )
    out = message()
    assert route.typed_per_filter_config[name].Unpack(out)
    return json_format.MessageToDict(out)


def test_fault_is_a_per_route_filter_config() -> None:
    fault = {
        "delay": {"fixedDelay": "2s", "percentage": {"value": 10}},
        "abort": {"httpStatus": 418, "percentage": {"value": 50}},
    }
    config = _filter({"fault": fault}, "envoy.filters.http.fault", fault_pb2.HTTPFault)
    assert config["delay"] == {"fixedDelay": "2s", "percentage": {"numerator": 100000, "denominator": "MILLION"}}
    assert config["abort"] == {"httpStatus": 418, "percentage": {"numerator": 500000, "denominator": "MILLION"}}
    grpc = _filter({"fault": {"abort": {"grpcStatus": "UNAVAILABLE"}}}, "envoy.filters.http.fault", fault_pb2.HTTPFault)
    assert grpc["abort"]["grpcStatus"] == 14
    assert grpc["abort"]["percentage"]["numerator"] == 1000000  # absent percentage: every request


def test_cors_policy_is_a_per_route_filter_config() -> None:
    policy = {
        "allowOrigins": [{"exact": "https://a"}, {"regex": "https://.*\\.b"}],
        "allowMethods": ["GET", "PUT"],
        "allowHeaders": ["x-a"],
        "exposeHeaders": ["x-b"],
        "maxAge": "1m",
        "allowCredentials": False,
    }
    config = _filter({"corsPolicy": policy}, "envoy.filters.http.cors", cors_pb2.CorsPolicy)
    assert config == {
        "allowOriginStringMatch": [{"exact": "https://a"}, {"safeRegex": {"regex": "https://.*\\.b"}}],
        "allowMethods": "GET,PUT",
        "allowHeaders": "x-a",
        "exposeHeaders": "x-b",
        "maxAge": "60",
        "allowCredentials": False,
        "filterEnabled": {"defaultValue": {"numerator": 1000000, "denominator": "MILLION"}},
        "forwardNotMatchingPreflights": True,
    }
    legacy = _filter({"corsPolicy": {"allowOrigin": ["https://c"]}}, "envoy.filters.http.cors", cors_pb2.CorsPolicy)
    assert legacy["allowOriginStringMatch"] == [{"exact": "https://c"}]


def test_several_matches_are_ored_with_one_action_and_keep_their_order() -> None:
    routes = _routes(
        {"match": [{"uri": {"prefix": "/b"}}, {"uri": {"prefix": "/a"}, "headers": {"x": {"exact": "1"}}}]}
    )
    assert [r["match"].get("prefix") for r in routes] == ["/b", "/a"]
    assert routes[1]["match"]["headers"] == [{"name": "x", "stringMatch": {"exact": "1"}}]  # AND-ed with /a
    assert routes[0]["route"] == routes[1]["route"]


@pytest.mark.parametrize(
    ("match", "ctx", "applies"),
    [
        ({"port": 9080}, {}, True),
        ({"port": 9090}, {}, False),
        ({"port": 9090}, {"port": 9090}, True),
        ({"gateways": ["mesh"]}, {}, True),
        ({"gateways": ["istio-system/gw"]}, {}, False),
        ({"sourceNamespace": "default"}, {}, True),
        ({"sourceNamespace": "other"}, {}, False),
        ({"sourceLabels": {"app": "a"}}, {"labels": {"app": "a", "v": "1"}}, True),
        ({"sourceLabels": {"app": "a"}}, {"labels": {"app": "b"}}, False),
    ],
)
def test_matches_that_are_not_for_this_proxy_or_port_are_left_out(
    match: dict[str, Any], ctx: dict[str, Any], applies: bool
) -> None:
    spec = {"match": [match]}
    assert len(_routes(spec, **ctx)) == (1 if applies else 0)


def test_a_route_with_one_applicable_match_of_two_keeps_that_one() -> None:
    routes = _routes({"match": [{"port": 9090, "uri": {"exact": "/x"}}, {"uri": {"exact": "/y"}}]})
    assert [r["match"]["path"] for r in routes] == ["/y"]


@pytest.mark.parametrize(
    ("spec", "field", "message"),
    [
        ({"route": [{"destination": {"host": "web", "subset": "v9"}}]}, "spec.http[0].route[0].destination.subset", "subset 'v9'"),
        ({"route": [{"destination": {"host": "web", "port": {"number": 1234}}}]}, "spec.http[0].route[0].destination.port", "port 1234 is not a port"),
        ({"mirror": {"host": "web", "subset": "v9"}}, "spec.http[0].mirror.subset", "subset 'v9'"),
        ({"mirrors": [{"destination": {"host": "web", "port": {"number": 1}}}]}, "spec.http[0].mirrors[0].destination.port", "not a port"),
        ({"route": [{"destination": {"host": "multi"}}]}, "spec.http[0].route[0].destination.port", "has several ports"),
        ({"route": [], "directResponse": {"status": 200, "body": {"bytes": "%%%"}}}, "spec.http[0].directResponse.body.bytes", "base64"),
        ({"route": [], "directResponse": {"status": 200, "body": {"string": "x" * 5000}}}, "spec.http[0].directResponse.body", "limit"),
    ],
)  # fmt: skip
def test_references_the_route_cannot_honour_are_errors(spec: dict[str, Any], field: str, message: str) -> None:
    with pytest.raises(InvalidResource) as info:
        _routes(spec, port=7000)
    assert info.value.key == KEY and info.value.field == field and message in info.value.message


def test_redirect_and_direct_response_replace_the_route_action() -> None:
    for spec, action in (
        ({"redirect": {"uri": "/x"}}, "redirect"),
        ({"directResponse": {"status": 503}}, "direct_response"),
    ):
        (route,) = http_routes(_ctx(), HTTPRoute.model_validate(spec), "spec.http[0]", default_name="d")
        assert route.WhichOneof("action") == action
