"""WasmPlugin: the model's refusals (named fields), selection (root namespace, namespace, workload,
targetRefs), placement by phase and priority among meshd's filters, traffic selectors, and the ECDS resource
Envoy is given (module source, sha256, configuration, environment, failure policy)."""

from __future__ import annotations

from typing import Any

import pytest
from envoy.config.listener.v3.listener_pb2 import Listener
from envoy.extensions.filters.http.wasm.v3 import wasm_pb2 as http_wasm_pb2
from envoy.extensions.filters.network.http_connection_manager.v3.http_connection_manager_pb2 import (
    HttpConnectionManager,
    HttpFilter,
)
from envoy.extensions.wasm.v3 import wasm_pb2
from google.protobuf import wrappers_pb2

from meshd.api.meta import InvalidResource
from meshd.api.parse import parse_resource
from meshd.api.wasmplugin import WasmPlugin
from meshd.generate.nacks import ECDS, provenance
from meshd.model.world import build_world
from meshd.translate.envoyfilter.apply import ProxyConfig
from meshd.translate.envoyfilter.merge import pack, unpack
from meshd.translate.wasm_plugin import apply_plugins, extension_config, fetch_cluster, filter_name, selected

SHA = "ab" * 32
OWN = ["envoy.filters.http.header_mutation", "envoy.filters.http.jwt_authn", "envoy.filters.http.rbac.deny",
       "envoy.filters.http.cors", "envoy.filters.http.router"]  # fmt: skip


def _plugin(name: str = "p", namespace: str = "default", **spec: Any) -> WasmPlugin:
    doc = {"apiVersion": "extensions.istio.io/v1alpha1", "kind": "WasmPlugin",
           "metadata": {"name": name, "namespace": namespace}, "spec": {"url": "file:///w.wasm", **spec}}  # fmt: skip
    found = parse_resource(doc)
    assert isinstance(found, WasmPlugin)
    return found


@pytest.mark.parametrize(
    ("spec", "field", "words"),
    [
        ({"url": "oci://r.example.com/p:v1"}, "spec.url", "oci://"),
        ({"url": "r.example.com/p:v1"}, "spec.url", "without a scheme"),
        ({"url": "ftp://h/p.wasm"}, "spec.url", "scheme 'ftp'"),
        ({"url": "https://h/p.wasm"}, "spec.sha256", "required"),
        ({"url": "https://h/p.wasm", "sha256": "AB"}, "spec.sha256", "hexadecimal"),
        ({"url": "file:///p.wasm", "sha256": SHA}, "spec.sha256", "file://"),
        ({"url": "file:///p.wasm", "type": "NETWORK"}, "spec.type", "NETWORK"),
        ({"url": "file:///p.wasm", "imagePullSecret": "s"}, "spec.imagePullSecret", "not supported"),
        ({"url": "file:///p.wasm", "verificationKey": "k"}, "spec.verificationKey", "not supported"),
        ({"url": "file:///p.wasm", "targetRef": {"kind": "Gateway", "name": "g"}}, "spec.targetRef", "targetRefs"),
        ({"url": "file:///p.wasm", "targetRefs": [{"kind": "Service", "name": "s"}]}, "spec.targetRefs[0].kind", ""),
        (
            {
                "url": "file:///p.wasm",
                "selector": {"matchLabels": {"a": "b"}},
                "targetRefs": [{"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": "g"}],
            },
            "spec.targetRefs",
            "only one",
        ),
        (
            {"url": "file:///p.wasm", "vmConfig": {"env": [{"name": "A", "valueFrom": "HOST", "value": "x"}]}},
            "spec.vmConfig.env[0].value",
            "INLINE",
        ),
        ({"url": "file:///p.wasm", "failStrategy": "FAIL_SOMETIMES"}, "spec.failStrategy", ""),
        ({"url": "file:///p.wasm", "pluginConfg": {}}, "spec.pluginConfg", "unknown field"),
    ],
)
def test_what_meshd_does_not_run_is_refused_naming_the_field(spec: dict[str, Any], field: str, words: str) -> None:
    doc = {"apiVersion": "extensions.istio.io/v1alpha1", "kind": "WasmPlugin",
           "metadata": {"name": "p", "namespace": "default"}, "spec": spec}  # fmt: skip
    with pytest.raises(InvalidResource) as info:
        parse_resource(doc)
    assert str(info.value).startswith(f"WasmPlugin default/p: {field}"), str(info.value)
    assert words in str(info.value)


def test_selection_root_namespace_namespace_workload_and_gateway_targets() -> None:
    plugins = [
        _plugin("mesh", "istio-system"),
        _plugin("mesh-reviews", "istio-system", selector={"matchLabels": {"app": "reviews"}}),
        _plugin("ns", "default"),
        _plugin("other-ns", "other"),
        _plugin("reviews", "default", selector={"matchLabels": {"app": "reviews"}}, priority=5),
        _plugin("gw", "default", targetRefs=[{"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": "g"}]),
        _plugin("gwc", "istio-system",
                targetRefs=[{"group": "gateway.networking.k8s.io", "kind": "GatewayClass", "name": "istio"}]),
    ]  # fmt: skip
    world = build_world(plugins, domain_suffix="cluster.local")

    def names(namespace: str, **labels: str) -> list[str]:
        found = selected(world, namespace=namespace, labels=labels, root_namespace="istio-system")
        return [f"{p.metadata.namespace}/{p.metadata.name}" for p in found]

    # priority first (highest first), then namespace and name
    assert names("default", app="reviews") == [
        "default/reviews", "default/ns", "istio-system/mesh", "istio-system/mesh-reviews"]  # fmt: skip
    assert names("default", app="ratings") == ["default/ns", "istio-system/mesh"]
    assert names("other", app="reviews") == ["istio-system/mesh", "istio-system/mesh-reviews", "other/other-ns"]
    gateway = {"gateway.networking.k8s.io/gateway-name": "g", "gateway.networking.k8s.io/gateway-class-name": "istio"}
    assert names("default", **gateway) == ["default/gw", "default/ns", "istio-system/gwc", "istio-system/mesh"]
    assert "default/gw" not in names("other", **gateway)  # a Gateway target: its own namespace only


def _hcm_listener(name: str, *, inbound: bool, port: int) -> Listener:
    listener = Listener(name=name, traffic_direction=1 if inbound else 2)
    listener.address.socket_address.address = "0.0.0.0"
    listener.address.socket_address.port_value = port
    hcm = HttpConnectionManager(stat_prefix="x", http_filters=[HttpFilter(name=n) for n in OWN])
    chain = listener.filter_chains.add()
    flt = chain.filters.add()
    flt.name = "envoy.filters.network.http_connection_manager"
    pack(flt.typed_config, hcm)
    return listener


def _filters(config: ProxyConfig, listener: str) -> list[str]:
    hcm = unpack(config.listeners[listener].filter_chains[0].filters[0].typed_config)
    assert isinstance(hcm, HttpConnectionManager)
    return [f.name.split("~")[0] for f in hcm.http_filters]  # a plugin's filter: <namespace>.<name>~<digest>


def _config() -> ProxyConfig:
    return ProxyConfig(
        listeners={
            "inbound": _hcm_listener("inbound", inbound=True, port=15006),
            "0.0.0.0_9080": _hcm_listener("0.0.0.0_9080", inbound=False, port=9080),
            "0.0.0.0_80": _hcm_listener("0.0.0.0_80", inbound=False, port=80),
        }
    )


def test_phases_place_plugins_among_meshds_filters_priority_first() -> None:
    config = _config()
    plugins = [
        _plugin("authn", phase="AUTHN"),
        _plugin("authz", phase="AUTHZ"),
        _plugin("stats", phase="STATS"),
        _plugin("last-low", priority=-1),
        _plugin("last-high", priority=7),
    ]
    apply_plugins(config, sorted(plugins, key=lambda p: -p.spec.priority), router=False)
    assert _filters(config, "inbound") == [
        "envoy.filters.http.header_mutation", "default.authn", "envoy.filters.http.jwt_authn", "default.authz",
        "envoy.filters.http.rbac.deny", "default.stats", "envoy.filters.http.cors", "default.last-high",
        "default.last-low", "envoy.filters.http.router"]  # fmt: skip
    assert sorted(config.extensions) == sorted(filter_name(p) for p in plugins)
    assert all(name.startswith("default.") and "~" in name for name in config.extensions)


def test_traffic_selectors_pick_direction_and_port() -> None:
    config = _config()
    server = _plugin("server", match=[{"mode": "SERVER"}])
    client_9080 = _plugin("client", match=[{"mode": "CLIENT", "ports": [{"number": 9080}]}])
    apply_plugins(config, [server, client_9080], router=False)
    assert "default.server" in _filters(config, "inbound")
    assert "default.server" not in _filters(config, "0.0.0.0_9080")
    assert "default.client" in _filters(config, "0.0.0.0_9080")
    assert "default.client" not in _filters(config, "0.0.0.0_80") + _filters(config, "inbound")
    # a gateway's listeners are CLIENT (Istio: a gateway takes CLIENT or CLIENT_AND_SERVER)
    gateway = _config()
    apply_plugins(gateway, [server, client_9080], router=True)
    assert "default.client" in _filters(gateway, "0.0.0.0_9080")
    assert all("default.server" not in _filters(gateway, n) for n in gateway.listeners)
    unused = _config()
    apply_plugins(unused, [_plugin("nowhere", match=[{"ports": [{"number": 1234}]}])], router=False)
    assert unused.extensions == {}  # an ECDS resource only for a filter that references it


def test_the_extension_config_envoy_is_given() -> None:
    plugin = _plugin(
        url="http://10.1.2.3:8080/p.wasm", sha256=SHA, pluginName="root", pluginConfig={"b": [1], "a": "x"},
        vmConfig={"env": [{"name": "POD", "valueFrom": "HOST"}, {"name": "MODE", "value": "strict"}]},
        failStrategy="FAIL_OPEN",
    )  # fmt: skip
    ecds = extension_config(plugin)
    assert ecds.name == filter_name(plugin) and ecds.name.startswith("default.p~")
    wasm = http_wasm_pb2.Wasm()
    ecds.typed_config.Unpack(wasm)
    config = wasm.config
    assert config.root_id == "root" and config.failure_policy == wasm_pb2.FAIL_OPEN
    value = wrappers_pb2.StringValue()
    config.configuration.Unpack(value)
    assert value.value == '{"a":"x","b":[1]}'
    assert config.vm_config.runtime == "envoy.wasm.runtime.v8"
    remote = config.vm_config.code.remote
    assert (remote.sha256, remote.http_uri.uri) == (SHA, "http://10.1.2.3:8080/p.wasm")
    cluster = fetch_cluster(plugin)
    assert cluster is not None and remote.http_uri.cluster == cluster.name == "wasm|http|10.1.2.3|8080"
    assert list(config.vm_config.environment_variables.host_env_keys) == ["POD"]
    assert dict(config.vm_config.environment_variables.key_values) == {"MODE": "strict"}
    # the default: FAIL_CLOSE; a file:// module is read by Envoy from the path, under Istio's name
    local = extension_config(_plugin(url="file:///etc/w.wasm"))
    assert local.name.startswith("default.p~")
    local.typed_config.Unpack(wasm)
    assert wasm.config.failure_policy == wasm_pb2.FAIL_CLOSED
    assert wasm.config.vm_config.code.local.filename == "/etc/w.wasm"
    extension_config(_plugin(failStrategy="FAIL_RELOAD")).typed_config.Unpack(wasm)
    assert wasm.config.failure_policy == wasm_pb2.FAIL_RELOAD
    # a changed plugin is a new filter (Envoy loads and fetches while the referencing listener warms)
    assert filter_name(_plugin(url="http://h/p.wasm", sha256=SHA, pluginConfig={"v": 1})) != filter_name(
        _plugin(url="http://h/p.wasm", sha256=SHA, pluginConfig={"v": 2})
    )
    https = fetch_cluster(_plugin(url="https://modules.example.com/p.wasm", sha256=SHA))
    assert https is not None and https.name == "wasm|https|modules.example.com|443"
    assert https.transport_socket.name == "envoy.transport_sockets.tls"


def test_envoys_rejection_of_a_wasm_config_names_the_wasm_plugin() -> None:
    found = _plugin("header", url="file:///w.wasm")
    world = build_world([found], domain_suffix="cluster.local")
    assert provenance(world, ECDS, filter_name(found)) == [found.key]
    assert provenance(world, ECDS, "default.other~0123456789ab") == []  # no such WasmPlugin
    assert provenance(world, ECDS, "ecds-lua") == []  # an EnvoyFilter's extension config
