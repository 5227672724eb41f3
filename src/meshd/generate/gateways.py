"""The layers of router proxies (gateways), each in a named LayerCache:
- `gateways`: per GatewayKey (namespace, labels, locality, SDS, listening address) the listeners and
  route configurations built from the Gateways selecting it and the VirtualServices bound to them,
  with the clusters and SDS secrets they use (`translate/gateway/`), and the gateway workload's
  RequestAuthentications and AuthorizationPolicies (`queries.gateway_jwt` / `gateway_authorization`) on
  its listeners;
- `gateway_clusters`: the clusters and endpoints of exactly those destinations and of the clusters the
  gateway's EnvoyFilters name (each service's from the shared `services` cache, filtered) and the SNI-named
  clusters of AUTO_PASSTHROUGH servers;
- the SDS secrets through the shared `secrets` cache (read from the gateway workload's namespace).
A router gets no sidecar configuration: no inbound listener, no outbound listeners of the mesh.

The World checks of gateways run the same build per gateway workload (namespace and labels) of the
World, whatever proxies are connected, plus the checks that need no workload
(`translate/gateway/checks.py`).
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Mapping
from dataclasses import dataclass
from typing import NamedTuple

from meshd.api.gateway import Gateway
from meshd.api.mesh import PROXY_CONFIG_ANNOTATION
from meshd.api.meta import InvalidResource, ResourceKey
from meshd.generate.layers import LayerCache
from meshd.generate.memo import MemoEntry, ResourceMemo, build_all, reuse_layer
from meshd.generate.options import GenerateOptions
from meshd.generate.outbound import EMPTY_LAYER, OutboundLayers, ServiceEntry
from meshd.generate.queries import Queries
from meshd.generate.reads import Context, MissedInput, Tracer
from meshd.model.services import Workload
from meshd.model.world import World
from meshd.translate.gateway.checks import binding_errors, reference_errors, selector_errors
from meshd.translate.gateway.config import GatewayKey, build_gateway
from meshd.translate.gateway.sni_dnat import SniTarget, sni_specs
from meshd.translate.gateway.tls import sds_secret_names
from meshd.translate.naming import ANY_ADDRESS
from meshd.translate.proxy import Proxy
from meshd.translate.routes import delegate_inputs
from meshd.translate.scope import Scope, ScopeKey
from meshd.translate.secrets import readable, source_keys
from meshd.translate.spec import Ident
from meshd.translate.telemetry.apply import with_telemetry
from meshd.xds.resource import CLUSTER, ENDPOINT, LISTENER, ROUTE, Snapshot


class GatewayBuild(NamedTuple):
    layer: Snapshot  # listeners and route configurations
    clusters: frozenset[str]
    sni_targets: tuple[SniTarget, ...]
    secrets: frozenset[str]
    errors: tuple[InvalidResource, ...]


def trusted_hops(workload: Workload | None, mesh_default: int) -> int:
    """gatewayTopology.numTrustedProxies of a gateway workload: its `proxy.istio.io/config` annotation's, else
    the mesh config's `defaultConfig`."""
    found = workload.gateway_trusted_proxies if workload is not None else None
    return mesh_default if found is None else found


@dataclass(frozen=True)
class GatewayWorkloads:
    """The workloads the gateway checks look at, of `workloads` with `gateways`: those a Gateway selects, and
    those whose `proxy.istio.io/config` annotation has a problem (few: the checks do not walk every workload)."""

    workloads: Mapping[str, Workload]
    gateways: Mapping[tuple[str, str], Gateway]
    scope_to_namespace: bool  # the option Gateways select workloads by
    selected: Mapping[str, Workload]
    troubled: Mapping[str, Workload]


def proxy_config_errors(
    troubled: Iterable[Workload], groups: set[tuple[str, tuple[tuple[str, str], ...]]]
) -> list[InvalidResource]:
    """A gateway workload's `proxy.istio.io/config` annotation that cannot be used (the mesh config's
    numTrustedProxies applies instead), or whose other gatewayTopology fields meshd ignores."""
    found = []
    for workload in sorted(troubled, key=lambda w: (w.namespace, w.name)):
        if (workload.namespace, workload.labels) in groups:
            used = workload.gateway_trusted_proxies is not None
            found.append(
                InvalidResource(
                    ResourceKey("Pod", workload.namespace, workload.name),
                    f"metadata.annotations[{PROXY_CONFIG_ANNOTATION}]",
                    workload.proxy_config_problem
                    + ("" if used else ": the mesh config's gatewayTopology.numTrustedProxies applies"),
                    severity="warning" if used else "error",
                )
            )
    return found


class GatewayLayers:
    def __init__(
        self,
        world: World,
        *,
        options: GenerateOptions,
        memo: ResourceMemo,
        queries: Queries,
        outbound: OutboundLayers,
        previous: GatewayLayers | None,
        tracer: Tracer | None,
    ) -> None:
        self.world, self.options, self.memo, self.queries, self.outbound = world, options, memo, queries, outbound
        self.builds: LayerCache[GatewayKey, GatewayBuild] = LayerCache(
            "gateways", previous=previous.builds if previous else None, memo=memo, tracer=tracer
        )
        self.clusters: LayerCache[Hashable, tuple[Snapshot, frozenset[str]]] = LayerCache(
            "gateway_clusters", previous=previous.clusters if previous else None, memo=memo, tracer=tracer
        )
        self.build_errors: list[InvalidResource] = []  # met by builds (check mode compares with the checks)
        self._checks: dict[Hashable, tuple[InvalidResource, ...]] = {}
        self._prev_checks = previous._checks if previous is not None else {}
        self._check = tracer is not None
        # the Gateway names that name no Gateway: (the VirtualServices and Gateways read, what was found)
        self.references: tuple[object, object, list[InvalidResource]] | None = None
        self._prev_references = previous.references if previous is not None else None
        self.workload_view: GatewayWorkloads | None = None
        self._prev_view = previous.workload_view if previous is not None else None
        self._prev_world = previous.world if previous is not None else None

    def key_for(self, proxy: Proxy) -> GatewayKey:
        workload = self.world.workloads.get(proxy.ip)
        labels = workload.labels if workload is not None else ()
        locality = workload.locality if workload is not None else ""
        return GatewayKey(
            namespace=proxy.namespace,
            labels=labels,
            locality=locality,
            sds=proxy.sds,
            address=proxy.ip if self.options.gateway_bind_proxy_ip else ANY_ADDRESS,
            port_map=self.port_map(proxy.ip),
            trusted_hops=trusted_hops(workload, self.options.gateway_trusted_proxies),
        )

    def port_map(self, ip: str) -> tuple[tuple[int, int], ...]:
        """Service port -> target port of the Services the workload at `ip` backs (where they differ)."""
        found: dict[int, int] = {}
        for _, port, target in self.queries.served(ip):
            if target != port:
                found.setdefault(port, target)
        return tuple(sorted(found.items()))

    def scope(self, key: GatewayKey) -> Scope:
        """What a gateway workload sees: every service exported to its namespace (Sidecar resources
        do not apply to gateways), DestinationRules looked up from its namespace."""
        return self.queries.scope(ScopeKey(key.namespace, None, key.locality, key.failover_labels, (), key.sds, False))

    # -- the gateway layer ------------------------------------------------------------------------

    def _inputs(self, key: GatewayKey, scope: Scope) -> Hashable:
        world, q = self.world, self.queries
        gateways = q.selected_gateways(key.namespace, key.labels)
        deps: list[object] = []
        for gateway in gateways:
            bound = world.gateway_bindings.get((gateway.metadata.namespace, gateway.metadata.name))
            deps.append(Ident(bound))
            for vs in bound or ():
                deps += delegate_inputs(world, vs)
                for host in self.outbound.destinations(vs):
                    deps += (Ident(world.services.get(host)), Ident(scope.destination_rule(host)))
            for server in gateway.spec.servers:
                for name in sds_secret_names(server.tls) if server.tls is not None else ():
                    for secret in source_keys(namespace=key.namespace, resource=name):
                        deps.append(Ident(world.secrets.get(secret)))
                    deps.append(readable(world.gateway_secret_grants, namespace=key.namespace, resource=name))
        # AUTO_PASSTHROUGH: a chain per visible service port and subset of its DestinationRule
        auto = any(s.auto_passthrough for g in gateways for s in g.spec.servers)
        if auto:
            deps += (Ident(scope.destination_rule(s.hostname)) for s, _ in scope.services)
        return (
            tuple(Ident(g) for g in gateways),
            tuple(deps),
            q.files_state,
            scope.cluster_signature if auto else None,
            q.telemetry(key.namespace, key.labels),
            q.gateway_authorization(key.namespace, key.labels),
            q.gateway_jwt(key.namespace, key.labels),
        )

    def build(self, key: GatewayKey) -> GatewayBuild:
        scope = self.scope(key)

        def build(ctx: Context, previous: GatewayBuild | None) -> tuple[GatewayBuild, list[MemoEntry]]:
            q = ctx.queries
            config = build_gateway(
                ctx.world,
                gateways=q.selected_gateways(key.namespace, key.labels),
                scope=ctx.scope,  # type: ignore[arg-type]
                key=key,
                file_problem=q.gateway_file_problem,
                authz=q.gateway_authorization(key.namespace, key.labels),
                jwt=q.gateway_jwt(key.namespace, key.labels),
            )
            refused: list[MemoEntry] = []
            telemetry = q.telemetry(key.namespace, key.labels)
            listeners = with_telemetry(config.listeners, telemetry) if config.listeners else ()
            own = {LISTENER: build_all(listeners, refused), ROUTE: build_all(config.routes, refused)}
            # the collectors' clusters (access log and trace services) where a listener uses them
            collectors = telemetry.collector_clusters if config.listeners else frozenset()
            self.memo.keep(refused)
            layer = reuse_layer(own, previous.layer if previous is not None else None)
            errors = tuple(dict.fromkeys(config.errors))
            return (
                GatewayBuild(
                    layer,
                    frozenset(config.clusters) | collectors,
                    tuple(config.sni_targets),
                    frozenset(config.secrets),
                    errors,
                ),
                refused,
            )

        context = Context(world=self.world, scope=scope, queries=self.queries)
        built = self.builds.get(key, inputs=lambda: self._inputs(key, scope), context=context, build=build)
        self.build_errors += built.errors
        return built

    # -- clusters, endpoints and secrets ------------------------------------------------------------

    def _entries(self, scope: Scope, names: frozenset[str]) -> list[ServiceEntry]:
        hosts = {name.split("|", 3)[3] for name in names if name.count("|") == 3}
        return [
            self.outbound._service_entry(scope, service, ports)
            for service, ports in scope.services
            if service.hostname in hosts
        ]

    def cluster_layer(self, key: GatewayKey, built: GatewayBuild) -> tuple[Snapshot, frozenset[str]]:
        """(clusters and endpoints of the destinations and of the clusters its EnvoyFilters name, the SDS names
        their clusters use)."""
        scope = self.scope(key)
        names = built.clusters | self.queries.envoy_filter_clusters(key.namespace, key.labels)
        entries = self._entries(scope, names)
        targets = built.sni_targets
        endpoints = self.world.endpoints

        def inputs() -> Hashable:
            return (
                tuple(Ident(e) for e in entries),
                tuple(
                    (Ident(endpoints.get((s.hostname, p.number))), Ident(scope.destination_rule(s.hostname)))
                    for s, p, _ in targets
                ),
            )

        def build(
            ctx: Context, previous: tuple[Snapshot, frozenset[str]] | None
        ) -> tuple[tuple[Snapshot, frozenset[str]], list[MemoEntry]]:
            used: list[MemoEntry] = []
            by_type: dict[str, dict[str, object]] = {CLUSTER: {}, ENDPOINT: {}}
            secret_names: set[str] = set()
            for entry in entries:
                by_type[CLUSTER].update((n, r) for n, r in entry.clusters.items() if n in names)
                by_type[ENDPOINT].update((n, r) for n, r in entry.assignments.items() if n in names)
                secret_names |= entry.secret_names
                used += entry.used
            if targets:
                specs = list(sni_specs(ctx.scope, targets, sidecar_port=self.options.sidecar_endpoint_port))  # type: ignore[arg-type]
                for kind, tag in ((CLUSTER, "sni-cds"), (ENDPOINT, "sni-eds")):
                    chosen = [s for s in specs if isinstance(s.key, tuple) and s.key[0] == tag]
                    by_type[kind].update(self.memo.resolve(chosen, used))
            layer = reuse_layer(by_type, previous[0] if previous is not None else None)  # type: ignore[arg-type]
            return (layer, frozenset(secret_names)), used

        context = Context(world=self.world, scope=scope, queries=self.queries)
        return self.clusters.get((scope.key, names, targets), inputs=inputs, context=context, build=build)

    def layers(self, proxy: Proxy) -> tuple[Snapshot, Snapshot, Snapshot, Snapshot]:
        """(clusters, routes, own, secrets) of a router proxy (its routes are in its own layer)."""
        key = self.key_for(proxy)
        built = self.build(key)
        clusters, cluster_secrets = self.cluster_layer(key, built)
        secrets = self.outbound.secrets_of(self.scope(key), built.secrets | cluster_secrets)
        return clusters, EMPTY_LAYER, built.layer, secrets

    # -- World checks ------------------------------------------------------------------------------

    def _reference_errors(self) -> list[InvalidResource]:
        """`reference_errors`, carried while the VirtualServices and the Gateways are the same objects."""
        world, held = self.world, self._prev_references
        if held is not None and held[0] is world.virtual_services_by_name and held[1] is world.gateways:
            found = held[2]
            if self._check and found != reference_errors(world):
                raise MissedInput("gateway reference check carried with the same inputs but its result changed")
        else:
            found = reference_errors(world)
        self.references = (world.virtual_services_by_name, world.gateways, found)
        return found

    def _workloads(self) -> GatewayWorkloads:
        """The selected and the troubled workloads: carried while the workloads and the Gateways are the same
        objects, looked at again over the World's changed addresses only while just the workloads moved."""
        world, held, q = self.world, self._prev_view, self.queries
        workloads, gateways, scoped = world.workloads, world.gateways, self.options.scope_gateway_to_namespace

        def selected(w: Workload) -> bool:
            return bool(gateways) and bool(q.selected_gateways(w.namespace, w.labels))

        changes = world.changes_since(self._prev_world)
        same = held is not None and held.gateways is gateways and held.scope_to_namespace == scoped
        if same and held is not None and held.workloads is workloads:
            view = held
        elif (
            same
            and held is not None
            and changes is not None
            and self._prev_world is not None
            and held.workloads is self._prev_world.workloads
        ):
            picked, troubled = dict(held.selected), dict(held.troubled)
            for ip in changes.workloads:
                picked.pop(ip, None)
                troubled.pop(ip, None)
                workload = workloads.get(ip)
                if workload is not None and selected(workload):
                    picked[ip] = workload
                if workload is not None and workload.proxy_config_problem:
                    troubled[ip] = workload
            view = GatewayWorkloads(workloads, gateways, scoped, picked, troubled)
        else:
            view = GatewayWorkloads(
                workloads,
                gateways,
                scoped,
                {ip: w for ip, w in workloads.items() if selected(w)},
                {ip: w for ip, w in workloads.items() if w.proxy_config_problem},
            )
        if self._check and (
            dict(view.selected) != {ip: w for ip, w in workloads.items() if selected(w)}
            or dict(view.troubled) != {ip: w for ip, w in workloads.items() if w.proxy_config_problem}
        ):
            raise MissedInput("gateway workloads updated over the World's changes but they differ")
        self.workload_view = view
        return view

    def errors(self) -> list[InvalidResource]:
        """Every gateway error of the World: per gateway workload (namespace and labels) selected by a
        Gateway, the errors its build meets; and the checks that need no workload."""
        world, q = self.world, self.queries
        found: dict[InvalidResource, None] = dict.fromkeys(self._reference_errors())
        view = self._workloads()
        # a Gateway no workload is selected by: none of the selected ones is (each is selected by some Gateway)
        found.update(
            dict.fromkeys(
                selector_errors(
                    world, workloads=view.selected, scope_to_namespace=self.options.scope_gateway_to_namespace
                )
            )
        )
        for gateway in world.gateways.values():
            bound = world.gateway_bindings.get((gateway.metadata.namespace, gateway.metadata.name), ())
            found.update(dict.fromkeys(binding_errors(world, gateway, bound)))
        # only the workloads some Gateway selects (the port map reads every workload's services: not for all)
        selected = view.selected.values()
        groups = {(w.namespace, w.labels, self.port_map(w.address)) for w in selected}
        found.update(
            dict.fromkeys(proxy_config_errors(view.troubled.values(), {(w.namespace, w.labels) for w in selected}))
        )
        for namespace, labels, port_map in sorted(groups):
            # with the agent's certificate: its build serves (so checks) every server a proxy can have
            key = GatewayKey(namespace=namespace, labels=labels, sds=True, port_map=port_map)
            scope = self.scope(key)
            inputs = (key, self._inputs(key, scope))
            errors = self._checks.get(inputs)
            if errors is None:
                errors = self._prev_checks.get(inputs)
                if errors is None or self._check:
                    fresh = tuple(
                        build_gateway(
                            world,
                            gateways=q.selected_gateways(namespace, labels),
                            scope=scope,
                            key=key,
                            file_problem=q.gateway_file_problem,
                        ).errors
                    )
                    if errors is not None and errors != fresh:
                        raise MissedInput(f"gateway check of {key} reused under its inputs but its result changed")
                    errors = fresh
                self._checks[inputs] = errors
            found.update(dict.fromkeys(errors))
        return list(found)
