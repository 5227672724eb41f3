"""Snapshot generation with sharing, across proxies and across pushes.

Translation declares resources as specs (name, key of every input, build function). For one World
a ConfigGenerator builds, each in its own named LayerCache (generate.layers):
- `services`: one service's clusters and endpoints as a scope sees them;
- `clusters`: per scope signature (proxies that see the same services, rules and endpoints), its
  outbound clusters and endpoints;
- `secrets`: per namespace and set of credentialNames those clusters use, the SDS secrets (read
  from that namespace only);
- `routes`: per scope, its outbound route configurations;
- `proxies`: per proxy group (address + scope), its listeners and inbound clusters.
Every resource is built and serialised once per distinct key; the memo carries resources over from
the previous generation, so a push rebuilds only what changed (one endpoint change: one
ClusterLoadAssignment). A layer whose resources are all unchanged is the previous layer object, so
the hub can tell which proxies have anything new without comparing bytes. The options are part of
every key: a generation with other options carries nothing over. With `check=True` every reuse is
checked against what its build read (generate.reads).
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from types import MappingProxyType
from typing import NamedTuple

from meshd.api.meta import InvalidResource
from meshd.api.virtualservice import VirtualService
from meshd.generate.checks import WorldChecks
from meshd.generate.layers import LayerCache
from meshd.generate.memo import MemoEntry, ResourceMemo, build_all, reuse_layer
from meshd.generate.options import GenerateOptions
from meshd.generate.queries import Queries
from meshd.generate.reads import Context, Tracer
from meshd.generate.scope_keys import ScopeKeys
from meshd.generate.tls_files import FileCheck, ReadFile
from meshd.model.services import MeshService, ServicePort
from meshd.model.world import World
from meshd.translate.capture import capture_cluster_specs, capture_listener_specs
from meshd.translate.clusters import (
    clusters_opening,
    inbound_cluster_specs,
    service_cluster_specs,
    service_secret_names,
)
from meshd.translate.endpoints import service_assignment_specs
from meshd.translate.listeners import inbound_listener_specs
from meshd.translate.proxy import Proxy
from meshd.translate.routes import RouteTable, delegate_inputs
from meshd.translate.scope import Scope, ScopeKey, Signature
from meshd.translate.secrets import secret_specs
from meshd.translate.spec import Ident
from meshd.translate.upstream_tls import CA_SUFFIX, SDS_PREFIX
from meshd.xds.resource import CLUSTER, ENDPOINT, LISTENER, ROUTE, SECRET, Snapshot, XdsResource

EMPTY_LAYER = Snapshot(resources=MappingProxyType({}))
Group = tuple[str, ScopeKey]  # a proxy group: (address, scope)


class ServiceEntry(NamedTuple):
    """One service's clusters and endpoints as a scope sees them, and the SDS names its clusters use."""

    clusters: dict[str, XdsResource]
    assignments: dict[str, XdsResource]
    secret_names: frozenset[str]
    used: list[MemoEntry]  # the memo entries of both


class ClusterLayer(NamedTuple):
    layer: Snapshot
    secret_names: frozenset[str]


class ProxyLayers(NamedTuple):
    """The layers of a proxy group's snapshot, by name (in this order in the snapshot; extras follow)."""

    clusters: Snapshot
    routes: Snapshot
    own: Snapshot
    secrets: Snapshot


class ConfigGenerator:
    """Builds per-proxy snapshots from one World, each shared part once."""

    def __init__(
        self,
        world: World,
        *,
        options: GenerateOptions | None = None,
        extra: Mapping[str, Sequence[XdsResource]] | None = None,
        previous: ConfigGenerator | None = None,
        read_file: ReadFile | None = None,
        check: bool = False,
    ) -> None:
        """`read_file`: reads certificate files named by DestinationRules on this host to check them
        (standalone sidecars share meshd's filesystem); None leaves them unchecked. `check`: verify every
        reused cache entry against what its build read (tests)."""
        self.world = world
        self.options = options = options or GenerateOptions()
        if previous is not None and previous.options != options:
            previous = None  # the options are part of every key
        self.files: FileCheck = FileCheck(world, read=read_file, previous=previous.files if previous else None)
        tracer = Tracer() if check else None
        self.memo: ResourceMemo = ResourceMemo(previous.memo if previous else None, check=check)
        self.services: LayerCache[Hashable, ServiceEntry] = self._cache("services", previous, tracer)
        self.clusters: LayerCache[Signature, ClusterLayer] = self._cache("clusters", previous, tracer)
        self.secrets: LayerCache[tuple[str, frozenset[str]], Snapshot] = self._cache("secrets", previous, tracer)
        self.routes: LayerCache[ScopeKey, Snapshot] = self._cache("routes", previous, tracer)
        self.proxies: LayerCache[Group, Snapshot] = self._cache("proxies", previous, tracer)
        self._check = check
        self.queries: Queries = Queries(
            world, options=options, files=self.files, previous=previous.queries if previous else None
        )
        self._keys = ScopeKeys(world, root_namespace=options.root_namespace)
        self._vhost_cache: dict[Hashable, bytes] = {}
        self._prev_vhosts = previous._vhost_cache if previous is not None else {}
        self._destination_cache: dict[int, tuple[VirtualService, list[str]]] = {}
        # per proxy group: its named layers, and the snapshot made of them (carried to the next generation)
        self._group_layers: dict[Group, ProxyLayers] = {}
        self._group_snapshots: dict[Group, Snapshot] = {}
        self._prev_group_layers = previous._group_layers if previous is not None else {}
        self._prev_groups = previous._group_snapshots if previous is not None else {}
        self._scope_verdicts: dict[ScopeKey, ProxyLayers | None] = {}
        self.checks: WorldChecks = WorldChecks(
            world,
            root_namespace=options.root_namespace,
            files=self.files,
            previous=previous.checks if previous is not None else None,
        )
        previous_extra = previous._extra if previous is not None else None
        self._extra: Snapshot | None = (
            reuse_layer({t: {r.name: r for r in rs} for t, rs in extra.items()}, previous_extra) if extra else None
        )
        self._extras: tuple[Snapshot, ...] = (self._extra,) if self._extra is not None else ()
        self._errors: dict[InvalidResource, None] = dict.fromkeys(world.errors)
        self.builds = 0  # proxy-group snapshots computed (for tests and metrics)

    def _cache(self, name: str, previous: ConfigGenerator | None, tracer: Tracer | None) -> LayerCache:  # type: ignore[type-arg]
        before = getattr(previous, name) if previous is not None else None
        return LayerCache(name, previous=before, memo=self.memo, tracer=tracer)

    @property
    def revision(self) -> int:
        return self.world.revision

    @property
    def errors(self) -> list[InvalidResource]:
        return list(self._errors)

    def precompute(self) -> None:
        """Report every rejected resource once per World, whatever proxies are connected."""
        self._errors.update(dict.fromkeys(self.checks.run(self._destinations)))

    def scope_key(self, proxy: Proxy) -> ScopeKey:
        return self._keys.for_proxy(proxy)

    def _scope(self, key: ScopeKey) -> Scope:
        return self.queries.scope(key)

    def _context(self, scope: Scope | None = None, proxy: Proxy | None = None) -> Context:
        return Context(world=self.world, scope=scope, proxy=proxy, queries=self.queries)

    # -- clusters and endpoints, per scope signature ------------------------------------------------

    def _cluster_layer(self, scope: Scope) -> ClusterLayer:
        signature = scope.cluster_signature

        def inputs() -> Hashable:
            # The signature (services, ports, rules) and each visible endpoint set, compared by identity
            # (the incremental World keeps an unchanged service's endpoints as the same object).
            endpoints, rules = self.world.endpoints, self.world.rules_by_host
            return (
                signature,
                # DestinationRules (subsets, policies) shape the clusters; WorldState keeps a host's
                # rules tuple the same object while they are unchanged.
                tuple(Ident(rules.get(s.hostname)) for s, _ in scope.services),
                tuple(Ident(endpoints.get((s.hostname, p.number))) for s, ports in scope.services for p in ports),
                self.files.state,  # certificate files that (no longer) exist
                # PeerAuthentications decide auto mTLS (the same mapping object while none changes)
                Ident(self.world.peer_authentications) if signature.value[-1] else None,
            )

        def build(ctx: Context, previous: ClusterLayer | None) -> tuple[ClusterLayer, list[MemoEntry]]:
            # Rebuilt service by service: a service whose own inputs did not change contributes its
            # previous resources without a single spec being made.
            by_type: dict[str, dict[str, XdsResource]] = {CLUSTER: {}, ENDPOINT: {}}
            names: set[str] = set()
            used: list[MemoEntry] = []
            for service, ports in ctx.scope.services:  # type: ignore[union-attr]
                entry = self._service_entry(scope, service, ports)
                by_type[CLUSTER].update(entry.clusters)
                by_type[ENDPOINT].update(entry.assignments)
                names |= entry.secret_names
                used += entry.used
            layer = reuse_layer(by_type, previous.layer if previous is not None else None)
            return ClusterLayer(layer, frozenset(names)), used

        return self.clusters.get(signature, inputs=inputs, context=self._context(scope), build=build)

    def _service_key(self, scope: Scope, service: MeshService, ports: tuple[ServicePort, ...]) -> Hashable:
        rule = scope.destination_rule(service.hostname)
        endpoints = self.world.endpoints
        return (
            service,
            ports,
            Ident(rule),
            tuple(Ident(endpoints.get((service.hostname, p.number))) for p in ports),
            self.files.missing(rule),
            scope.key.locality,
            scope.key.failover_labels,
            scope.destination_mode(service) if scope.key.sds else None,
        )

    def _service_entry(self, scope: Scope, service: MeshService, ports: tuple[ServicePort, ...]) -> ServiceEntry:
        """One service's clusters and endpoints as a scope sees them, keyed by exactly its inputs."""
        rule = scope.destination_rule(service.hostname)
        endpoints = self.world.endpoints
        key = (
            service,
            ports,
            Ident(rule),
            tuple(Ident(endpoints.get((service.hostname, p.number))) for p in ports),
            self.files.missing(rule),
            scope.key.locality,
            scope.key.failover_labels,
            scope.destination_mode(service) if scope.key.sds else None,
        )

        def build(ctx: Context, _: ServiceEntry | None) -> tuple[ServiceEntry, list[MemoEntry]]:
            scope = ctx.scope
            assert scope is not None
            used: list[MemoEntry] = []
            clusters = self.memo.resolve(service_cluster_specs(scope, service, ports), used)
            rule = scope.destination_rule(service.hostname)
            missing = ctx.queries.missing(rule)
            if missing and rule is not None:
                for name in clusters_opening(rule, service, ports, missing):
                    del clusters[name]
            specs = service_assignment_specs(scope, service, ports, sidecar_port=self.options.sidecar_endpoint_port)
            assignments = self.memo.resolve(specs, used)
            return ServiceEntry(clusters, assignments, service_secret_names(scope, service, ports), used), used

        return self.services.get(key, context=self._context(scope), build=build)

    # -- SDS secrets, per namespace and credentialNames ---------------------------------------------

    def _secret_layer(self, scope: Scope) -> Snapshot:
        """The SDS secrets of a scope's clusters, from its namespace; shared by every scope of that
        namespace that uses the same credentialNames."""
        names = self._cluster_layer(scope).secret_names
        if not names:
            return EMPTY_LAYER
        namespace = scope.namespace

        def inputs() -> Hashable:
            secrets = self.world.secrets
            return tuple(
                Ident(secrets.get((namespace, n)))
                for name in sorted(names)
                for n in (_secret_base(name), _secret_base(name).removesuffix(CA_SUFFIX))
            )

        def build(ctx: Context, previous: Snapshot | None) -> tuple[Snapshot, list[MemoEntry]]:
            used: list[MemoEntry] = []
            resolved = self.memo.resolve(secret_specs(ctx.world.secrets, namespace=namespace, names=names), used)
            return reuse_layer({SECRET: resolved}, previous), used

        return self.secrets.get((namespace, names), inputs=inputs, context=self._context(scope), build=build)

    # -- routes, per scope ----------------------------------------------------------------------------

    def _route_layer(self, key: ScopeKey) -> Snapshot:
        scope = self._scope(key)

        def inputs() -> Hashable:
            # Routes depend on the visible services (the signature), the VirtualServices and rules of
            # those hosts, and the services and rules of every host those VirtualServices route to;
            # never on endpoints. WorldState keeps each of these the same object while unchanged.
            world = self.world
            deps: list[Ident | None] = []
            for service, _ in scope.services:
                vss = world.virtual_services_for(service.hostname)
                deps += (Ident(vss), Ident(world.rules_by_host.get(service.hostname)))
                for vs in vss or ():
                    deps += delegate_inputs(world, vs)
                    for host in self._destinations(vs):
                        deps += (Ident(world.services.get(host)), Ident(world.rules_by_host.get(host)))
            catch_all = self.queries.outbound_mode(key) if key.capture else None
            return (scope.cluster_signature, tuple(deps), catch_all)

        def build(ctx: Context, previous: Snapshot | None) -> tuple[Snapshot, list[MemoEntry]]:
            used: list[MemoEntry] = []
            catch_all = ctx.queries.outbound_mode(key) if key.capture else None
            table = RouteTable(
                ctx.scope,  # type: ignore[arg-type]
                cache=self._vhost_cache,
                previous_cache=self._prev_vhosts,
                catch_all=catch_all,
                check=self._check,
            )
            routes = self.memo.resolve(table.specs(), used)
            return reuse_layer({ROUTE: routes}, previous), used

        return self.routes.get(key, inputs=inputs, context=self._context(scope), build=build)

    def _destinations(self, vs: VirtualService) -> list[str]:
        found = self._destination_cache.get(id(vs))
        if found is None or found[0] is not vs:
            found = (vs, self.queries.destinations(vs))
            self._destination_cache[id(vs)] = found
        return found[1]

    # -- listeners and inbound clusters, per proxy group --------------------------------------------

    def _own_layer(self, proxy: Proxy, key: ScopeKey) -> Snapshot:
        queries = self.queries

        def inputs() -> Hashable:
            outbound_mode = queries.outbound_mode(key) if proxy.capture else None
            modes = queries.inbound_mtls(proxy.namespace, proxy.ip)
            return (queries.plan(key), queries.served(proxy.ip), modes, proxy.sds, outbound_mode)

        def build(ctx: Context, previous: Snapshot | None) -> tuple[Snapshot, list[MemoEntry]]:
            proxy, q = ctx.proxy, ctx.queries
            assert proxy is not None
            plan, served = q.plan(key), q.served(proxy.ip)
            modes = q.inbound_mtls(proxy.namespace, proxy.ip)
            inbound_port = self.options.inbound_port
            if proxy.capture:
                listener_specs = capture_listener_specs(
                    plan=plan,
                    served=served,
                    modes=modes,
                    sds=proxy.sds,
                    outbound_mode=q.outbound_mode(key),
                    inbound_port=inbound_port,
                )
                own = {LISTENER: build_all(listener_specs), CLUSTER: build_all(capture_cluster_specs(served=served))}
            else:
                # Bound to this proxy's address: nothing to share, so built directly (no memo).
                own = {
                    LISTENER: build_all(
                        [
                            *plan.specs(proxy),
                            *inbound_listener_specs(proxy, served, inbound_port=inbound_port, modes=modes),
                        ]
                    ),
                    CLUSTER: build_all(inbound_cluster_specs(address=proxy.ip, target_ports=[t for _, _, t in served])),
                }
            return reuse_layer(own, previous), []

        return self.proxies.get((proxy.ip, key), inputs=inputs, context=self._context(proxy=proxy), build=build)

    # -- per proxy ----------------------------------------------------------------------------------

    def _layers(self, key: ScopeKey) -> ProxyLayers | None:
        """A scope's shared layers (the own layer left empty) if its listener plan is unchanged since the
        previous generation, else None: computed once per scope and generation."""
        if key in self._scope_verdicts:
            return self._scope_verdicts[key]
        verdict = None
        if self.queries.plan_unchanged(key):
            scope = self._scope(key)
            verdict = ProxyLayers(
                self._cluster_layer(scope).layer, self._route_layer(key), EMPTY_LAYER, self._secret_layer(scope)
            )
        self._scope_verdicts[key] = verdict
        return verdict

    def still_current(self, proxy: Proxy, key: Hashable, held: Snapshot) -> bool:
        """Whether `held` (built by the previous generation for this proxy under scope `key`) is
        exactly what this generation would build, decided without building it: same shared layers
        (the same objects), same listener plan, nothing moved at its address, no Sidecar change."""
        assert isinstance(key, ScopeKey)
        group = (proxy.ip, key)
        before = self._prev_group_layers.get(group)
        moved = self.queries.moved_addresses()
        if before is None or moved is None or proxy.ip in moved or held is not self._prev_groups.get(group):
            return False
        shared = self._layers(key)
        if (
            shared is None
            or before.clusters is not shared.clusters
            or before.routes is not shared.routes
            or before.secrets is not shared.secrets
            or held.layers[len(ProxyLayers._fields) :] != self._extras
        ):
            return False
        carried = self.proxies.previous(group)
        if carried is None:
            return False
        if self._check and self._build(proxy, key, group) is not held:
            raise AssertionError(f"still_current kept an outdated snapshot for {proxy.node_id}")
        self.proxies.carry(group, carried)
        self._group_layers[group] = before
        self._group_snapshots[group] = held
        return True

    def snapshot(self, proxy: Proxy) -> Snapshot:
        key = self.scope_key(proxy)
        group = (proxy.ip, key)
        cached = self._group_snapshots.get(group)
        if cached is not None:
            return cached
        self.builds += 1
        snap = self._group_snapshots[group] = self._build(proxy, key, group)
        return snap

    def _build(self, proxy: Proxy, key: ScopeKey, group: Group) -> Snapshot:
        scope = self._scope(key)
        layers = ProxyLayers(
            clusters=self._cluster_layer(scope).layer,
            routes=self._route_layer(key),
            own=self._own_layer(proxy, key),
            secrets=self._secret_layer(scope),
        )
        self._group_layers[group] = layers
        stack = (*layers, *self._extras)
        previous = self._prev_groups.get(group)
        if (
            previous is not None
            and len(previous.layers) == len(stack)
            and all(a is b for a, b in zip(previous.layers, stack, strict=True))
        ):
            return previous
        return Snapshot(layers=stack)


def _secret_base(resource: str) -> str:
    return resource.removeprefix(SDS_PREFIX)


__all__ = ["EMPTY_LAYER", "ConfigGenerator", "GenerateOptions", "ProxyLayers"]
