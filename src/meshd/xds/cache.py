"""Snapshot generation with sharing, across proxies and across pushes.

Translation declares resources as specs (name, key of every input, build function). For one World
a ConfigGenerator builds:
- per scope (proxies with the same Sidecar scope and namespace) one layer: outbound clusters,
  endpoints and routes;
- per namespace and set of credentialNames its clusters use, one layer of SDS secrets (read from
  that namespace only);
- per proxy group (scope + address) one layer: its listeners and inbound clusters.
Every resource is built and serialised once per distinct key; the memo carries resources over
from the previous generation, so a push rebuilds only what changed (one endpoint change: one
ClusterLoadAssignment). A layer whose resources are all unchanged is the previous layer object,
so the hub can tell which proxies have anything new without comparing bytes.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping, Sequence
from types import MappingProxyType

from meshd.api.meta import InvalidResource
from meshd.api.virtualservice import VirtualService
from meshd.model.services import MeshService, ServicePort
from meshd.model.world import World
from meshd.translate.capture import ALLOW_ANY, capture_cluster_specs, capture_listener_specs
from meshd.translate.client_mtls import destination_mode
from meshd.translate.clusters import (
    clusters_opening,
    inbound_cluster_specs,
    service_cluster_specs,
    service_secret_names,
)
from meshd.translate.endpoints import service_assignment_specs
from meshd.translate.listeners import InboundEntry, ListenerPlan, inbound_index, inbound_listener_specs
from meshd.translate.peer_auth import InboundMtls, workload_mtls
from meshd.translate.proxy import Proxy
from meshd.translate.routes import (
    RouteTable,
    delegate_inputs,
    destination_hosts,
)
from meshd.translate.scope import Scope, ScopeKey, Signature
from meshd.translate.secrets import secret_specs
from meshd.translate.spec import Ident
from meshd.translate.upstream_tls import CA_SUFFIX, SDS_PREFIX
from meshd.xds.checks import WorldChecks
from meshd.xds.memo import ResourceMemo, build_all, reuse_layer
from meshd.xds.resource import (
    CLUSTER,
    ENDPOINT,
    LISTENER,
    ROUTE,
    SECRET,
    Snapshot,
    XdsResource,
)
from meshd.xds.scope_keys import ScopeKeys
from meshd.xds.tls_files import FileCheck

# A layer as carried between generations: (its inputs, the layer, the memo entries it uses)
_Carried = tuple[Hashable, Snapshot, list[tuple[Hashable, XdsResource]]]
# One service's (clusters, endpoints, memo entries, SDS names its clusters use), as one scope sees it
_ServiceEntry = tuple[
    dict[str, XdsResource], dict[str, XdsResource], list[tuple[Hashable, XdsResource]], frozenset[str]
]
EMPTY_LAYER = Snapshot(resources=MappingProxyType({}))


class ConfigGenerator:
    """Builds per-proxy snapshots from one World, each shared part once."""

    def __init__(
        self,
        world: World,
        *,
        inbound_port: int,
        sidecar_endpoint_port: int | None,
        root_namespace: str = "istio-system",
        extra: Mapping[str, Sequence[XdsResource]] | None = None,
        previous: ConfigGenerator | None = None,
        read_file: Callable[[str], bytes | None] | None = None,
        trust_domain: str = "cluster.local",
        auto_mtls: bool = True,
        outbound_traffic_policy: str = ALLOW_ANY,
    ) -> None:
        """`read_file`: reads certificate files named by DestinationRules on this host to check them
        (standalone sidecars share meshd's filesystem); None leaves them unchecked."""
        self.world = world
        self.files: FileCheck = FileCheck(
            world, read=read_file, previous=previous.files if previous is not None else None
        )
        self._inbound_port = inbound_port
        self._sidecar_port = sidecar_endpoint_port
        self._root = root_namespace
        self._trust_domain = trust_domain
        self._auto_mtls = auto_mtls
        self._outbound_policy = outbound_traffic_policy  # the mesh default; a Sidecar's mode wins
        self.memo: ResourceMemo = ResourceMemo(previous.memo if previous is not None else None)
        self._prev_scopes = previous._scope_layers if previous is not None else {}
        self._prev_groups = previous._group_snapshots if previous is not None else {}
        self._scopes: dict[ScopeKey, Scope] = {}
        self._plans: dict[ScopeKey, ListenerPlan] = {}
        # (inputs, layer): routes per scope; clusters + endpoints per scope signature (shared)
        self._scope_layers: dict[ScopeKey, _Carried] = {}
        self._cluster_layers: dict[Signature, _Carried] = {}
        self._prev_clusters = previous._cluster_layers if previous is not None else {}
        # SDS names the clusters of a signature use; SDS layers per (namespace, names)
        self._cluster_secrets: dict[Signature, frozenset[str]] = {}
        self._prev_cluster_secrets = previous._cluster_secrets if previous is not None else {}
        self._secret_layers: dict[tuple[str, frozenset[str]], _Carried] = {}
        self._prev_secret_layers = previous._secret_layers if previous is not None else {}
        self._vhost_cache: dict[Hashable, bytes] = {}
        self._prev_vhosts = previous._vhost_cache if previous is not None else {}
        self._group_snapshots: dict[tuple[str, ScopeKey], Snapshot] = {}
        self._inbound: dict[str, tuple[InboundEntry, ...]] | None = None
        self._keys = ScopeKeys(world, root_namespace=root_namespace)
        self._destination_cache: dict[int, tuple[VirtualService, list[str]]] = {}
        self._service_entries: dict[Hashable, _ServiceEntry] = {}
        self.checks: WorldChecks = WorldChecks(
            world,
            root_namespace=root_namespace,
            files=self.files,
            previous=previous.checks if previous is not None else None,
        )
        self._previous_world = previous.world if previous is not None else None
        self._prev_plans = previous._plans if previous is not None else {}
        self._prev_inbound = previous._inbound if previous is not None else None
        self._moved: set[str] | None = None  # addresses whose workload or inbound side changed
        self._scope_verdicts: dict[ScopeKey, tuple[Snapshot, Snapshot, Snapshot] | tuple[()]] = {}
        self._prev_service_entries = previous._service_entries if previous is not None else {}
        # per proxy group: (the inputs of its own layer, the layer), carried to the next generation
        self._proxy_layers: dict[tuple[str, ScopeKey], _Carried] = {}
        self._prev_proxy_layers = previous._proxy_layers if previous is not None else {}
        previous_extra = previous._extra if previous is not None else None
        self._extra: Snapshot | None = (
            reuse_layer({t: {r.name: r for r in rs} for t, rs in extra.items()}, previous_extra) if extra else None
        )
        self._extras: tuple[Snapshot, ...] = (self._extra,) if self._extra is not None else ()
        self._errors: dict[InvalidResource, None] = dict.fromkeys(world.errors)
        self.builds = 0  # proxy-group snapshots computed (for tests and metrics)

    @property
    def errors(self) -> list[InvalidResource]:
        return list(self._errors)

    def precompute(self) -> None:
        """Report every rejected resource once per World, whatever proxies are connected."""
        self._errors.update(dict.fromkeys(self.checks.run(self._destinations)))

    def scope_key(self, proxy: Proxy) -> ScopeKey:
        return self._keys.for_proxy(proxy)

    def _scope(self, key: ScopeKey) -> Scope:
        scope = self._scopes.get(key)
        if scope is None:
            sidecar = None
            if key.sidecar is not None:
                sidecar = next(s for s in self.world.sidecars.get(key.sidecar.namespace, ()) if s.key == key.sidecar)
            scope = Scope(
                self.world,
                key=key,
                sidecar=sidecar,
                root_namespace=self._root,
                trust_domain=self._trust_domain,
                auto_mtls=self._auto_mtls,
            )
            self._scopes[key] = scope
        return scope

    def _clusterlayer(self, scope: Scope) -> Snapshot:
        signature = scope.cluster_signature
        cached = self._cluster_layers.get(signature)
        if cached is not None:
            return cached[1]
        # Its inputs: the signature (services, ports, rules) and each visible endpoint set, compared
        # by identity (the incremental World keeps an unchanged service's endpoints as the same object).
        endpoints = self.world.endpoints
        rules = self.world.rules_by_host
        inputs = (
            signature,
            # DestinationRules (subsets, policies) shape the clusters; WorldState keeps a host's
            # rules tuple the same object while they are unchanged.
            tuple(Ident(rules.get(s.hostname)) for s, _ in scope.services),
            tuple(Ident(endpoints.get((s.hostname, p.number))) for s, ports in scope.services for p in ports),
            self.files.state,  # certificate files that (no longer) exist
            # PeerAuthentications decide auto mTLS (the same mapping object while none changes)
            Ident(self.world.peer_authentications) if signature.value[-1] else None,
        )
        carried = self._prev_clusters.get(signature)
        if carried is not None and carried[0] == inputs:
            _, layer, used = carried
            self.memo.keep(used)
            self._cluster_secrets[signature] = self._prev_cluster_secrets.get(signature, frozenset())
        else:
            # Rebuilt service by service: a service whose own inputs did not change contributes
            # its previous resources without a single spec being made.
            used = []
            by_type: dict[str, dict[str, XdsResource]] = {CLUSTER: {}, ENDPOINT: {}}
            names: set[str] = set()
            for service, ports in scope.services:
                clusters, assignments, entries, secret_names = self._service_entry(scope, service, ports)
                by_type[CLUSTER].update(clusters)
                by_type[ENDPOINT].update(assignments)
                used += entries
                names |= secret_names
            layer = reuse_layer(by_type, carried[1] if carried is not None else None)
            self._cluster_secrets[signature] = frozenset(names)
        self._cluster_layers[signature] = (inputs, layer, used)
        return layer

    def _service_entry(self, scope: Scope, service: MeshService, ports: tuple[ServicePort, ...]) -> _ServiceEntry:
        """One service's clusters and endpoints as a scope sees them, keyed by exactly its inputs."""
        rule = scope.destination_rule(service.hostname)
        endpoints = self.world.endpoints
        missing = self.files.missing(rule)
        key = (
            service,
            ports,
            Ident(rule),
            tuple(Ident(endpoints.get((service.hostname, p.number))) for p in ports),
            missing,
            scope.key.locality,
            scope.key.failover_labels,
            destination_mode(scope, service) if scope.key.sds else None,
        )
        entry = self._service_entries.get(key) or self._prev_service_entries.get(key)
        if entry is None:
            used: list[tuple[Hashable, XdsResource]] = []
            clusters = self.memo.resolve(service_cluster_specs(scope, service, ports), used)
            if missing and rule is not None:
                for name in clusters_opening(rule, service, ports, missing):
                    del clusters[name]
            specs = service_assignment_specs(scope, service, ports, sidecar_port=self._sidecar_port)
            names = service_secret_names(scope, service, ports)
            entry = (clusters, self.memo.resolve(specs, used), used, names)
        else:
            self.memo.keep(entry[2])
        self._service_entries[key] = entry
        return entry

    def _secretlayer(self, scope: Scope) -> Snapshot:
        """The SDS secrets of a scope's clusters, from its namespace; shared by every scope of that
        namespace that uses the same credentialNames."""
        self._clusterlayer(scope)
        names = self._cluster_secrets[scope.cluster_signature]
        if not names:
            return EMPTY_LAYER
        group = (scope.namespace, names)
        cached = self._secret_layers.get(group)
        if cached is not None:
            return cached[1]
        secrets = self.world.secrets
        inputs = tuple(
            Ident(secrets.get((scope.namespace, n)))
            for name in sorted(names)
            for n in (_secret_base(name), _secret_base(name).removesuffix(CA_SUFFIX))
        )
        carried = self._prev_secret_layers.get(group)
        if carried is not None and carried[0] == inputs:
            _, layer, used = carried
            self.memo.keep(used)
        else:
            used = []
            resolved = self.memo.resolve(secret_specs(secrets, namespace=scope.namespace, names=names), used)
            layer = reuse_layer({SECRET: resolved}, carried[1] if carried is not None else None)
        self._secret_layers[group] = (inputs, layer, used)
        return layer

    def _scopelayer(self, key: ScopeKey) -> Snapshot:
        cached = self._scope_layers.get(key)
        if cached is not None:
            return cached[1]
        scope = self._scope(key)
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
        catch_all = self._outbound_mode(key) if key.capture else None
        inputs = (scope.cluster_signature, tuple(deps), catch_all)
        carried = self._prev_scopes.get(key)
        if carried is not None and carried[0] == inputs:
            _, layer, used = carried
            self.memo.keep(used)
        else:
            used = []
            table = RouteTable(scope, cache=self._vhost_cache, previous_cache=self._prev_vhosts, catch_all=catch_all)
            routes = self.memo.resolve(table.specs(), used)
            layer = reuse_layer({ROUTE: routes}, carried[1] if carried is not None else None)
        self._scope_layers[key] = (inputs, layer, used)
        return layer

    def _destinations(self, vs: VirtualService) -> list[str]:
        found = self._destination_cache.get(id(vs))
        if found is None or found[0] is not vs:
            found = (vs, destination_hosts(self.world, vs))
            self._destination_cache[id(vs)] = found
        return found[1]

    def _moved_addresses(self) -> set[str] | None:
        """Addresses whose proxies may hold something outdated besides their scope's layers, or
        None when every proxy must be looked at (no previous World, or a Sidecar changed)."""
        before = self._previous_world
        if before is None or self._prev_inbound is None:
            return None
        if self._moved is None:
            sidecars = self.world.sidecars
            if sidecars.keys() != before.sidecars.keys() or any(
                sidecars[ns] is not before.sidecars[ns] for ns in sidecars
            ):
                return None
            if self.world.peer_authentications is not before.peer_authentications:
                return None  # inbound modes may change anywhere
            now, then = self.world.workloads, before.workloads
            moved = {ip for ip in now.keys() | then.keys() if now.get(ip) is not then.get(ip)}
            inbound, old_inbound = self._inbound_index(), self._prev_inbound
            moved |= {ip for ip in inbound.keys() | old_inbound.keys() if inbound.get(ip) != old_inbound.get(ip)}
            self._moved = moved
        return self._moved

    def still_current(self, proxy: Proxy, key: ScopeKey, held: Snapshot) -> bool:
        """Whether `held` (built by the previous generation for this proxy under scope `key`) is
        exactly what this generation would build, decided without building it: same scope layers
        (the same objects), same listener plan, nothing moved at its address, no Sidecar change."""
        moved = self._moved_addresses()
        if moved is None or proxy.ip in moved:
            return False
        verdict = self._scope_verdicts.get(key)
        if verdict is None:
            verdict = self._scope_verdicts[key] = self._scope_verdict(key)
        layers = held.layers
        if (
            not verdict
            or layers[0] is not verdict[0]
            or layers[1] is not verdict[1]
            or layers[3] is not verdict[2]
            or layers[4:] != self._extras
        ):
            return False
        group = (proxy.ip, key)
        carried = self._prev_proxy_layers.get(group)
        if carried is None:
            return False
        self._proxy_layers[group] = carried
        self._group_snapshots[group] = held
        return True

    def _scope_verdict(self, key: ScopeKey) -> tuple[Snapshot, Snapshot, Snapshot] | tuple[()]:
        """A scope's (cluster layer, route layer, secret layer) if its listener plan is unchanged, else ()."""
        previous_plan = self._prev_plans.get(key)
        if previous_plan is None or self._plan(key).signature != previous_plan.signature:
            return ()
        scope = self._scope(key)
        return (self._clusterlayer(scope), self._scopelayer(key), self._secretlayer(scope))

    def _plan(self, key: ScopeKey) -> ListenerPlan:
        plan = self._plans.get(key)
        if plan is None:
            scope = self._scope(key)
            plan = self._plans[key] = ListenerPlan(scope.services, rule_for=scope.destination_rule)
        return plan

    def _inbound_index(self) -> dict[str, tuple[InboundEntry, ...]]:
        if self._inbound is None:
            self._inbound = inbound_index(self.world)
        return self._inbound

    def _outbound_mode(self, key: ScopeKey) -> str:
        """`outboundTrafficPolicy.mode` of the proxies' Sidecar, else the mesh default."""
        sidecar = self._scope(key).sidecar
        mode = sidecar.spec.outbound_mode if sidecar is not None else None
        return mode or self._outbound_policy

    def _inbound_mtls(self, proxy: Proxy) -> InboundMtls:
        """The PeerAuthentication modes of the proxy's workload (by its address's labels)."""
        workload = self.world.workloads.get(proxy.ip)
        return workload_mtls(
            self.world.peer_authentications,
            namespace=proxy.namespace,
            labels=dict(workload.labels) if workload is not None else {},
            root_namespace=self._root,
        )

    def snapshot(self, proxy: Proxy) -> Snapshot:
        key = self.scope_key(proxy)
        group = (proxy.ip, key)
        cached = self._group_snapshots.get(group)
        if cached is not None:
            return cached
        self.builds += 1
        scope_layer = self._scopelayer(key)
        cluster_layer = self._clusterlayer(self._scope(key))
        secret_layer = self._secretlayer(self._scope(key))
        plan = self._plan(key)
        served = self._inbound_index().get(proxy.ip, ())
        modes = self._inbound_mtls(proxy)
        outbound_mode = self._outbound_mode(key) if proxy.capture else None
        inputs = (plan.signature, served, self._inbound_port, modes, proxy.sds, outbound_mode)
        carried = self._prev_proxy_layers.get(group)
        if carried is not None and carried[0] == inputs:
            proxy_layer = carried[1]  # nothing it depends on changed: not even rebuilt
        elif outbound_mode is not None:
            listener_specs = capture_listener_specs(
                plan=plan,
                served=served,
                modes=modes,
                sds=proxy.sds,
                outbound_mode=outbound_mode,
                inbound_port=self._inbound_port,
            )
            own = {LISTENER: build_all(listener_specs), CLUSTER: build_all(capture_cluster_specs(served=served))}
            proxy_layer = reuse_layer(own, carried[1] if carried is not None else None)
        else:
            # Bound to this proxy's address: nothing to share, so built directly (no memo).
            own = {
                LISTENER: build_all(
                    [
                        *plan.specs(proxy),
                        *inbound_listener_specs(proxy, served, inbound_port=self._inbound_port, modes=modes),
                    ]
                ),
                CLUSTER: build_all(inbound_cluster_specs(address=proxy.ip, target_ports=[t for _, _, t in served])),
            }
            proxy_layer = reuse_layer(own, carried[1] if carried is not None else None)
        self._proxy_layers[group] = (inputs, proxy_layer, [])
        previous = self._prev_groups.get(group)
        layers = (cluster_layer, scope_layer, proxy_layer, secret_layer, *self._extras)
        unchanged = previous is not None and len(previous.layers) == len(layers)
        if previous is not None and unchanged and all(a is b for a, b in zip(previous.layers, layers, strict=True)):
            self._group_snapshots[group] = previous
            return previous
        snap = Snapshot(layers=layers)
        self._group_snapshots[group] = snap
        return snap


def _secret_base(resource: str) -> str:
    return resource.removeprefix(SDS_PREFIX)
