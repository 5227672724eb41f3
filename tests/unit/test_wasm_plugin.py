"""WasmPlugin: the model's refusals (named fields), selection (root namespace, namespace, workload,
targetRefs), placement by phase and priority among meshd's filters, traffic selectors, and the ECDS resource
Envoy is given (module source, sha256, configuration, environment, failure policy); `type: NETWORK`: the
network filter chains that take it, its place among the network filters, its ECDS resource."""

from __future__ import annotations

from typing import Any

import pytest
from envoy.config.listener.v3.listener_components_pb2 import Filter
from envoy.config.listener.v3.listener_pb2 import Listener
from envoy.extensions.filters.http.wasm.v3 import wasm_pb2 as http_wasm_pb2
from envoy.extensions.filters.network.http_connection_manager.v3.http_connection_manager_pb2 import (
    HttpConnectionManager,
    HttpFilter,
)
from envoy.extensions.filters.network.rbac.v3 import rbac_pb2 as network_rbac_pb2
from envoy.extensions.filters.network.tcp_proxy.v3.tcp_proxy_pb2 import TcpProxy
from envoy.extensions.filters.network.wasm.v3 import wasm_pb2 as network_wasm_pb2
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
    hcm = unpack(config.listeners[listener].filter_chains[0].filters[-1].typed_config)
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


def _tcp_chain(listener: Listener, *, cluster: str, port: int = 0, before: tuple[str, ...] = ()) -> None:
    chain = listener.filter_chains.add()
    if port:
        chain.filter_chain_match.destination_port.value = port
    chain.filters.extend(Filter(name=n) for n in before)
    flt = chain.filters.add(name="envoy.filters.network.tcp_proxy")
    pack(flt.typed_config, TcpProxy(stat_prefix="x", cluster=cluster))


def _chain_filters(config: ProxyConfig, listener: str, index: int) -> list[str]:
    chain = config.listeners[listener].filter_chains[index]
    return [f.name.split("~")[0] for f in chain.filters]


def _network_config() -> ProxyConfig:
    """virtualInbound: an HTTP chain (8000), a TCP chain with authorization (3306), the loop guard; a TCP
    outbound listener on 5432 with the unknown-destination chain; virtualOutbound's catch-all."""
    inbound = _hcm_listener("virtualInbound", inbound=True, port=15006)
    inbound.filter_chains[0].filter_chain_match.destination_port.value = 8000
    rbac = ("envoy.filters.network.rbac.deny", "envoy.filters.network.ext_authz")
    _tcp_chain(inbound, cluster="inbound|3306||", port=3306, before=rbac)
    _tcp_chain(inbound, cluster="BlackHoleCluster", port=15006)
    outbound = Listener(name="0.0.0.0_5432", traffic_direction=2)
    outbound.address.socket_address.port_value = 5432
    _tcp_chain(
        outbound, cluster="outbound|5432||db.default.svc.cluster.local", before=("envoy.filters.network.mongo_proxy",)
    )
    _tcp_chain(outbound, cluster="PassthroughCluster")
    catch_all = Listener(name="virtualOutbound", traffic_direction=2)
    catch_all.address.socket_address.port_value = 15001
    _tcp_chain(catch_all, cluster="PassthroughCluster")
    return ProxyConfig(listeners={"virtualInbound": inbound, "0.0.0.0_5432": outbound, "virtualOutbound": catch_all})


def test_network_plugins_go_in_service_chains_by_phase_before_the_terminal_filter() -> None:
    config = _network_config()
    plugins = [
        _plugin("n-authn", type="NETWORK", phase="AUTHN"),
        _plugin("n-authz", type="NETWORK", phase="AUTHZ"),
        _plugin("n-stats", type="NETWORK", phase="STATS"),
        _plugin("n-last", type="NETWORK"),
        _plugin("http", type="HTTP"),
    ]
    apply_plugins(config, plugins, router=False)
    assert _chain_filters(config, "virtualInbound", 1) == [
        "default.n-authn", "default.n-authz", "envoy.filters.network.rbac.deny", "envoy.filters.network.ext_authz",
        "default.n-stats", "default.n-last", "envoy.filters.network.tcp_proxy"]  # fmt: skip
    # an HTTP chain: network plugins ahead of the HTTP connection manager, the HTTP plugin inside it
    assert _chain_filters(config, "virtualInbound", 0) == [
        "default.n-authn", "default.n-authz", "default.n-stats", "default.n-last",
        "envoy.filters.network.http_connection_manager"]  # fmt: skip
    assert "default.http" in _filters(config, "virtualInbound")
    assert "default.n-last" not in _filters(config, "virtualInbound")
    # a protocol filter stays next to its tcp_proxy; chains to no service get no plugin
    assert _chain_filters(config, "0.0.0.0_5432", 0)[-3:] == [
        "default.n-last", "envoy.filters.network.mongo_proxy", "envoy.filters.network.tcp_proxy"]  # fmt: skip
    assert _chain_filters(config, "virtualInbound", 2) == ["envoy.filters.network.tcp_proxy"]
    assert _chain_filters(config, "0.0.0.0_5432", 1) == ["envoy.filters.network.tcp_proxy"]
    assert _chain_filters(config, "virtualOutbound", 0) == ["envoy.filters.network.tcp_proxy"]
    ecds = config.extensions[filter_name(plugins[0])]
    assert ecds.typed_config.type_url.endswith("envoy.extensions.filters.network.wasm.v3.Wasm")
    wasm = network_wasm_pb2.Wasm()
    assert ecds.typed_config.Unpack(wasm) and wasm.config.vm_config.code.local.filename == "/w.wasm"
    discovery = config.listeners["virtualInbound"].filter_chains[1].filters[0].config_discovery
    assert list(discovery.type_urls) == ["type.googleapis.com/envoy.extensions.filters.network.wasm.v3.Wasm"]
    assert not discovery.HasField("default_config")


def test_network_plugins_select_by_mode_and_port_and_fail_open_by_network_rbac() -> None:
    config = _network_config()
    server_3306 = _plugin("s", type="NETWORK", match=[{"mode": "SERVER", "ports": [{"number": 3306}]}])
    client = _plugin("c", type="NETWORK", match=[{"mode": "CLIENT"}], failStrategy="FAIL_OPEN")
    apply_plugins(config, [server_3306, client], router=False)
    assert "default.s" in _chain_filters(config, "virtualInbound", 1)
    assert "default.s" not in _chain_filters(config, "virtualInbound", 0)  # port 8000
    assert "default.c" in _chain_filters(config, "0.0.0.0_5432", 0)
    assert "default.c" not in _chain_filters(config, "virtualInbound", 0) + _chain_filters(config, "virtualInbound", 1)
    discovery = config.listeners["0.0.0.0_5432"].filter_chains[0].filters[0].config_discovery
    default = network_rbac_pb2.RBAC()
    assert discovery.default_config.Unpack(default) and not default.HasField("rules") and default.stat_prefix
    assert discovery.default_config.type_url in discovery.type_urls
    # a gateway: TCP / TLS route chains only (CLIENT), not its HTTP servers' chains
    gateway = _network_config()
    apply_plugins(gateway, [client], router=True)
    assert "default.c" in _chain_filters(gateway, "virtualInbound", 1)
    assert "default.c" not in _chain_filters(gateway, "virtualInbound", 0)
