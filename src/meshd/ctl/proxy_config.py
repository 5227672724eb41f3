"""`meshd proxy-config {clusters,listeners,routes,endpoints,secrets} PROXY`: what meshd serves one proxy,
from Istio's `istio.io/debug/config_dump` (an Envoy ConfigDump). A connected proxy is named by its proxy
id (`pod.namespace`) or node id; any other by its full node id, computed on request. Tables by default,
the resources themselves with `-o json`."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from envoy.admin.v3 import config_dump_pb2, config_dump_shared_pb2
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_pb2
from envoy.service.discovery.v3 import discovery_pb2
from google.protobuf import json_format, message

KINDS = ("clusters", "listeners", "routes", "endpoints", "secrets")


class NoSuchProxy(Exception):
    pass


def resources(response: discovery_pb2.DiscoveryResponse, kind: str) -> list[message.Message]:
    """The resources of one kind in a config_dump answer (NoSuchProxy when it has none for the proxy)."""
    if not response.resources:
        raise NoSuchProxy
    dump = config_dump_pb2.ConfigDump()
    response.resources[0].Unpack(dump)
    out: list[message.Message] = []
    for section in dump.configs:
        if kind == "clusters" and section.Is(config_dump_shared_pb2.ClustersConfigDump.DESCRIPTOR):
            clusters = config_dump_shared_pb2.ClustersConfigDump()
            section.Unpack(clusters)
            out += [_unpacked(c.cluster, cluster_pb2.Cluster()) for c in clusters.dynamic_active_clusters]
        elif kind == "listeners" and section.Is(config_dump_shared_pb2.ListenersConfigDump.DESCRIPTOR):
            listeners = config_dump_shared_pb2.ListenersConfigDump()
            section.Unpack(listeners)
            out += [
                _unpacked(item.active_state.listener, listener_pb2.Listener()) for item in listeners.dynamic_listeners
            ]
        elif kind == "routes" and section.Is(config_dump_shared_pb2.RoutesConfigDump.DESCRIPTOR):
            routes = config_dump_shared_pb2.RoutesConfigDump()
            section.Unpack(routes)
            out += [_unpacked(r.route_config, route_pb2.RouteConfiguration()) for r in routes.dynamic_route_configs]
        elif kind == "endpoints" and section.Is(config_dump_shared_pb2.EndpointsConfigDump.DESCRIPTOR):
            endpoints = config_dump_shared_pb2.EndpointsConfigDump()
            section.Unpack(endpoints)
            out += [
                _unpacked(e.endpoint_config, endpoint_pb2.ClusterLoadAssignment())
                for e in endpoints.dynamic_endpoint_configs
            ]
        elif kind == "secrets" and section.Is(config_dump_pb2.SecretsConfigDump.DESCRIPTOR):
            secrets = config_dump_pb2.SecretsConfigDump()
            section.Unpack(secrets)
            out += list(secrets.dynamic_active_secrets)
    return out


def _unpacked(packed: Any, into: message.Message) -> message.Message:
    packed.Unpack(into)
    return into


def render_json(items: list[message.Message]) -> str:
    return json.dumps([json_format.MessageToDict(m) for m in items], indent=2) + "\n"


def render_table(kind: str, items: list[message.Message]) -> str:
    header, rows = _TABLES[kind](items)
    table = [header, *rows]
    widths = [max(len(r[i]) for r in table) for i in range(len(header))]
    return "".join("   ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() + "\n" for r in table)


Table = tuple[list[str], list[list[str]]]


def _clusters(items: list[message.Message]) -> Table:
    rows = []
    for c in items:
        assert isinstance(c, cluster_pb2.Cluster)
        parts = c.name.split("|")
        direction, port, subset, host = parts if len(parts) == 4 else ("-", "-", "-", c.name)
        kind = cluster_pb2.Cluster.DiscoveryType.Name(c.type) if c.HasField("type") else "-"
        rows.append([host or "-", port or "-", subset or "-", direction, kind, c.name])
    return ["SERVICE FQDN", "PORT", "SUBSET", "DIRECTION", "TYPE", "NAME"], rows


def _listeners(items: list[message.Message]) -> Table:
    rows = []
    for listener in items:
        assert isinstance(listener, listener_pb2.Listener)
        address = listener.address.socket_address
        for chain in listener.filter_chains or [None]:
            match = _chain_match(chain)
            target = _chain_target(chain)
            rows.append([listener.name, address.address, str(address.port_value), match, target])
    return ["NAME", "ADDRESS", "PORT", "MATCH", "DESTINATION"], rows


def _chain_match(chain: Any) -> str:
    if chain is None:
        return "-"
    m = chain.filter_chain_match
    parts = []
    if m.server_names:
        parts.append(f"SNI: {','.join(m.server_names)}")
    if m.transport_protocol:
        parts.append(f"Transport: {m.transport_protocol}")
    if m.application_protocols:
        parts.append(f"ALPN: {','.join(m.application_protocols)}")
    if m.HasField("destination_port"):
        parts.append(f"Port: {m.destination_port.value}")
    if m.prefix_ranges:
        parts.append("Addr: " + ",".join(f"{r.address_prefix}/{r.prefix_len.value}" for r in m.prefix_ranges))
    return "; ".join(parts) or "ALL"


def _chain_target(chain: Any) -> str:
    if chain is None:
        return "-"
    names = [f.name.rsplit(".", 1)[-1] for f in chain.filters]
    return ",".join(names) or "-"


def _routes(items: list[message.Message]) -> Table:
    rows = []
    for config in items:
        assert isinstance(config, route_pb2.RouteConfiguration)
        for vhost in config.virtual_hosts:
            matches = [_route_match(r) for r in vhost.routes]
            domains = ",".join(vhost.domains[:3]) + ("..." if len(vhost.domains) > 3 else "")
            rows.append([config.name, vhost.name, domains, " ".join(matches) or "-"])
    return ["NAME", "VIRTUAL HOST", "DOMAINS", "MATCH"], rows


def _route_match(route: Any) -> str:
    which = route.match.WhichOneof("path_specifier")
    if which == "safe_regex":
        return f"regex:{route.match.safe_regex.regex}"
    return f"{which}:{getattr(route.match, which)}" if which else "*"


def _endpoints(items: list[message.Message]) -> Table:
    rows = []
    for cla in items:
        assert isinstance(cla, endpoint_pb2.ClusterLoadAssignment)
        for locality in cla.endpoints:
            place = locality.locality
            where = "/".join(p for p in (place.region, place.zone, place.sub_zone) if p)
            for lb in locality.lb_endpoints:
                sa = lb.endpoint.address.socket_address
                weight = str(lb.load_balancing_weight.value) if lb.HasField("load_balancing_weight") else "1"
                rows.append([f"{sa.address}:{sa.port_value}", weight, where or "-", cla.cluster_name])
    return ["ENDPOINT", "WEIGHT", "LOCALITY", "CLUSTER"], rows


def _secrets(items: list[message.Message]) -> Table:
    rows = [[s.name, s.version_info] for s in items if isinstance(s, config_dump_pb2.SecretsConfigDump.DynamicSecret)]
    return ["RESOURCE NAME", "VERSION"], rows


_TABLES: dict[str, Callable[[list[message.Message]], Table]] = {
    "clusters": _clusters,
    "listeners": _listeners,
    "routes": _routes,
    "endpoints": _endpoints,
    "secrets": _secrets,
}
