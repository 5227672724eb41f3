"""Snapshot generation with sharing, across proxies and across pushes.

Translation declares resources as specs (name, key of every input, build function). For one World
a ConfigGenerator assembles each proxy's snapshot from named layers: the shared outbound layers of
its scope (clusters and endpoints, routes, SDS secrets: generate.outbound) and its own layer
(`proxies`: listeners and inbound clusters per proxy group, i.e. address + scope). Every resource is
built and serialised once per distinct key; the memo carries resources over from the previous
generation, so a push rebuilds only what changed (one endpoint change: one ClusterLoadAssignment).
A layer whose resources are all unchanged is the previous layer object, so the hub can tell which
proxies have anything new without comparing bytes. The options are part of every key: a generation
with other options carries nothing over. With `check=True` every reuse is checked against what its
build read (generate.reads).
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import NamedTuple

from meshd.api.meta import InvalidResource
from meshd.generate.checks import WorldChecks
from meshd.generate.envoyfilters import EnvoyFilterLayers
from meshd.generate.gateways import GatewayLayers
from meshd.generate.layers import Entry, LayerCache
from meshd.generate.memo import MemoEntry, ResourceMemo, reuse_layer
from meshd.generate.options import GenerateOptions
from meshd.generate.outbound import EMPTY_LAYER, OutboundLayers
from meshd.generate.own_inputs import OwnInputs, own_inputs, own_proxy_fields
from meshd.generate.own_layer import build_own_layer
from meshd.generate.proxyless import ProxylessLayers
from meshd.generate.queries import Queries
from meshd.generate.reads import Context, Tracer
from meshd.generate.scope_groups import Group, ScopeGroups, same_shared
from meshd.generate.scope_keys import ScopeKeys
from meshd.generate.tls_files import FileCheck, ReadFile
from meshd.model.world import World
from meshd.translate.proxy import Proxy
from meshd.translate.scope import Scope, ScopeKey
from meshd.xds.resource import Snapshot, XdsResource

# a proxy group (Group): (address, scope); proxyless gRPC clients: (PROXYLESS, scope)
PROXYLESS = "grpc"
ROUTER = "router"  # Istio's node type of gateway proxies


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
        self._check = check
        self.queries: Queries = Queries(
            world, options=options, files=self.files, previous=previous.queries if previous else None
        )
        self.outbound: OutboundLayers = OutboundLayers(
            world,
            options=options,
            memo=self.memo,
            queries=self.queries,
            previous=previous.outbound if previous else None,
            tracer=tracer,
        )
        self.gateways: GatewayLayers = GatewayLayers(
            world,
            options=options,
            memo=self.memo,
            queries=self.queries,
            outbound=self.outbound,
            previous=previous.gateways if previous else None,
            tracer=tracer,
        )
        self.proxyless: ProxylessLayers = ProxylessLayers(
            outbound=self.outbound,
            memo=self.memo,
            previous=previous.proxyless if previous else None,
            tracer=tracer,
        )
        self.proxies: LayerCache[Group, Snapshot] = LayerCache(
            "proxies", previous=previous.proxies if previous else None, memo=self.memo, tracer=tracer
        )
        self.envoyfilters: EnvoyFilterLayers = EnvoyFilterLayers(
            memo=self.memo, previous=previous.envoyfilters if previous else None, tracer=tracer
        )
        self._keys: ScopeKeys = ScopeKeys(
            world, root_namespace=options.root_namespace, previous=previous._keys if previous is not None else None
        )
        # per proxy group: its named layers, and the snapshot made of them (carried to the next generation)
        self._group_layers: dict[Group, ProxyLayers] = {}
        self._group_snapshots: dict[Hashable, Snapshot] = {}
        self._prev_group_layers = previous._group_layers if previous is not None else {}
        self._prev_groups = previous._group_snapshots if previous is not None else {}
        # the sidecar groups by scope (scope_groups.py): a scope's may be adopted whole by the next generation
        self._scope_groups: dict[ScopeKey, ScopeGroups] = {}
        self._prev_scope_groups = previous._scope_groups if previous is not None else {}
        self._scope_verdicts: dict[ScopeKey, ProxyLayers | None] = {}
        self.checks: WorldChecks = WorldChecks(
            world,
            root_namespace=options.root_namespace,
            files=self.files,
            previous=previous.checks if previous is not None else None,
            check=check,
            mesh=options.mesh,
            sidecar_port=options.sidecar_endpoint_port,
        )
        previous_extra = previous._extra if previous is not None else None
        self._extra: Snapshot | None = (
            reuse_layer({t: {r.name: r for r in rs} for t, rs in extra.items()}, previous_extra) if extra else None
        )
        self._extras: tuple[Snapshot, ...] = (self._extra,) if self._extra is not None else ()
        self._prev_extras = previous._extras if previous is not None else None
        self._errors: dict[InvalidResource, None] = dict.fromkeys(world.errors)
        self.builds = 0  # proxy-group snapshots computed (for tests and metrics)
        self._precomputed = False

    @property
    def revision(self) -> int:
        return self.world.revision

    @property
    def errors(self) -> list[InvalidResource]:
        """Rejected resources: every one of the World, and the generated resources the proto guard left
        out of the snapshots built so far (snapshots are built for connected proxies)."""
        refused = self.refused
        return [*self._errors, *(e for e in refused if e not in self._errors)] if refused else list(self._errors)

    @property
    def refused(self) -> list[InvalidResource]:
        """Generated resources (or parts) left out of the snapshots built so far: Envoy's proto
        validation would refuse them (generate.memo)."""
        return list(dict.fromkeys(e for errors in self.memo.refused.values() for e in errors))

    def precompute(self) -> None:
        """Report every rejected resource once per World, whatever proxies are connected."""
        self._errors.update(dict.fromkeys(self.checks.run(self.outbound.destinations)))
        self._errors.update(dict.fromkeys(self.gateways.errors()))
        self._precomputed = True

    def scope_key(self, proxy: Proxy) -> Hashable:
        if proxy.type == ROUTER:
            return (ROUTER, self.gateways.key_for(proxy))
        return self._keys.for_proxy(proxy)

    def _scope(self, key: ScopeKey) -> Scope:
        return self.queries.scope(key)

    def _context(self, scope: Scope | None = None, proxy: Proxy | None = None) -> Context:
        return Context(world=self.world, scope=scope, proxy=proxy, queries=self.queries)

    # -- listeners and inbound clusters, per proxy group --------------------------------------------

    def _own_layer(self, proxy: Proxy, key: ScopeKey) -> Snapshot:
        carried = self._carried_own_layer(proxy, key)
        if carried is not None:
            return carried

        def build(ctx: Context, previous: Snapshot | None) -> tuple[Snapshot, list[MemoEntry]]:
            return build_own_layer(ctx, previous, key=key, memo=self.memo, inbound_port=self.options.inbound_port)

        return self.proxies.get(
            (proxy.ip, key),
            inputs=lambda: own_inputs(self.queries, proxy, key),
            context=self._context(proxy=proxy),
            build=build,
        )

    def _carried_own_layer(self, proxy: Proxy, key: ScopeKey) -> Snapshot | None:
        """The previous generation's own layer of the proxy's group, taken without computing its inputs when
        none can have changed: same listener plan, nothing moved at its address and no policy kind changed
        anywhere (`Queries.moved_addresses`), built for a proxy with the same fields. Computing the inputs
        (the workload's PeerAuthentication, JWT, authorization and telemetry lookups) costs ~130 µs a proxy:
        most of an endpoint change's push when every proxy's clusters layer is new. None: look it up."""
        group = (proxy.ip, key)
        entry = self.proxies.previous(group)
        if entry is None or self.proxies.current(group) is not None:
            return None
        inputs = entry.inputs
        if not isinstance(inputs, OwnInputs) or inputs.proxy != own_proxy_fields(proxy):
            return None
        moved = self.queries.moved_addresses()
        if moved is None or proxy.ip in moved or not self.queries.plan_unchanged(key):
            return None
        if self._check and own_inputs(self.queries, proxy, key) != inputs:
            raise AssertionError(f"the own layer of {proxy.node_id} was carried while its inputs changed")
        self.proxies.carry(group, entry)
        return entry.value

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
                self.outbound.cluster_layer(scope).layer,
                self.outbound.route_layer(key),
                EMPTY_LAYER,
                self.outbound.secret_layer(scope),
            )
        self._scope_verdicts[key] = verdict
        return verdict

    def still_current(self, proxy: Proxy, key: Hashable, held: Snapshot) -> bool:
        """Whether `held` (built by the previous generation for this proxy under scope `key`) is
        exactly what this generation would build, decided without building it: same shared layers
        (the same objects), same listener plan, nothing moved at its address, no Sidecar change.
        Gateways are looked at every time (their layers are cached: an unchanged one is the same object)."""
        if proxy.type == ROUTER:
            return False
        assert isinstance(key, ScopeKey)
        if proxy.proxyless:
            return False  # snapshot() gives back the held object while its layer is unchanged
        if self.queries.envoy_filters(proxy.namespace, proxy.ip) or self.queries.wasm_plugins(
            proxy.namespace, proxy.ip
        ):
            return False  # EnvoyFilters patch it: the patch layer decides (a held patched one is not _prev_groups')
        if self.scope_key(proxy) != key:
            # its scope moved (e.g. a new DestinationRule workload selector or sourceLabels selector now
            # distinguishes it): the held snapshot was built for another scope
            return False
        moved = self.queries.moved_addresses()
        if moved is None or proxy.ip in moved or held.layers[len(ProxyLayers._fields) :] != self._extras:
            return False
        shared = self._layers(key)
        return shared is not None and self._keep(proxy, key, held, shared)

    def _keep(self, proxy: Proxy, key: ScopeKey, held: Snapshot, shared: ProxyLayers) -> bool:
        """Carry the proxy's group into this generation if `held` is its snapshot of the previous one and
        was made of the scope's shared layers as they are now (the same objects)."""
        group = (proxy.ip, key)
        before, carried = self._prev_group_layers.get(group), self.proxies.previous(group)
        if (
            before is None
            or carried is None
            or held is not self._prev_groups.get(group)
            or before.clusters is not shared.clusters
            or before.routes is not shared.routes
            or before.secrets is not shared.secrets
        ):
            return False
        if self._check and (self.scope_key(proxy) != key or self._build(proxy, key, group) is not held):
            raise AssertionError(f"a push kept an outdated snapshot for {proxy.node_id}")
        self.proxies.carry(group, carried)
        self._group_layers[group] = before
        self._group_snapshots[group] = held
        self._file(key, group, held, before, carried)
        return True

    def _file(self, key: ScopeKey, group: Group, snapshot: Snapshot, layers: ProxyLayers, own: Entry[Snapshot]) -> None:
        """File a sidecar group under its scope for the next generation. A group on other shared layers than the
        groups filed so far starts a new filing: it lacks the earlier groups, so it is not adopted while their
        proxies are connected."""
        groups = self._scope_groups.get(key)
        if groups is None or not same_shared(groups.shared, layers):
            groups = self._scope_groups[key] = ScopeGroups(layers)
        groups.add(group, snapshot, layers, own)

    def _adopt(self, key: ScopeKey, held: Sequence[tuple[Proxy, Snapshot]], shared: ProxyLayers) -> bool:
        """What `_keep` decides proxy by proxy, decided for the whole scope: the groups the previous generation
        filed under it are adopted at once if they are exactly the groups of the proxies held, each proxy holds its
        group's snapshot, none of their addresses moved and the scope's shared layers are those they were built
        on. (The caller checked the rest: `_scope_unchanged`.) The hub asks about a scope with the same list object
        while no proxy of it came, went or was given another snapshot: groups adopted for that very list are not
        looked at proxy by proxy again. In check mode every adopted snapshot is built again and must be the one
        held."""
        groups = self._prev_scope_groups.get(key)
        moved = self.queries.moved_addresses()
        if groups is None or moved is None or not same_shared(groups.shared, shared):
            return False
        by_ip = groups.by_ip
        if not moved.isdisjoint(by_ip):
            return False
        if groups.held is not held:  # (the very list these groups were adopted for: nothing to look at again)
            if not all(by_ip.get(proxy.ip) is snap for proxy, snap in held):
                return False
            if len({proxy.ip for proxy, _ in held}) != len(by_ip):
                return False  # some filed group is no longer held (its proxy left): filed again one by one
            groups.held = held
        if self._check:
            for proxy, snap in held:
                if (
                    proxy.proxyless
                    or self.scope_key(proxy) != key
                    or self._build(proxy, key, (proxy.ip, key)) is not snap
                ):
                    raise AssertionError(f"a push adopted an outdated snapshot for {proxy.node_id}")
        self.proxies.carry_all(groups.own, groups.used)
        self._group_layers.update(groups.layers)
        self._group_snapshots.update(groups.snapshots)
        self._scope_groups[key] = groups
        return True

    def still_current_many(self, key: Hashable, held: Sequence[tuple[Proxy, Snapshot]]) -> list[bool] | bool:
        """`still_current` for the proxies of one scope (`key`) at once; True when every one of them is.
        When nothing a scope key or the scope's shared layers read changed (`_scope_unchanged`), a proxy
        whose address did not move keeps what it holds after three lookups: its scope, its EnvoyFilters and
        its group's layers are not looked at again. An endpoint change with a Sidecar per namespace leaves
        most scopes so."""
        if not isinstance(key, ScopeKey) or not self._scope_unchanged(key):
            return [self.still_current(proxy, key, snap) for proxy, snap in held]
        moved = self.queries.moved_addresses()
        assert moved is not None
        shared = self._scope_verdicts[key]
        assert shared is not None
        if self._adopt(key, held, shared):
            return True
        verdicts = [
            self.still_current(proxy, key, snap)
            if proxy.type == ROUTER or proxy.proxyless or proxy.ip in moved
            else self._keep(proxy, key, snap, shared)
            for proxy, snap in held
        ]
        return True if all(verdicts) else verdicts

    def _scope_unchanged(self, key: ScopeKey) -> bool:
        """Whether a proxy of this scope whose address did not move keeps its scope key, has no EnvoyFilter
        or WasmPlugin and has the extra layers it had: the scope keys were carried from the previous
        generation (nothing they read changed), there are no EnvoyFilters and WasmPlugins, the extras are the
        previous ones, and the scope's listener plan is unchanged (`_layers`)."""
        world = self.world
        return (
            self._keys.carried
            and not world.envoy_filters
            and not world.wasm_plugins
            and self._prev_extras is not None
            and len(self._prev_extras) == len(self._extras)
            and all(a is b for a, b in zip(self._prev_extras, self._extras, strict=True))
            and self.queries.moved_addresses() is not None
            and self._layers(key) is not None
        )

    def snapshot(self, proxy: Proxy) -> Snapshot:
        if proxy.type == ROUTER:
            return self._router_snapshot(proxy)
        key = self._keys.for_proxy(proxy)
        group = (PROXYLESS if proxy.proxyless else proxy.ip, key)
        cached = self._group_snapshots.get(group)
        if cached is None:
            self.builds += 1
            cached = self._group_snapshots[group] = self._build(proxy, key, group)
            own = self.proxies.current(group)
            if own is not None and not proxy.proxyless:
                self._file(key, group, cached, self._group_layers[group], own)
            if self._check:
                self._check_errors()
        if proxy.proxyless:
            return cached
        return self.envoyfilters.apply(proxy, group, cached, self._context(proxy=proxy))

    def _check_errors(self) -> None:
        """Check mode: every rejection a build ran into is one the World checks report (errors are found
        once, by the same functions; a rejection only the build path knows would be lost)."""
        if not self._precomputed:
            self.precompute()
        found = [*self.outbound.build_errors, *self.gateways.build_errors, *self.queries.plan_errors()]
        unreported = [e for e in found if e not in self._errors]
        if unreported:
            raise AssertionError(f"rejections found while building but not reported: {unreported}")

    def _router_snapshot(self, proxy: Proxy) -> Snapshot:
        """A gateway proxy's snapshot: its gateway layers only (no sidecar listeners or clusters)."""
        group = (ROUTER, self.gateways.key_for(proxy))
        cached = self._group_snapshots.get(group)
        if cached is not None:
            return self.envoyfilters.apply(proxy, group, cached, self._context(proxy=proxy))
        self.builds += 1
        stack = (*self.gateways.layers(proxy), *self._extras)
        previous = self._prev_groups.get(group)
        if (
            previous is not None
            and len(previous.layers) == len(stack)
            and all(a is b for a, b in zip(previous.layers, stack, strict=True))
        ):
            snap = previous
        else:
            snap = Snapshot(layers=stack)
        self._group_snapshots[group] = snap
        if self._check:
            self._check_errors()
        return self.envoyfilters.apply(proxy, group, snap, self._context(proxy=proxy))

    def _build(self, proxy: Proxy, key: ScopeKey, group: Group) -> Snapshot:
        scope = self._scope(key)
        if proxy.proxyless:
            layer = self.proxyless.layer(scope, self._context(scope))
            held = self._prev_groups.get(group)
            return held if held is not None and held.layers == (layer,) else Snapshot(layers=(layer,))
        layers = ProxyLayers(
            clusters=self.outbound.cluster_layer(scope).layer,
            routes=self.outbound.route_layer(key),
            own=self._own_layer(proxy, key),
            secrets=self.outbound.secret_layer(scope),
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


__all__ = ["EMPTY_LAYER", "ConfigGenerator", "GenerateOptions", "ProxyLayers"]
