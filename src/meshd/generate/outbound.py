"""The outbound layers a scope's proxies share, each in its own named LayerCache:
- `services`: one service's clusters and endpoints as a scope sees them (shared by every scope that
  sees the service the same way);
- `clusters`: per scope signature (proxies that see the same services, rules and endpoints), its
  outbound clusters and endpoints, assembled service by service;
- `secrets`: per namespace and set of credentialNames those clusters use, the SDS secrets (read
  from that namespace only);
- `routes`: per scope, its outbound route configurations (virtual hosts serialised once and shared).
"""

from __future__ import annotations

from collections.abc import Hashable
from types import MappingProxyType
from typing import NamedTuple

from meshd.api.meta import InvalidResource
from meshd.api.virtualservice import VirtualService
from meshd.generate.layers import Entry, LayerCache
from meshd.generate.memo import MemoEntry, ResourceMemo, reuse_layer
from meshd.generate.options import GenerateOptions
from meshd.generate.queries import Queries
from meshd.generate.reads import Context, MissedInput, Tracer
from meshd.model.services import MeshService, ServicePort
from meshd.model.world import World
from meshd.translate.clusters import clusters_opening, service_cluster_specs, service_secret_names
from meshd.translate.endpoints import service_assignment_specs
from meshd.translate.routes import RouteTable, VhostBody, changed_route_hosts, delegate_inputs
from meshd.translate.scope import Scope, ScopeKey, Signature, same_items
from meshd.translate.secrets import readable, secret_specs, source_keys
from meshd.translate.spec import Ident
from meshd.xds.resource import CLUSTER, ENDPOINT, ROUTE, SECRET, Snapshot, XdsResource

EMPTY_LAYER = Snapshot(resources=MappingProxyType({}))


class ServiceEntry(NamedTuple):
    """One service's clusters and endpoints as a scope sees them, and the SDS names its clusters use."""

    clusters: dict[str, XdsResource]
    assignments: dict[str, XdsResource]
    secret_names: frozenset[str]
    used: list[MemoEntry]  # the memo entries of both


class ServicePart(NamedTuple):
    """One service of a scope's cluster layer: the inputs that may change without changing the scope's
    signature (its rules and its ports' endpoints, by identity), and the `services` entry they gave."""

    inputs: Hashable
    key: Hashable
    entry: Entry[ServiceEntry]


class ClusterLayer(NamedTuple):
    layer: Snapshot
    secret_names: frozenset[str]
    parts: tuple[ServicePart, ...] = ()  # per service of the scope, in its order
    common: Hashable = None  # the inputs every service's entry reads besides its own (files, PeerAuthentications)


class OutboundLayers:
    """The shared layers of one generation, carried from the previous generation's."""

    def __init__(
        self,
        world: World,
        *,
        options: GenerateOptions,
        memo: ResourceMemo,
        queries: Queries,
        previous: OutboundLayers | None,
        tracer: Tracer | None,
    ) -> None:
        self.world = world
        self.options = options
        self.memo = memo
        self.queries = queries
        self._check = tracer is not None
        self.services: LayerCache[Hashable, ServiceEntry] = _cache("services", previous, memo, tracer)
        self.clusters: LayerCache[Signature, ClusterLayer] = _cache("clusters", previous, memo, tracer)
        self.secrets: LayerCache[tuple[str, frozenset[str]], Snapshot] = _cache("secrets", previous, memo, tracer)
        self.routes: LayerCache[ScopeKey, Snapshot] = _cache("routes", previous, memo, tracer)
        self._vhost_cache: dict[Hashable, VhostBody] = {}
        self._prev_vhosts = previous._vhost_cache if previous is not None else {}
        self._destination_cache: dict[int, tuple[VirtualService, list[str]]] = {}
        # route inputs per scope; carried over while the scopes are (no scope input moved but VirtualServices), for a
        # scope that sees none of the hosts whose VirtualServices changed (`changed_route_hosts`)
        self._route_inputs: dict[ScopeKey, Hashable] = {}
        self._prev_route_inputs: dict[ScopeKey, Hashable] = {}
        # with carried route inputs: the hosts whose VirtualServices changed (a scope seeing none of them keeps its
        # inputs); None: no VirtualService changed
        self._route_hosts: frozenset[str] | None = None
        if previous is not None and queries.rebased:
            if same_items(previous.world.virtual_services_by_name, world.virtual_services_by_name):
                self._prev_route_inputs = previous._route_inputs if queries.carried else {}
            elif (changed := changed_route_hosts(previous.world, world)) is not None:
                self._prev_route_inputs, self._route_hosts = previous._route_inputs, changed
        self._contexts: dict[ScopeKey, Context] = {}
        # the hostnames of each cluster signature's services (carried: a signature is one object across
        # generations), and the rules the previous generation's cluster layer inputs were read from
        self._hosts: dict[Signature, frozenset[str]] = {}
        self._prev_hosts = previous._hosts if previous is not None else {}
        self._prev_rules = previous.world.rules_by_host if previous is not None else None
        self._rules_same: bool | None = None
        self._check = tracer is not None
        # rejections found while building (check mode compares them with what the World checks report)
        self.build_errors: list[InvalidResource] = []

    def _context(self, scope: Scope) -> Context:
        """What builds for this scope read (one per scope and generation: made on the hot path)."""
        context = self._contexts.get(scope.key)
        if context is None:
            context = self._contexts[scope.key] = Context(world=self.world, scope=scope, queries=self.queries)
        return context

    def _scope(self, key: ScopeKey) -> Scope:
        return self.queries.scope(key)

    # -- clusters and endpoints, per scope signature ------------------------------------------------

    def cluster_layer(self, scope: Scope) -> ClusterLayer:
        signature = scope.cluster_signature
        per_service: list[Hashable] = []  # computed once by inputs(), read again by build()

        def service_inputs() -> tuple[Hashable, ...]:
            # Each service's DestinationRules and endpoints, compared by identity (WorldState keeps a host's
            # rules tuple, and an unchanged service's endpoints, the same objects).
            carried = self._carried_inputs(signature, scope)
            if carried is not None and not self._check:
                return carried
            endpoints, rules = self.world.endpoints, self.world.rules_by_host
            fresh = tuple(
                (Ident(rules.get(s.hostname)), *(Ident(endpoints.get((s.hostname, p.number))) for p in ports))
                for s, ports in scope.services
            )
            if carried is not None and carried != fresh:
                raise MissedInput(f"cluster layer inputs of {scope.key} carried over the World's changes but differ")
            return fresh

        def common() -> Hashable:
            return (
                self.queries.files_state,  # certificate files that (no longer) exist
                # PeerAuthentications decide auto mTLS (the same mapping object while none changes)
                Ident(self.world.peer_authentications) if signature.value[-1] else None,
            )

        def inputs() -> Hashable:
            # The signature (services, ports, rules) and what each service's entry reads besides it.
            per_service[:] = service_inputs()
            return (signature, tuple(per_service), common())

        def build(ctx: Context, previous: ClusterLayer | None) -> tuple[ClusterLayer, list[MemoEntry]]:
            # Rebuilt service by service. Within one signature (the same services and ports), a service whose
            # rules and endpoints are the objects they were, under the same common inputs, has the entry it
            # had: taken from the previous layer without its key being computed (an endpoint change walks
            # the scope's services once, comparing two identities each).
            mine = tuple(per_service) if per_service else service_inputs()
            shared = common()
            before = previous.parts if previous is not None and previous.common == shared else ()
            if len(before) != len(mine):
                before = ()
            by_type: dict[str, dict[str, XdsResource]] = {CLUSTER: {}, ENDPOINT: {}}
            names: set[str] = set()
            used: list[MemoEntry] = []
            parts: list[ServicePart] = []
            for i, (service, ports) in enumerate(ctx.scope.services):  # type: ignore[union-attr]
                part = before[i] if before and before[i].inputs == mine[i] else None
                if part is not None:
                    current = self.services.current(part.key)  # another scope's this generation: that one
                    if current is None:
                        self.services.carry(part.key, part.entry)
                    elif current is not part.entry:
                        part = part._replace(entry=current)
                    if self._check:  # the entry the key gives is the one taken
                        key, entry = self._service_entry_of(scope, service, ports)
                        if key != part.key or entry.value is not part.entry.value:
                            raise AssertionError(f"cluster layer reused an outdated entry of {service.hostname}")
                else:
                    key, entry = self._service_entry_of(scope, service, ports)
                    part = ServicePart(mine[i], key, entry)
                parts.append(part)
                value = part.entry.value
                by_type[CLUSTER].update(value.clusters)
                by_type[ENDPOINT].update(value.assignments)
                names |= value.secret_names
                used += value.used
            layer = reuse_layer(by_type, previous.layer if previous is not None else None)
            return ClusterLayer(layer, frozenset(names), tuple(parts), shared), used

        return self.clusters.get(signature, inputs=inputs, context=self._context(scope), build=build)

    def _carried_inputs(self, signature: Signature, scope: Scope) -> tuple[Hashable, ...] | None:
        """The previous generation's per-service inputs of a signature's cluster layer, when none can have
        changed: the DestinationRules are the same mapping and no endpoint key the World changed is of one of
        its services (an endpoint change then walks no scope's services, only the changed hosts)."""
        changed = self.queries.changed_endpoint_hosts()
        entry = self.clusters.previous(signature)
        if changed is None or entry is None or not self._same_rules():
            return None
        if not self._scope_hosts(scope).isdisjoint(changed):
            return None
        inputs = entry.inputs
        assert isinstance(inputs, tuple)
        per_service = inputs[1]
        assert isinstance(per_service, tuple)
        return per_service

    def _scope_hosts(self, scope: Scope) -> frozenset[str]:
        """The hostnames of the services a scope sees (per cluster signature: one object across generations)."""
        signature = scope.cluster_signature
        hosts = self._hosts.get(signature) or self._prev_hosts.get(signature)
        if hosts is None:
            hosts = frozenset(s.hostname for s, _ in scope.services)
        self._hosts[signature] = hosts
        return hosts

    def _same_rules(self) -> bool:
        """Whether every host's DestinationRules are the previous World's objects (once per generation)."""
        if self._rules_same is None:
            before = self._prev_rules
            self._rules_same = before is not None and same_items(before, self.world.rules_by_host)
        return self._rules_same

    def _service_entry_of(
        self, scope: Scope, service: MeshService, ports: tuple[ServicePort, ...]
    ) -> tuple[Hashable, Entry[ServiceEntry]]:
        """A service's entry in `services` (built or reused) and its key."""
        key = self._service_key(scope, service, ports)
        self._service_entry(scope, service, ports, key=key)
        entry = self.services.current(key)
        assert entry is not None
        return key, entry

    def _service_key(self, scope: Scope, service: MeshService, ports: tuple[ServicePort, ...]) -> Hashable:
        """Exactly the inputs of one service's clusters and endpoints as a scope sees them."""
        rule = scope.destination_rule(service.hostname)
        endpoints = self.world.endpoints
        return (
            service,
            ports,
            Ident(rule),
            tuple(Ident(endpoints.get((service.hostname, p.number))) for p in ports),
            self.queries.missing(rule),
            scope.key.locality,
            scope.key.failover_labels,
            scope.destination_mode(service) if scope.key.sds else None,
        )

    def _service_entry(
        self, scope: Scope, service: MeshService, ports: tuple[ServicePort, ...], *, key: Hashable = None
    ) -> ServiceEntry:
        """One service's clusters and endpoints as a scope sees them, keyed by exactly its inputs."""
        key = key if key is not None else self._service_key(scope, service, ports)

        def build(ctx: Context, _: ServiceEntry | None) -> tuple[ServiceEntry, list[MemoEntry]]:
            scope = ctx.scope
            assert scope is not None
            used: list[MemoEntry] = []
            clusters = self.memo.resolve(service_cluster_specs(scope, service, ports), used)
            rule = scope.destination_rule(service.hostname)
            missing = ctx.queries.missing(rule)
            if missing and rule is not None:
                for name in clusters_opening(rule, service, ports, missing):
                    clusters.pop(name, None)  # (None: the proto guard left it out)
            specs = service_assignment_specs(scope, service, ports, sidecar_port=self.options.sidecar_endpoint_port)
            assignments = self.memo.resolve(specs, used)
            return ServiceEntry(clusters, assignments, service_secret_names(scope, service, ports), used), used

        return self.services.get(key, context=self._context(scope), build=build)

    # -- SDS secrets, per namespace and credentialNames ---------------------------------------------

    def secret_layer(self, scope: Scope) -> Snapshot:
        """The SDS secrets of a scope's clusters, from its namespace; shared by every scope of that
        namespace that uses the same credentialNames."""
        return self.secrets_of(scope, self.cluster_layer(scope).secret_names)

    def secrets_of(self, scope: Scope, names: frozenset[str]) -> Snapshot:
        """The SDS secrets `names` as proxies of the scope's namespace are served them (a gateway's
        credentialNames too)."""
        if not names:
            return EMPTY_LAYER
        namespace = scope.namespace

        def inputs() -> Hashable:
            secrets, grants = self.world.secrets, self.world.gateway_secret_grants
            return tuple(
                (tuple(Ident(secrets.get(s)) for s in source_keys(namespace=namespace, resource=name)),
                 readable(grants, namespace=namespace, resource=name))
                for name in sorted(names)
            )  # fmt: skip

        def build(ctx: Context, previous: Snapshot | None) -> tuple[Snapshot, list[MemoEntry]]:
            used: list[MemoEntry] = []
            specs = secret_specs(
                ctx.world.secrets, namespace=namespace, names=names, grants=ctx.world.gateway_secret_grants
            )
            resolved = self.memo.resolve(specs, used)
            return reuse_layer({SECRET: resolved}, previous), used

        return self.secrets.get((namespace, names), inputs=inputs, context=self._context(scope), build=build)

    # -- routes, per scope ----------------------------------------------------------------------------

    def route_inputs(self, key: ScopeKey) -> Hashable:
        """What a scope's routes are built from (the key of its route layer; proxyless gRPC clients' routes
        are built from the same inputs)."""
        found = self._route_inputs.get(key)
        if found is not None:
            return found
        scope = self._scope(key)
        carried = self._prev_route_inputs.get(key)
        if (
            carried is not None
            and not scope.headless  # (a headless service's inputs hold its endpoints)
            and (self._route_hosts is None or self._scope_hosts(scope).isdisjoint(self._route_hosts))
        ):
            self._route_inputs[key] = carried
            return carried
        # Routes depend on the visible services (the signature), the VirtualServices and rules of
        # those hosts, and the services and rules of every host those VirtualServices route to;
        # never on endpoints (but a headless service's pods). WorldState keeps each of these the same
        # object while unchanged.
        world = self.world
        deps: list[Ident | None] = []
        for service, ports in scope.services:
            vss = world.virtual_services_for(service.hostname)
            deps += (Ident(vss), Ident(world.rules_by_host.get(service.hostname)))
            if service.headless:  # its pods' virtual hosts
                deps += tuple(Ident(world.endpoints.get((service.hostname, p.number))) for p in ports)
            for vs in vss or ():
                deps += delegate_inputs(world, vs)
                for host in self.destinations(vs):
                    deps += (Ident(world.services.get(host)), Ident(world.rules_by_host.get(host)))
        catch_all = self.queries.outbound_mode(key) if key.capture else None
        found = self._route_inputs[key] = (scope.cluster_signature, tuple(deps), catch_all)
        return found

    def route_layer(self, key: ScopeKey) -> Snapshot:
        scope = self._scope(key)

        def inputs() -> Hashable:
            return self.route_inputs(key)

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
            self.build_errors += table.errors
            return reuse_layer({ROUTE: routes}, previous), used

        return self.routes.get(key, inputs=inputs, context=self._context(scope), build=build)

    def destinations(self, vs: VirtualService) -> list[str]:
        found = self._destination_cache.get(id(vs))
        if found is None or found[0] is not vs:
            found = (vs, self.queries.destinations(vs))
            self._destination_cache[id(vs)] = found
        return found[1]


def _cache(name: str, previous: OutboundLayers | None, memo: ResourceMemo, tracer: Tracer | None) -> LayerCache:  # type: ignore[type-arg]
    return LayerCache(
        name, previous=getattr(previous, name) if previous is not None else None, memo=memo, tracer=tracer
    )
