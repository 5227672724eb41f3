"""EnvoyFilter: parsing (named errors), selection order, and every patch operation on hand-built config."""

from __future__ import annotations

from typing import Any

import pytest
from envoy.config.cluster.v3.cluster_pb2 import Cluster
from envoy.config.listener.v3.listener_pb2 import Listener
from envoy.config.route.v3.route_pb2 import RouteConfiguration
from envoy.extensions.filters.network.http_connection_manager.v3.http_connection_manager_pb2 import (
    HttpConnectionManager,
)
from google.protobuf import json_format

from meshd.api.envoy_value import message_class, resolve_types
from meshd.api.envoyfilter import EnvoyFilter
from meshd.api.meta import InvalidResource
from meshd.api.parse import parse_resource
from meshd.model.world import build_world
from meshd.translate.envoyfilter.apply import ProxyConfig, apply_filters
from meshd.translate.envoyfilter.clusters import named_clusters
from meshd.translate.envoyfilter.merge import unpack
from meshd.translate.envoyfilter.selection import selected

HCM = "envoy.filters.network.http_connection_manager"
LUA, RT = "envoy.filters.http.lua", "envoy.filters.http.router"
HCM_TYPE = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
ROUTER = {"name": "envoy.filters.http.router",
          "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}  # fmt: skip


def _ef(patches: list[dict[str, Any]], *, name: str = "ef", ns: str = "default", **spec: Any) -> dict[str, Any]:
    return {"apiVersion": "networking.istio.io/v1alpha3", "kind": "EnvoyFilter",
            "metadata": {"name": name, "namespace": ns}, "spec": {"configPatches": patches, **spec}}  # fmt: skip


def _parse(doc: dict[str, Any]) -> EnvoyFilter:
    found = parse_resource(doc)
    assert isinstance(found, EnvoyFilter)
    return found


def _refused(doc: dict[str, Any]) -> InvalidResource:
    with pytest.raises(InvalidResource) as info:
        parse_resource(doc)
    return info.value


def _lua(name: str = "envoy.filters.http.lua") -> dict[str, Any]:
    return {"name": name, "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.lua.v3.Lua",
                                           "inline_code": "function envoy_on_request(h) end"}}  # fmt: skip


# -- parsing ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("patch", "field", "words"),
    [
        ({"applyTo": "BOOTSTRAP", "patch": {"operation": "REPLACE", "value": {}}},
         "spec.configPatches[0].patch.operation", "BOOTSTRAP takes MERGE only"),
        ({"applyTo": "BOOTSTRAP", "match": {"cluster": {"name": "x"}}, "patch": {"operation": "MERGE", "value": {}}},
         "spec.configPatches[0].match.cluster", "matches by context and proxy only"),
        ({"applyTo": "BOOTSTRAP", "patch": {"operation": "MERGE", "value": {"stats_config": {"bogus": 1}}}},
         "spec.configPatches[0].patch.value", 'no field named "bogus"'),
        ({"applyTo": "CLUSTER", "patch": {"operation": "MERGE", "value": {"connect_timeout": "1s", "bogus": 1}}},
         "spec.configPatches[0].patch.value", 'no field named "bogus"'),
        ({"applyTo": "HTTP_FILTER", "patch": {"operation": "ADD", "value": {
            "name": "x", "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.nope.v3.Nope"}}}},
         "spec.configPatches[0].patch.value", "unknown @type"),
        ({"applyTo": "HTTP_FILTER", "patch": {"operation": "ADD", "value": {"name": "x", "typed_config": {
            "@type": "type.googleapis.com/udpa.type.v1.TypedStruct",
            "type_url": "type.googleapis.com/envoy.extensions.filters.http.lua.v3.Lua", "value": {"bogus": 1}}}}},
         "spec.configPatches[0].patch.value", "TypedStruct value"),
        ({"applyTo": "CLUSTER", "patch": {"operation": "INSERT_BEFORE", "value": {}}},
         "spec.configPatches[0].patch.operation", "ordered items only"),
        ({"applyTo": "EXTENSION_CONFIG", "patch": {"operation": "MERGE", "value": {}}},
         "spec.configPatches[0].patch.operation", "ADD only"),
        ({"applyTo": "CLUSTER", "patch": {"operation": "MERGE"}}, "spec.configPatches[0].patch.value", "required"),
        ({"applyTo": "CLUSTER", "match": {"listener": {}}, "patch": {"operation": "REMOVE"}},
         "spec.configPatches[0].match", "takes a cluster match"),
        ({"applyTo": "CLUSTER", "match": {"cluster": {"sevice": "x"}}, "patch": {"operation": "REMOVE"}},
         "spec.configPatches[0].match.cluster.sevice", "unknown field"),
        ({"applyTo": "VIRTUAL_HOST", "match": {"routeConfiguration": {"gateway": "ns/gw"}},
          "patch": {"operation": "REMOVE"}}, "spec.configPatches[0].match.routeConfiguration.gateway", "not supported"),
        ({"applyTo": "HTTP_FILTER", "patch": {"operation": "MERGE", "filterClass": "AUTHZ", "value": {}}},
         "spec.configPatches[0].patch.filterClass", "only for the ADD"),
    ],
)  # fmt: skip
def test_invalid_patches_are_refused_naming_the_field(patch: dict[str, Any], field: str, words: str) -> None:
    error = _refused(_ef([patch]))
    assert error.field == field, error
    assert words in error.message, error


def test_target_refs_take_gateway_api_gateways_only() -> None:
    error = _refused(_ef([], targetRefs=[{"kind": "Service", "name": "x"}]))
    assert error.field == "spec.targetRefs[0].kind"
    error = _refused(_ef([], targetRefs=[{"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": "g"}],
                         workloadSelector={"labels": {"a": "b"}}))  # fmt: skip
    assert error.field == "spec.targetRefs"


def test_istio_local_rate_limit_sample_parses_as_typed_config() -> None:
    found = _parse(_ef([{"applyTo": "HTTP_FILTER", "patch": {"operation": "INSERT_BEFORE", "value": {
        "name": "envoy.filters.http.local_ratelimit", "typed_config": {
            "@type": "type.googleapis.com/udpa.type.v1.TypedStruct",
            "type_url": "type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit",
            "value": {"stat_prefix": "http_local_rate_limiter"}}}}}]))  # fmt: skip
    assert found.spec.config_patches[0].message is not None


# -- selection -------------------------------------------------------------------------------------------


def test_selection_order_is_root_then_namespace_then_workload_then_priority() -> None:
    docs = [
        _ef([], name="ns-wide", ns="shop"),
        _ef([], name="ns-workload", ns="shop", workloadSelector={"labels": {"app": "web"}}),
        _ef([], name="zz-early", ns="shop", priority=-5),
        _ef([], name="root-workload", ns="istio-system", workloadSelector={"labels": {"app": "web"}}),
        _ef([], name="root-wide", ns="istio-system"),
        _ef([], name="other-ns", ns="other"),
        _ef([], name="not-me", ns="shop", workloadSelector={"labels": {"app": "db"}}),
        _ef([], name="gw", ns="shop", targetRefs=[
            {"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": "edge"}]),
    ]  # fmt: skip
    world = build_world([_parse(d) for d in docs], domain_suffix="cluster.local")
    names = [
        f.metadata.name for f in selected(world, namespace="shop", labels={"app": "web"}, root_namespace="istio-system")
    ]
    assert names == ["root-wide", "root-workload", "zz-early", "ns-wide", "ns-workload"]
    gateway = {"gateway.networking.k8s.io/gateway-name": "edge"}
    names = [f.metadata.name for f in selected(world, namespace="shop", labels=gateway, root_namespace="istio-system")]
    assert names == ["root-wide", "zz-early", "ns-wide", "gw"]


# -- operations ------------------------------------------------------------------------------------------


def _listener(name: str, *, inbound: bool, filters: list[dict[str, Any]], port: int = 80) -> Listener:
    hcm = {"@type": HCM_TYPE, "stat_prefix": "x", "http_filters": filters,
           "route_config": {"name": "inline", "virtual_hosts": [{"name": "inbound|svc:80", "domains": ["*"],
                            "routes": [{"name": "default", "match": {"prefix": "/"},
                                        "route": {"cluster": "inbound|8000||"}}]}]}}  # fmt: skip
    doc = {"name": name, "address": {"socket_address": {"address": "0.0.0.0", "port_value": port}},
           "traffic_direction": "INBOUND" if inbound else "OUTBOUND",
           "listener_filters": [{"name": "envoy.filters.listener.original_dst", "typed_config": {
               "@type": "type.googleapis.com/envoy.extensions.filters.listener.original_dst.v3.OriginalDst"}}],
           "filter_chains": [{"filters": [{"name": HCM, "typed_config": hcm}]}]}  # fmt: skip
    resolve_types(doc)
    return json_format.ParseDict(doc, Listener())


def _config() -> ProxyConfig:
    assert message_class("envoy.extensions.filters.listener.original_dst.v3.OriginalDst") is not None
    cluster = json_format.ParseDict(
        {"name": "outbound|80||web.shop.svc.cluster.local", "connect_timeout": "0.25s", "type": "EDS",
         "eds_cluster_config": {"eds_config": {"ads": {}}}}, Cluster())  # fmt: skip
    route = json_format.ParseDict(
        {"name": "80", "virtual_hosts": [{"name": "web:80", "domains": ["web"], "routes": [
            {"name": "a", "match": {"prefix": "/a"}, "route": {"cluster": "c"}},
            {"name": "b", "match": {"prefix": "/"}, "redirect": {"path_redirect": "/x"}}]}]},
        RouteConfiguration())  # fmt: skip
    return ProxyConfig(
        listeners={
            "virtualInbound": _listener("virtualInbound", inbound=True, filters=[ROUTER], port=15006),
            "0.0.0.0_80": _listener("0.0.0.0_80", inbound=False, filters=[_lua("first"), ROUTER]),
        },
        clusters={cluster.name: cluster},
        routes={"80": route},
    )


def _http_filters(config: ProxyConfig, listener: str) -> list[str]:
    hcm = unpack(config.listeners[listener].filter_chains[0].filters[0].typed_config)
    assert isinstance(hcm, HttpConnectionManager)
    return [f.name for f in hcm.http_filters]


def _apply(patches: list[dict[str, Any]], *, router: bool = False, **meta: str) -> tuple[ProxyConfig, list[str]]:
    config, errors = apply_filters(_config(), (_parse(_ef(patches)),), router=router, metadata=meta)
    return config, [f"{e.field}: {e.message}" for e in errors]


def _http(op: str, sub: str | None, value: dict[str, Any] | None, ctx: str = "ANY", **extra: Any) -> dict[str, Any]:
    flt: dict[str, Any] = {"name": HCM, **({"subFilter": {"name": sub}} if sub else {})}
    patch: dict[str, Any] = {"operation": op, **({"value": value} if value is not None else {}), **extra}
    return {"applyTo": "HTTP_FILTER", "match": {"context": ctx, "listener": {"filterChain": {"filter": flt}}},
            "patch": patch}  # fmt: skip


@pytest.mark.parametrize(
    ("patch", "outbound"),
    [
        (_http("INSERT_BEFORE", RT, _lua()), ["first", LUA, RT]),
        (_http("INSERT_AFTER", "first", _lua()), ["first", LUA, RT]),
        (_http("INSERT_FIRST", None, _lua()), [LUA, "first", RT]),
        (_http("INSERT_BEFORE", None, _lua()), [LUA, "first", RT]),
        (_http("REMOVE", "first", None), [RT]),
        (_http("REPLACE", "first", _lua("second")), ["second", RT]),
        (_http("ADD", None, _lua(), filterClass="AUTHZ"), [LUA, "first", RT]),
        (_http("ADD", None, _lua(), filterClass="STATS"), ["first", LUA, RT]),
        (_http("INSERT_BEFORE", "absent", _lua()), ["first", RT]),
    ],
)  # fmt: skip
def test_http_filter_operations(patch: dict[str, Any], outbound: list[str]) -> None:
    patch["match"]["context"] = "SIDECAR_OUTBOUND"
    config, errors = _apply([patch])
    assert not errors
    assert _http_filters(config, "0.0.0.0_80") == outbound
    assert _http_filters(config, "virtualInbound") == [
        "envoy.filters.http.router"
    ]  # the inbound context is not matched


def test_a_filter_added_after_the_router_is_refused_and_rolled_back() -> None:
    config, errors = _apply([_http("REMOVE", "first", None), _http("ADD", None, _lua())])
    assert len(errors) == 1 and "follows the terminal filter" in errors[0], errors
    assert _http_filters(config, "0.0.0.0_80") == ["first", RT]  # nothing of it applied


def test_merge_of_a_typed_config_merges_inside_the_any_and_durations_are_replaced() -> None:
    config, errors = _apply([
        {"applyTo": "NETWORK_FILTER",
         "match": {"listener": {"portNumber": 80, "filterChain": {"filter": {"name": HCM}}}},
         "patch": {"operation": "MERGE",
                   "value": {"name": HCM, "typed_config": {"@type": HCM_TYPE, "stat_prefix": "merged"}}}},
        {"applyTo": "CLUSTER", "match": {"cluster": {"service": "web.shop.svc.cluster.local", "portNumber": 80}},
         "patch": {"operation": "MERGE", "value": {"connect_timeout": "5s"}}},
    ])  # fmt: skip
    assert not errors
    hcm = unpack(config.listeners["0.0.0.0_80"].filter_chains[0].filters[0].typed_config)
    assert isinstance(hcm, HttpConnectionManager)
    assert hcm.stat_prefix == "merged" and len(hcm.http_filters) == 2  # the rest of the HCM kept
    other = unpack(config.listeners["virtualInbound"].filter_chains[0].filters[0].typed_config)
    assert isinstance(other, HttpConnectionManager) and other.stat_prefix == "x"  # port 15006 not matched
    timeout = config.clusters["outbound|80||web.shop.svc.cluster.local"].connect_timeout
    assert (timeout.seconds, timeout.nanos) == (5, 0)


def test_resources_are_added_replaced_and_removed() -> None:
    new_cluster = {"name": "ratelimit", "type": "STRICT_DNS", "connect_timeout": "1s",
                   "load_assignment": {"cluster_name": "ratelimit"}}  # fmt: skip
    config, errors = _apply([
        {"applyTo": "CLUSTER", "patch": {"operation": "ADD", "value": new_cluster}},
        {"applyTo": "LISTENER", "match": {"context": "SIDECAR_INBOUND"}, "patch": {"operation": "REMOVE"}},
        {"applyTo": "LISTENER_FILTER", "match": {"listener": {"listenerFilter": "envoy.filters.listener.original_dst"}},
         "patch": {"operation": "REMOVE"}},
    ])  # fmt: skip
    assert not errors
    assert sorted(config.clusters) == ["outbound|80||web.shop.svc.cluster.local", "ratelimit"]
    assert list(config.listeners) == ["0.0.0.0_80"]
    assert not config.listeners["0.0.0.0_80"].listener_filters
    config, errors = _apply([{"applyTo": "CLUSTER", "patch": {"operation": "ADD", "value": {
        "name": "outbound|80||web.shop.svc.cluster.local", "connect_timeout": "1s"}}}])  # fmt: skip
    assert errors and "exists already" in errors[0]


def test_route_patches_on_rds_and_inline_route_configurations() -> None:
    config, errors = _apply([
        {"applyTo": "HTTP_ROUTE", "match": {"context": "SIDECAR_OUTBOUND", "routeConfiguration": {
            "portNumber": 80, "vhost": {"name": "web:80", "route": {"action": "REDIRECT"}}}},
         "patch": {"operation": "REMOVE"}},
        {"applyTo": "HTTP_ROUTE", "match": {"context": "SIDECAR_OUTBOUND", "routeConfiguration": {"vhost": {
            "route": {"name": "a"}}}},
         "patch": {"operation": "INSERT_BEFORE", "value": {"name": "z", "match": {"prefix": "/z"},
                                                            "direct_response": {"status": 418}}}},
        {"applyTo": "HTTP_ROUTE", "match": {"context": "SIDECAR_INBOUND", "routeConfiguration": {
            "vhost": {"name": "inbound|http|8000", "route": {"action": "ANY"}}}},
         "patch": {"operation": "MERGE", "value": {"route": {"timeout": "3s"}}}},
        {"applyTo": "VIRTUAL_HOST", "match": {"context": "SIDECAR_OUTBOUND", "routeConfiguration": {"name": "80"}},
         "patch": {"operation": "ADD", "value": {"name": "extra", "domains": ["extra"]}}},
    ])  # fmt: skip
    assert not errors, errors
    vhosts = config.routes["80"].virtual_hosts
    assert [r.name for r in vhosts[0].routes] == ["z", "a"]
    assert [v.name for v in vhosts] == ["web:80", "extra"]
    hcm = unpack(config.listeners["virtualInbound"].filter_chains[0].filters[0].typed_config)
    assert isinstance(hcm, HttpConnectionManager)
    assert hcm.route_config.virtual_hosts[0].routes[0].route.timeout.seconds == 3  # Istio's inbound vhost name
    outbound = unpack(config.listeners["0.0.0.0_80"].filter_chains[0].filters[0].typed_config)
    assert isinstance(outbound, HttpConnectionManager)
    assert not outbound.route_config.virtual_hosts[0].routes[0].route.HasField("timeout")  # outbound inline: no


def test_gateway_context_and_proxy_match() -> None:
    patch = {"applyTo": "CLUSTER", "match": {"context": "GATEWAY", "proxy": {"proxyVersion": "^1\\.2"}},
             "patch": {"operation": "MERGE", "value": {"connect_timeout": "9s"}}}  # fmt: skip

    def timeout(config: ProxyConfig) -> int:
        return config.clusters["outbound|80||web.shop.svc.cluster.local"].connect_timeout.seconds

    assert timeout(_apply([patch], router=True, ISTIO_VERSION="1.24.0")[0]) == 9
    assert timeout(_apply([patch], router=False, ISTIO_VERSION="1.24.0")[0]) == 0  # a sidecar: not GATEWAY
    assert timeout(_apply([patch], router=True, ISTIO_VERSION="1.19.0")[0]) == 0  # another version
    patch["match"]["proxy"] = {"metadata": {"ROLE": "edge"}}
    assert timeout(_apply([patch], router=True, ROLE="edge")[0]) == 9
    assert timeout(_apply([patch], router=True)[0]) == 0


TCP_PROXY = {"name": "envoy.filters.network.tcp_proxy", "typed_config": {
    "@type": "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
    "stat_prefix": "t", "cluster": "c"}}  # fmt: skip


def test_filter_chain_route_configuration_listener_and_extension_config_operations() -> None:
    ecds = {
        "name": "my-lua",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.lua.v3.Lua",
            "inline_code": "-- noop",
        },
    }
    config, errors = _apply([
        {"applyTo": "FILTER_CHAIN", "match": {"context": "SIDECAR_INBOUND"},
         "patch": {"operation": "MERGE", "value": {"name": "merged-chain"}}},
        {"applyTo": "FILTER_CHAIN", "match": {"context": "SIDECAR_OUTBOUND", "listener": {"name": "0.0.0.0_80"}},
         "patch": {"operation": "ADD", "value": {"name": "added", "filter_chain_match": {"destination_port": 81},
                                                  "filters": [TCP_PROXY]}}},
        {"applyTo": "ROUTE_CONFIGURATION",
         "match": {"context": "SIDECAR_OUTBOUND", "routeConfiguration": {"portNumber": 80}},
         "patch": {"operation": "MERGE", "value": {"validate_clusters": True}}},
        {"applyTo": "ROUTE_CONFIGURATION", "match": {"context": "SIDECAR_OUTBOUND"},
         "patch": {"operation": "ADD", "value": {"name": "extra-routes"}}},
        {"applyTo": "LISTENER", "match": {"context": "SIDECAR_OUTBOUND", "listener": {"portNumber": 80}},
         "patch": {"operation": "MERGE", "value": {"per_connection_buffer_limit_bytes": 4096}}},
        {"applyTo": "EXTENSION_CONFIG", "patch": {"operation": "ADD", "value": ecds}},
    ])  # fmt: skip
    assert not errors, errors
    assert [c.name for c in config.listeners["virtualInbound"].filter_chains] == ["merged-chain"]
    assert [c.name for c in config.listeners["0.0.0.0_80"].filter_chains] == ["", "added"]
    assert config.routes["80"].validate_clusters.value is True
    assert sorted(config.routes) == ["80", "extra-routes"]
    assert config.listeners["0.0.0.0_80"].per_connection_buffer_limit_bytes.value == 4096
    assert config.listeners["virtualInbound"].per_connection_buffer_limit_bytes.value == 0
    assert list(config.extensions) == ["my-lua"]


def test_listener_replace_and_filter_class_authn() -> None:
    replacement = {"name": "0.0.0.0_80", "address": {"socket_address": {"address": "0.0.0.0", "port_value": 80}},
                   "stat_prefix": "replaced"}  # fmt: skip
    config, errors = _apply([
        {"applyTo": "LISTENER", "match": {"listener": {"name": "0.0.0.0_80"}},
         "patch": {"operation": "REPLACE", "value": replacement}},
        _http("ADD", None, _lua(), ctx="SIDECAR_INBOUND", filterClass="AUTHN"),
    ])  # fmt: skip
    assert not errors, errors
    assert config.listeners["0.0.0.0_80"].stat_prefix == "replaced"
    assert not config.listeners["0.0.0.0_80"].filter_chains
    assert _http_filters(config, "virtualInbound") == [LUA, RT]  # no authn filter there: first


def test_filters_apply_in_order_and_a_failing_one_leaves_the_others() -> None:
    first = _parse(_ef([{"applyTo": "CLUSTER", "patch": {"operation": "MERGE", "value": {"connect_timeout": "2s"}}}],
                       name="first"))  # fmt: skip
    bad = _parse(_ef([{"applyTo": "CLUSTER", "patch": {"operation": "MERGE", "value": {"connect_timeout": "0s"}}}],
                     name="bad"))  # fmt: skip
    last = _parse(_ef([{"applyTo": "CLUSTER", "patch": {"operation": "MERGE", "value": {"connect_timeout": "3s"}}}],
                      name="last"))  # fmt: skip
    config, errors = apply_filters(_config(), (first, bad, last), router=False, metadata={})
    assert [e.key.name for e in errors if e.key is not None] == ["bad"]
    assert "duration gt 0ns" in errors[0].message
    assert config.clusters["outbound|80||web.shop.svc.cluster.local"].connect_timeout.seconds == 3
    config, _ = apply_filters(_config(), (last, first), router=False, metadata={})
    assert config.clusters["outbound|80||web.shop.svc.cluster.local"].connect_timeout.seconds == 2


def test_the_mesh_clusters_a_patch_names_are_found_in_any_string() -> None:
    """The rate-limit task's `cluster_name`, a Lua script's httpCall target; other text is not a cluster."""
    found = parse_resource(
        {
            "apiVersion": "networking.istio.io/v1alpha3",
            "kind": "EnvoyFilter",
            "metadata": {"name": "calls", "namespace": "istio-system"},
            "spec": {
                "configPatches": [
                    {
                        "applyTo": "HTTP_FILTER",
                        "patch": {
                            "operation": "INSERT_FIRST",
                            "value": {
                                "name": "envoy.filters.http.ratelimit",
                                "typed_config": {
                                    "@type": "type.googleapis.com/envoy.extensions.filters.http.ratelimit.v3.RateLimit",
                                    "domain": "ratelimit",
                                    "rate_limit_service": {
                                        "grpc_service": {
                                            "envoy_grpc": {
                                                "cluster_name": "outbound|8081||ratelimit.default.svc.cluster.local"
                                            }
                                        },
                                        "transport_api_version": "V3",
                                    },
                                },
                            },
                        },
                    },
                    {
                        "applyTo": "HTTP_FILTER",
                        "patch": {
                            "operation": "INSERT_FIRST",
                            "value": {
                                "name": "envoy.filters.http.lua",
                                "typed_config": {
                                    "@type": "type.googleapis.com/envoy.extensions.filters.http.lua.v3.Lua",
                                    "inline_code": "function envoy_on_request(h) h:httpCall("
                                    "'outbound|9080|v1|reviews.default.svc.cluster.local', {}, 'outbound|x', 10) end",
                                },
                            },
                        },
                    },
                ]
            },
        },
        origin="t",
    )
    assert isinstance(found, EnvoyFilter)
    assert named_clusters([found]) == {
        "outbound|8081||ratelimit.default.svc.cluster.local",
        "outbound|9080|v1|reviews.default.svc.cluster.local",
    }
