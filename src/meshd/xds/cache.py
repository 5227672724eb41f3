"""Snapshot generation with sharing: for one World, outbound clusters and endpoints are built and
serialised once for every proxy; routes once per namespace (short names differ); listeners and
inbound clusters once per proxy group (its address and namespace)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import Any

from meshd.api.meta import InvalidResource
from meshd.model.world import World
from meshd.translate.clusters import build_inbound_clusters, build_outbound_clusters
from meshd.translate.endpoints import build_load_assignments
from meshd.translate.listeners import ListenerPlan, build_inbound_listener
from meshd.translate.proxy import Proxy
from meshd.translate.routes import RouteTable
from meshd.xds.resource import CLUSTER, ENDPOINT, LISTENER, ROUTE, Snapshot, XdsResource, make_resource


def _by_name(messages: Sequence[Any]) -> dict[str, XdsResource]:
    return {m.name: make_resource(m.name, m) for m in messages}


class ConfigGenerator:
    """Builds per-proxy snapshots from one World, computing each shared part once."""

    def __init__(
        self,
        world: World,
        *,
        inbound_port: int,
        sidecar_endpoint_port: int | None,
        extra: Mapping[str, Sequence[XdsResource]] | None = None,
    ) -> None:
        self.world = world
        self._inbound_port = inbound_port
        self._sidecar_port = sidecar_endpoint_port
        self._extra = extra or {}
        self._clusters: dict[str, XdsResource] | None = None
        self._endpoints: dict[str, XdsResource] | None = None
        self._routes: dict[str, dict[str, XdsResource]] = {}
        self._groups: dict[tuple[str, str], Snapshot] = {}
        self._route_table = RouteTable(world)
        self._listener_plan: ListenerPlan | None = None
        self._errors: dict[InvalidResource, None] = dict.fromkeys(world.errors)
        self.builds = 0  # number of proxy-group snapshots computed (for tests and metrics)

    @property
    def errors(self) -> list[InvalidResource]:
        return list(self._errors)

    def _shared(self) -> tuple[dict[str, XdsResource], dict[str, XdsResource]]:
        if self._clusters is None or self._endpoints is None:
            self._clusters = _by_name(build_outbound_clusters(self.world))
            self._endpoints = {
                a.cluster_name: make_resource(a.cluster_name, a)
                for a in build_load_assignments(self.world, sidecar_port=self._sidecar_port)
            }
        return self._clusters, self._endpoints

    def _routes_for(self, namespace: str) -> dict[str, XdsResource]:
        if namespace not in self._routes:
            configs = self._route_table.configs_for(proxy_namespace=namespace)
            self._errors.update(dict.fromkeys(self._route_table.errors))
            self._routes[namespace] = _by_name(configs)
        return self._routes[namespace]

    def _plan(self) -> ListenerPlan:
        if self._listener_plan is None:
            self._listener_plan = ListenerPlan(self.world)
            self._errors.update(dict.fromkeys(self._listener_plan.errors))
        return self._listener_plan

    def precompute(self) -> None:
        """Build the parts every proxy shares, and report their errors, before any proxy asks."""
        self._shared()
        self._plan()
        self._routes_for("")

    def snapshot(self, proxy: Proxy) -> Snapshot:
        key = (proxy.ip, proxy.namespace)
        cached = self._groups.get(key)
        if cached is not None:
            return cached
        self.builds += 1
        clusters, endpoints = self._shared()
        clusters = dict(clusters)
        plan = self._plan()
        listeners_list = plan.outbound_listeners(proxy)
        inbound, targets = build_inbound_listener(plan, proxy, inbound_port=self._inbound_port)
        if inbound is not None:
            listeners_list.append(inbound)
        listeners = _by_name(listeners_list)
        for c in build_inbound_clusters(address=proxy.ip, target_ports=targets):
            clusters[c.name] = make_resource(c.name, c)
        by_type: dict[str, dict[str, XdsResource]] = {
            CLUSTER: clusters,
            ENDPOINT: endpoints,
            LISTENER: listeners,
            ROUTE: self._routes_for(proxy.namespace),
        }
        for type_url, extra in self._extra.items():
            by_type[type_url] = {**by_type.get(type_url, {}), **{r.name: r for r in extra}}
        snap = Snapshot(resources=MappingProxyType({t: MappingProxyType(r) for t, r in by_type.items()}))
        self._groups[key] = snap
        return snap
