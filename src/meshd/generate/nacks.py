"""Envoy's rejections, reported on the Istio resources behind them (pure).

A proxy NACKed a generated resource (xds/isolation.py holds it back). Which Istio resources produced it is
read from the resource's Istio-style name and the World, as istiod names them:
- cluster / endpoints `outbound|<port>|<subset>|<host>`: the Service or ServiceEntry of the host and its
  DestinationRules;
- route configuration `<port>`: the VirtualServices of hosts served on that port;
- listener `<ip>_<port>`: the Services and ServiceEntries with that port, and their VirtualServices;
- a gateway's route configuration `http.<port>` / `https.<port>.<port name>.<gateway>.<namespace>`: the
  Gateway(s) and the VirtualServices bound to them;
- an extension config `<namespace>.<name>~<digest>` (ECDS): the WasmPlugin (e.g. a file:// module Envoy
  cannot read);
- a node agent's bootstrap patch `<order>/<namespace>/<name>/<index>` (the agent refused the patched
  bootstrap, translate/envoyfilter/bootstrap.py): that EnvoyFilter;
- any resource of a proxy EnvoyFilters patch: those EnvoyFilters selecting the proxy that have a patch of
  that resource's type (a Lua script Envoy cannot compile is seen by Envoy only).
Each becomes an error on those resources (status, /debug/config_errors, the log), naming the Envoy
resource, the proxies and Envoy's message. A name that leads nowhere is reported without a resource."""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Iterable

from meshd.api.meta import InvalidResource, ResourceKey
from meshd.model.services import MeshService
from meshd.model.world import World
from meshd.translate.envoyfilter.bootstrap import BOOTSTRAP_PATCH, parse_name
from meshd.translate.envoyfilter.selection import selected
from meshd.translate.proxy import Proxy
from meshd.xds.isolation import Rejected
from meshd.xds.resource import CLUSTER, ENDPOINT, LISTENER, ROUTE, short_name

MAX_PROXIES_SHOWN = 3
ECDS = "type.googleapis.com/envoy.config.core.v3.TypedExtensionConfig"
# protobuf's text format marks debug output with a link whose wording varies from process to process
_PROTOBUF_DEBUG_MARK = re.compile(r"goo\.gle/debug\w*\s*")
# a gateway's route configuration: `http.<port>`, `https.<port>.<port name>.<gateway>.<namespace>` (`.<bind>`)
_GATEWAY_ROUTE = re.compile(
    r"^(?:http\.(?P<port>\d+)|https\.(?P<sport>\d+)\.[^.]+\.(?P<gw>[^.]+)\.(?P<ns>[^.]+))(?:\..*)?$"
)


# the EnvoyFilter patches that change a resource of each type
_PATCHED_BY = {
    LISTENER: frozenset(
        {"LISTENER", "FILTER_CHAIN", "NETWORK_FILTER", "HTTP_FILTER", "LISTENER_FILTER", "ROUTE_CONFIGURATION",
         "VIRTUAL_HOST", "HTTP_ROUTE"}
    ),
    ROUTE: frozenset({"ROUTE_CONFIGURATION", "VIRTUAL_HOST", "HTTP_ROUTE"}),
    CLUSTER: frozenset({"CLUSTER"}),
}  # fmt: skip


def nack_errors(
    rejections: Iterable[tuple[Proxy, Rejected]], world: World, *, root_namespace: str = "istio-system"
) -> list[InvalidResource]:
    by_resource: dict[tuple[str, str], list[str]] = defaultdict(list)
    errors: dict[tuple[str, str], set[str]] = defaultdict(set)
    patched: dict[tuple[str, str], dict[ResourceKey, None]] = defaultdict(dict)
    for proxy, rejected in rejections:
        for key in _envoy_filter_keys(world, proxy, rejected.type_url, root_namespace):
            patched[(rejected.type_url, rejected.name)][key] = None
        by_resource[(rejected.type_url, rejected.name)].append(f"{proxy.pod}.{proxy.namespace}")
        errors[(rejected.type_url, rejected.name)].add(_PROTOBUF_DEBUG_MARK.sub("", rejected.error).strip())
    out = []
    for (type_url, name), proxies in sorted(by_resource.items()):
        error = " | ".join(sorted(errors[(type_url, name)])[:MAX_PROXIES_SHOWN])
        shown = ", ".join(sorted(proxies)[:MAX_PROXIES_SHOWN]) + (
            f" and {len(proxies) - MAX_PROXIES_SHOWN} more" if len(proxies) > MAX_PROXIES_SHOWN else ""
        )
        message = (
            f"Envoy rejected {short_name(type_url).upper()} resource {name!r} (proxies {shown}): "
            f"{error}; those proxies keep the version they accepted before"
        )
        if type_url == BOOTSTRAP_PATCH:
            message = (
                f"the node agent rejected bootstrap patch {name!r} (proxies {shown}): {error}; "
                "their Envoy starts without this EnvoyFilter's bootstrap patches"
            )
        keys: list[ResourceKey | None] = [*provenance(world, type_url, name), *patched[(type_url, name)]] or [None]
        out += [InvalidResource(key, "<generated config>", message) for key in keys]
    return out


def _envoy_filter_keys(world: World, proxy: Proxy, type_url: str, root_namespace: str) -> list[ResourceKey]:
    kinds = _PATCHED_BY.get(type_url)
    if kinds is None or not world.envoy_filters:
        return []
    workload = world.workloads.get(proxy.ip)
    labels = dict(workload.labels) if workload is not None else {}
    chosen = selected(world, namespace=proxy.namespace, labels=labels, root_namespace=root_namespace)
    return [f.key for f in chosen if any(p.apply_to in kinds for p in f.spec.config_patches)]


def provenance(world: World, type_url: str, name: str) -> list[ResourceKey]:
    """The Istio resources (and Services) a generated resource came from, as far as its name says."""
    keys: dict[ResourceKey, None] = {}
    if type_url in (CLUSTER, ENDPOINT) and name.startswith("outbound|"):
        parts = name.split("|", 3)
        if len(parts) == 4:
            _host_keys(world, parts[3], keys, routes=False)
    elif type_url == ROUTE and name.isdigit():
        _port_keys(world, int(name), keys, services=False)
    elif type_url == ROUTE and (m := _GATEWAY_ROUTE.match(name)) is not None:
        port = int(m["port"] or m["sport"])
        _gateway_keys(world, keys, port=port, gateway=(m["ns"], m["gw"]) if m["gw"] else None)
    elif type_url == LISTENER and "_" in name and name.rsplit("_", 1)[1].isdigit():
        _port_keys(world, int(name.rsplit("_", 1)[1]), keys, services=True)
    elif type_url == BOOTSTRAP_PATCH and (parsed := parse_name(name)) is not None:
        for envoy_filter in world.envoy_filters.get(parsed[1], ()):
            if envoy_filter.metadata.name == parsed[2]:
                keys[envoy_filter.key] = None
    elif type_url == ECDS and "~" in name:  # a WasmPlugin's Wasm config: `<namespace>.<name>~<digest>`
        namespace, _, plugin = name.rsplit("~", 1)[0].partition(".")
        for found in world.wasm_plugins.get(namespace, ()):
            if found.metadata.name == plugin:
                keys[found.key] = None
    return list(keys)


def _gateway_keys(world: World, keys: dict[ResourceKey, None], *, port: int, gateway: tuple[str, str] | None) -> None:
    """The Gateway(s) of a gateway route configuration and the VirtualServices bound to them."""
    for key, found in world.gateways.items():
        if key == gateway or (gateway is None and any(s.port.number == port for s in found.spec.servers)):
            keys[found.key] = None
            for vs in world.gateway_bindings.get(key, ()):
                keys[vs.key] = None


def _port_keys(world: World, port: int, keys: dict[ResourceKey, None], *, services: bool) -> None:
    for host, service in world.services.items():
        if service.port(port) is not None:
            if services:
                keys[_service_key(service, world.domain_suffix)] = None
            for vs in world.virtual_services.get(host, ()):
                keys[vs.key] = None


def _host_keys(world: World, host: str, keys: dict[ResourceKey, None], *, routes: bool) -> None:
    service = world.services.get(host)
    if service is not None:
        keys[_service_key(service, world.domain_suffix)] = None
    for rule in world.rules_by_host.get(host, ()):
        keys[rule.key] = None
    if routes:
        for vs in world.virtual_services.get(host, ()):
            keys[vs.key] = None


def _service_key(service: MeshService, suffix: str) -> ResourceKey:
    if service.hostname == f"{service.name}.{service.namespace}.svc.{suffix}":
        return ResourceKey("Service", service.namespace, service.name)
    return ResourceKey("ServiceEntry", service.namespace, service.name)
