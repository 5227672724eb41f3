"""WasmPlugins on a proxy's generated config: which apply, where their filters go, what Envoy is given.
`type: NETWORK` plugins are Envoy's Wasm network filter instead, placed in filter chains by
translate/wasm_network.py; the rest below holds for both types.

Selection (Istio's): one in the root namespace without a selector applies to every proxy of the mesh, with
a `selector` to the matching workloads of any namespace; one in the proxy's namespace when its selector
matches (none: every proxy of the namespace); `targetRefs` attach to the pods of a Gateway API Gateway
(same namespace) or GatewayClass (root namespace only).

Placement: in every HTTP connection manager the plugin's `match` selects (mode CLIENT: outbound listeners
and gateways, SERVER: inbound listeners; `ports`: the listener's or filter chain's destination port), by
`phase` among meshd's own filters: AUTHN before the authentication filters (jwt_authn), AUTHZ after them and
before the authorization filters (RBAC, ext_authz), STATS after authorization (meshd has no stats filter:
its metrics are access loggers), unspecified right before the router. The peer-identity exchange of the
metrics comes first, as Istio's metadata exchange. Plugins of one phase go in `priority` order, highest
first, then namespace and name.

Delivery (Istio's shape): the filter is an ECDS reference named `<namespace>.<name>~<digest>`; the ECDS resource is
Envoy's Wasm filter (V8) whose code is the `file://` path, or the `http(s)://` URL Envoy fetches itself
through a cluster `wasm|<scheme>|<host>|<port>` added to the proxy's clusters, with `sha256` checked by
Envoy before the module runs. `pluginConfig` is handed to the plugin as JSON (`configuration`), `pluginName`
is the root id, `vmConfig.env` the VM's environment (inline values, HOST: passed through from the proxy's),
`failStrategy` Envoy's failure policy: FAIL_CLOSE (a module that cannot be fetched, verified or loaded
makes the filter answer 503 to every request; a `file://` module Envoy cannot read makes it reject the Wasm
config, and the filter without a config answers 500), FAIL_OPEN (the filter is skipped; when Envoy rejects
the Wasm config, the ECDS default config, an RBAC filter without rules, stands in), FAIL_RELOAD."""

from __future__ import annotations

import hashlib
import ipaddress
import json
from collections.abc import Iterable, Mapping
from urllib.parse import urlsplit

from envoy.config.cluster.v3.cluster_pb2 import Cluster
from envoy.config.core.v3 import base_pb2, config_source_pb2, http_uri_pb2
from envoy.config.core.v3.extension_pb2 import TypedExtensionConfig
from envoy.config.endpoint.v3 import endpoint_components_pb2, endpoint_pb2
from envoy.config.listener.v3.listener_components_pb2 import Filter
from envoy.config.listener.v3.listener_pb2 import Listener
from envoy.extensions.filters.http.rbac.v3 import rbac_pb2
from envoy.extensions.filters.http.wasm.v3 import wasm_pb2 as http_wasm_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2
from envoy.extensions.filters.network.wasm.v3 import wasm_pb2 as network_wasm_pb2
from envoy.extensions.transport_sockets.tls.v3 import tls_pb2
from envoy.extensions.wasm.v3 import wasm_pb2
from google.protobuf import any_pb2, wrappers_pb2
from google.protobuf.duration_pb2 import Duration

from meshd.api.wasmplugin import WasmPlugin
from meshd.model.world import World
from meshd.translate.authz.selection import targets_workload
from meshd.translate.envoyfilter import match as m
from meshd.translate.envoyfilter.apply import ProxyConfig
from meshd.translate.envoyfilter.merge import pack, unpack
from meshd.translate.grpc_messages import FILTER_NAMES as GRPC_COUNTING
from meshd.translate.wasm_network import NETWORK_WASM_TYPE, place, plugin_chains
from meshd.translate.wasm_network import PASS_THROUGH as NETWORK_PASS_THROUGH

WASM_FILTER_TYPE = "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm"
_FAILURE = {
    "FAIL_CLOSE": wasm_pb2.FAIL_CLOSED,
    "FAIL_OPEN": wasm_pb2.FAIL_OPEN,
    "FAIL_RELOAD": wasm_pb2.FAIL_RELOAD,
}
# where meshd's own HTTP filters stand; a phase goes before the first filter ranked above it
_PHASE_RANK = {"AUTHN": 1, "AUTHZ": 3, "STATS": 5, "UNSPECIFIED_PHASE": 7}
_PEER_EXCHANGE = ("envoy.filters.http.header_mutation", "envoy.filters.http.header_to_metadata", *GRPC_COUNTING)
_AUTHN = ("envoy.filters.http.jwt_authn",)
_AUTHZ_PREFIXES = ("envoy.filters.http.rbac", "envoy.filters.http.ext_authz")
ROUTER = "envoy.filters.http.router"
# an RBAC filter without rules enforces nothing: a FAIL_OPEN plugin's filter until its Wasm config is accepted
PASS_THROUGH = rbac_pb2.RBAC()


def filter_name(plugin: WasmPlugin) -> str:
    """Istio's `<namespace>.<name>`, followed by a digest of the plugin (`~<12 hex>`): a changed plugin is a
    new filter, so the listeners that reference it warm until its module is loaded. Envoy loads (and
    fetches) a module while the listener that references the filter warms; an ECDS update of an existing
    filter is not waited for: a fetched module would be missing (requests passing whatever `failStrategy`
    says) and a module that fails to load would keep the previous config."""
    return f"{plugin.metadata.namespace}.{plugin.metadata.name}~{_digest(plugin)}"


def _digest(plugin: WasmPlugin) -> str:
    return hashlib.sha256(plugin.spec.model_dump_json(by_alias=True).encode()).hexdigest()[:12]


def selected(world: World, *, namespace: str, labels: Mapping[str, str], root_namespace: str) -> tuple[WasmPlugin, ...]:
    """The WasmPlugins applying to a proxy of this namespace with these workload labels."""
    spaces = (root_namespace,) if namespace == root_namespace else (root_namespace, namespace)
    out = [
        p
        for space in spaces
        for p in world.wasm_plugins.get(space, ())
        if _selects(p, namespace=namespace, labels=labels, root=root_namespace)
    ]
    return tuple(sorted(out, key=lambda p: (-p.spec.priority, p.metadata.namespace, p.metadata.name)))


def _selects(plugin: WasmPlugin, *, namespace: str, labels: Mapping[str, str], root: str) -> bool:
    spec, own = plugin.spec, plugin.metadata.namespace
    if spec.target_refs:
        return any(
            targets_workload(ref, policy_namespace=own, namespace=namespace, labels=labels, root_namespace=root)
            for ref in spec.target_refs
        )
    if spec.selector is None:
        return own in (namespace, root)
    return all(labels.get(k) == v for k, v in spec.selector.match_labels.items())


def apply_plugins(config: ProxyConfig, plugins: Iterable[WasmPlugin], *, router: bool) -> None:
    """Adds the plugins' filters to the HTTP connection managers they select, their ECDS resources and the
    clusters their modules are fetched through (changes `config` in place)."""
    plugins = tuple(plugins)
    http = tuple(p for p in plugins if not is_network(p))
    network = tuple(p for p in plugins if is_network(p))
    used: set[str] = set()
    for listener in config.listeners.values():
        if http:
            _in_listener(listener, http, router=router, used=used)
        if network:
            _network_in_listener(listener, network, router=router, used=used)
    for plugin in plugins:
        name = filter_name(plugin)
        if name not in used:
            continue
        config.extensions[name] = extension_config(plugin)
        cluster = fetch_cluster(plugin)
        if cluster is not None and cluster.name not in config.clusters:
            config.clusters[cluster.name] = cluster


def _in_listener(listener: Listener, plugins: tuple[WasmPlugin, ...], *, router: bool, used: set[str]) -> None:
    direction = "CLIENT" if router or m.listener_context(listener, router=False) == m.OUTBOUND else "SERVER"
    listener_port = int(listener.address.socket_address.port_value)
    for chain in m.chains_of(listener):
        port = chain.filter_chain_match.destination_port.value or listener_port
        chosen = [p for p in plugins if _matches(p, direction=direction, port=port)]
        if not chosen:
            continue
        for f in chain.filters:
            if f.name != m.HCM or not f.HasField("typed_config"):
                continue
            hcm = unpack(f.typed_config)
            if not isinstance(hcm, hcm_pb2.HttpConnectionManager):
                continue
            _place(hcm, chosen)
            used.update(filter_name(p) for p in chosen)
            pack(f.typed_config, hcm)


def is_network(plugin: WasmPlugin) -> bool:
    return plugin.spec.type == "NETWORK"


def _network_in_listener(listener: Listener, plugins: tuple[WasmPlugin, ...], *, router: bool, used: set[str]) -> None:
    for chain, direction, port in plugin_chains(listener, router=router):
        chosen = [p for p in plugins if _matches(p, direction=direction, port=port)]
        if chosen:
            place(chain, [(p.spec.phase, _network_filter(p)) for p in chosen])
            used.update(filter_name(p) for p in chosen)


def _matches(plugin: WasmPlugin, *, direction: str, port: int) -> bool:
    selectors = plugin.spec.match
    return not selectors or any(s.selects(direction=direction, port=port) for s in selectors)


def _rank(name: str) -> int:
    if name in _PEER_EXCHANGE:
        return 0
    if name in _AUTHN:
        return 2
    if name.startswith(_AUTHZ_PREFIXES):
        return 4
    if name == ROUTER:
        return 8
    return 6


def _place(hcm: hcm_pb2.HttpConnectionManager, plugins: list[WasmPlugin]) -> None:
    ranked = [(_rank(f.name), f) for f in hcm.http_filters]
    for phase, rank in _PHASE_RANK.items():
        at = next((i for i, (r, _) in enumerate(ranked) if r > rank), len(ranked))
        for plugin in (p for p in plugins if p.spec.phase == phase):
            ranked.insert(at, (rank, _http_filter(plugin)))
            at += 1
    del hcm.http_filters[:]
    hcm.http_filters.extend(f for _, f in ranked)


def _http_filter(plugin: WasmPlugin) -> hcm_pb2.HttpFilter:
    return hcm_pb2.HttpFilter(name=filter_name(plugin), config_discovery=_discovery(plugin))


def _network_filter(plugin: WasmPlugin) -> Filter:
    return Filter(name=filter_name(plugin), config_discovery=_discovery(plugin))


def _discovery(plugin: WasmPlugin) -> config_source_pb2.ExtensionConfigSource:
    network = is_network(plugin)
    source = config_source_pb2.ConfigSource(
        ads=config_source_pb2.AggregatedConfigSource(), resource_api_version=config_source_pb2.V3
    )
    discovery = config_source_pb2.ExtensionConfigSource(
        config_source=source, type_urls=[NETWORK_WASM_TYPE if network else WASM_FILTER_TYPE]
    )
    if plugin.spec.fail_strategy == "FAIL_OPEN":
        # Envoy rejects a Wasm config whose module it cannot read (a file:// path), whatever the failure policy:
        # the filter would be left without a config and refuse every request. Fail open means the filter is
        # not applied: its default config, used while no Wasm config was accepted, lets every request through.
        discovery.default_config.Pack(NETWORK_PASS_THROUGH if network else PASS_THROUGH)
        discovery.type_urls.append(discovery.default_config.type_url)
    return discovery


def extension_config(plugin: WasmPlugin) -> TypedExtensionConfig:
    """The plugin's ECDS resource: Envoy's Wasm HTTP filter, or its Wasm network filter (`type: NETWORK`)."""
    spec, name = plugin.spec, filter_name(plugin)
    vm = wasm_pb2.VmConfig(runtime="envoy.wasm.runtime.v8", code=_code(plugin))
    env = spec.vm_config.env if spec.vm_config is not None else []
    if env:
        vm.environment_variables.host_env_keys.extend(e.name for e in env if e.value_from == "HOST")
        for e in env:
            if e.value_from == "INLINE":
                vm.environment_variables.key_values[e.name] = e.value
    config = wasm_pb2.PluginConfig(
        name=name, root_id=spec.plugin_name, vm_config=vm, failure_policy=_FAILURE[spec.fail_strategy]
    )
    if spec.plugin_config:
        as_json = json.dumps(spec.plugin_config, sort_keys=True, separators=(",", ":"))
        packed = any_pb2.Any()
        packed.Pack(wrappers_pb2.StringValue(value=as_json))
        config.configuration.CopyFrom(packed)
    wasm = any_pb2.Any()
    wasm.Pack(network_wasm_pb2.Wasm(config=config) if is_network(plugin) else http_wasm_pb2.Wasm(config=config))
    return TypedExtensionConfig(name=name, typed_config=wasm)


def _code(plugin: WasmPlugin) -> base_pb2.AsyncDataSource:
    spec = plugin.spec
    if spec.scheme == "file":
        return base_pb2.AsyncDataSource(local=base_pb2.DataSource(filename=urlsplit(spec.url).path))
    cluster = fetch_cluster(plugin)
    assert cluster is not None
    return base_pb2.AsyncDataSource(
        remote=base_pb2.RemoteDataSource(
            http_uri=http_uri_pb2.HttpUri(uri=spec.url, cluster=cluster.name, timeout=_seconds(30)),
            sha256=spec.sha256,
            retry_policy=base_pb2.RetryPolicy(num_retries=wrappers_pb2.UInt32Value(value=3)),
        )
    )


def _seconds(n: int) -> Duration:
    return Duration(seconds=n)


def fetch_cluster(plugin: WasmPlugin) -> Cluster | None:
    """The cluster an http(s):// module is fetched through (None for file://)."""
    spec = plugin.spec
    if spec.scheme not in ("http", "https"):
        return None
    parts = urlsplit(spec.url)
    host = parts.hostname or ""
    port = parts.port or (443 if spec.scheme == "https" else 80)
    name = f"wasm|{spec.scheme}|{host}|{port}"
    cluster = Cluster(name=name, connect_timeout=_seconds(5))
    cluster.type = Cluster.STATIC if _is_ip(host) else Cluster.STRICT_DNS
    if not _is_ip(host):
        cluster.dns_lookup_family = Cluster.V4_PREFERRED
    endpoint = endpoint_components_pb2.LbEndpoint()
    endpoint.endpoint.address.socket_address.address = host
    endpoint.endpoint.address.socket_address.port_value = port
    cluster.load_assignment.CopyFrom(
        endpoint_pb2.ClusterLoadAssignment(
            cluster_name=name, endpoints=[endpoint_components_pb2.LocalityLbEndpoints(lb_endpoints=[endpoint])]
        )
    )
    if spec.scheme == "https":
        tls = tls_pb2.UpstreamTlsContext(sni=host)
        cluster.transport_socket.name = "envoy.transport_sockets.tls"
        cluster.transport_socket.typed_config.Pack(tls)
    return cluster


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True
