"""Values derived once per generation from the World that builds read: a scope's listener plan, the
services an address backs, a workload's inbound mTLS modes, JWT providers and inbound authorization, a scope's outbound
traffic mode, the certificate files a rule names that Envoy could not load, the hosts a VirtualService
routes to, the Gateways that select a gateway workload.

Builds read them through the context (`ctx.queries`), so in check mode each value is recorded like any
read of the World and a reused entry is checked against the value this generation gives.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from meshd.api.authorization import AuthorizationPolicy
from meshd.api.destinationrule import DestinationRule
from meshd.api.envoyfilter import EnvoyFilter
from meshd.api.gateway import Gateway
from meshd.api.meta import InvalidResource
from meshd.api.virtualservice import VirtualService
from meshd.api.wasmplugin import WasmPlugin
from meshd.generate.inbound_index import InboundIndex, build_index, update_index
from meshd.generate.options import GenerateOptions
from meshd.generate.tls_files import FileCheck
from meshd.model.world import World
from meshd.translate.authz.inbound import InboundAuthz, inbound_authz
from meshd.translate.authz.selection import Selected, applied, unattached_index
from meshd.translate.envoyfilter.clusters import named_clusters
from meshd.translate.envoyfilter.selection import selected as selected_envoy_filters
from meshd.translate.gateway.select import selected_gateways
from meshd.translate.jwt_authn import JwtProviders, inline_keys, workload_providers
from meshd.translate.listener_plan import ListenerPlan
from meshd.translate.listeners import InboundEntry
from meshd.translate.peer_auth import InboundMtls, workload_mtls
from meshd.translate.routes import destination_hosts
from meshd.translate.scope import (
    Scope,
    ScopeKey,
    Signature,
    same_plan_routes,
    same_scope_inputs,
    same_visibility_inputs,
)
from meshd.translate.sidecar_ingress import SidecarInbound, sidecar_inbound
from meshd.translate.telemetry.resolve import (
    WorkloadTelemetry,
    applicable,
    legacy_address,
    service_hostname,
    workload_telemetry,
)
from meshd.translate.wasm_plugin import selected as selected_wasm_plugins

# the labels Istio reads a workload's canonical service name from, in order
CANONICAL_NAME_LABELS = ("service.istio.io/canonical-name", "app.kubernetes.io/name", "app")


class Queries:
    def __init__(
        self,
        world: World,
        *,
        options: GenerateOptions,
        files: FileCheck,
        previous: Queries | None,
    ) -> None:
        self._world = world
        self._options = options
        self._files = files
        self._scopes: dict[ScopeKey, Scope] = {}
        self._plans: dict[ScopeKey, ListenerPlan] = {}
        self._inbound: InboundIndex | None = None
        self._moved: set[str] | None = None
        self._changed_hosts: tuple[frozenset[str] | None] | None = None
        self._jwt: dict[tuple[str, str], JwtProviders] = {}
        self._gateway_jwt: dict[tuple[str, tuple[tuple[str, str], ...]], JwtProviders] = {}
        self._mtls: dict[tuple[str, tuple[tuple[str, str], ...]], InboundMtls] = {}
        self._inline_keys: dict[str, str] = {}
        self._selected: dict[tuple[str, tuple[tuple[str, str], ...]], tuple[Gateway, ...]] = {}
        self._previous_world = previous._world if previous is not None else None
        self._prev_plans = previous._plans if previous is not None else {}
        # an unchanged scope input (e.g. only endpoints moved) keeps every scope and listener plan
        self._carried = (
            previous is not None and previous._options == options and same_scope_inputs(previous._world, world)
        )
        # scopes (visibility) are also kept over a VirtualService change; their plans are then built again
        rebase = self._carried or (
            previous is not None and previous._options == options and same_visibility_inputs(previous._world, world)
        )
        self._prev_scopes = previous._scopes if previous is not None and rebase else {}
        self._rebased = rebase
        # ... and so are the listener plans when no TCP or TLS route changed (all a plan reads of them)
        self._plans_carried = self._carried or (
            rebase and previous is not None and same_plan_routes(previous._world, world)
        )
        # one object per distinct cluster signature: layer lookups by signature then compare by identity
        # (scopes of different namespaces often see the same services)
        self._signatures: dict[Signature, Signature] = previous._signatures if previous is not None else {}
        self._prev_inbound = previous._inbound if previous is not None else None
        self._prev_files = previous._files.state if previous is not None else None
        self._sidecar_inbound: dict[ScopeKey, SidecarInbound] = {}
        self._unattached: dict[str, tuple[AuthorizationPolicy, ...]] | None = None
        self._authz: dict[object, InboundAuthz] = {}  # per distinct set of policies
        self._telemetry: dict[tuple[str, tuple[tuple[str, str], ...]], WorkloadTelemetry] = {}

    @property
    def carried(self) -> bool:
        """Whether every scope and listener plan of the previous generation still holds."""
        return self._carried

    @property
    def rebased(self) -> bool:
        """Whether every scope of the previous generation still holds (rebased: a VirtualService may have
        changed, nothing else a scope reads)."""
        return self._rebased

    def scope(self, key: ScopeKey) -> Scope:
        """What the proxies of a scope key see (computed once per World)."""
        scope = self._scopes.get(key)
        if scope is None and key in self._prev_scopes:
            scope = self._scopes[key] = self._prev_scopes[key].rebased(self._world)
        if scope is None:
            sidecar = None
            if key.sidecar is not None:
                sidecar = next(s for s in self._world.sidecars.get(key.sidecar.namespace, ()) if s.key == key.sidecar)
            options = self._options
            scope = self._scopes[key] = Scope(
                self._world,
                key=key,
                sidecar=sidecar,
                root_namespace=options.root_namespace,
                trust_domain=options.trust_domain,
                auto_mtls=options.auto_mtls,
                cluster_id=options.cluster_id,
            )
            if len(self._signatures) > 4 * len(self._scopes) + 64:  # signatures of scopes long gone
                self._signatures = {}
            scope.cluster_signature = self._signatures.setdefault(scope.cluster_signature, scope.cluster_signature)
        return scope

    def plan(self, key: ScopeKey) -> ListenerPlan:
        """The outbound listener plan of a scope (equal plans give equal listeners)."""
        plan = self._plans.get(key)
        if plan is None and self._plans_carried and key in self._prev_plans:
            plan = self._plans[key] = self._prev_plans[key]  # built from the same scope inputs and TCP/TLS routes
        if plan is None:
            scope = self.scope(key)
            plan = self._plans[key] = ListenerPlan(
                scope.services, scope=scope, detection_timeout=self._options.protocol_detection_timeout
            )
        return plan

    def plan_errors(self) -> list[InvalidResource]:
        """The TCP/TLS route rejections met while planning this generation's scopes (check mode compares
        them with what the World checks report)."""
        return [e for plan in self._plans.values() for e in plan.route_errors]

    def plan_unchanged(self, key: ScopeKey) -> bool:
        previous = self._prev_plans.get(key)
        return previous is not None and self.plan(key) == previous

    def served(self, ip: str) -> tuple[InboundEntry, ...]:
        """The (service, port, target port) an address backs: what its sidecar's inbound side serves."""
        return self._inbound_index().get(ip, ())

    def _inbound_index(self) -> Mapping[str, tuple[InboundEntry, ...]]:
        return self._index().entries

    def _index(self) -> InboundIndex:
        if self._inbound is None:
            before, previous = self._previous_world, self._prev_inbound
            self._inbound = (
                update_index(previous, before=before, world=self._world)
                if previous is not None and before is not None
                else build_index(self._world)
            )
        return self._inbound

    def inbound_mtls(self, namespace: str, ip: str) -> InboundMtls:
        """The PeerAuthentication modes of the workload at an address (by its labels)."""
        workload = self._world.workloads.get(ip)
        labels = workload.labels if workload is not None else ()
        found = self._mtls.get((namespace, labels))
        if found is None:  # once per distinct (namespace, labels) and generation
            found = self._mtls[(namespace, labels)] = workload_mtls(
                self._world.peer_authentications,
                namespace=namespace,
                labels=dict(labels),
                root_namespace=self._options.root_namespace,
            )
        return found

    def sidecar_inbound(self, key: ScopeKey) -> SidecarInbound:
        """The inbound side the scope's Sidecar declares (ingress listeners whose certificate files Envoy
        could not load left out), or Istio's automatic one."""
        found = self._sidecar_inbound.get(key)
        if found is None:
            sidecar = self.scope(key).sidecar
            found = sidecar_inbound(sidecar, missing=self._files.missing_ingress(sidecar))
            self._sidecar_inbound[key] = found
        return found

    def jwt_providers(self, namespace: str, ip: str) -> JwtProviders:
        """The JWT providers (RequestAuthentications, keys resolved) of the workload at an address."""
        found = self._jwt.get((namespace, ip))
        if found is None:
            workload = self._world.workloads.get(ip)
            found = self._jwt[(namespace, ip)] = workload_providers(
                self._world.request_authentications,
                self._world.jwks,
                namespace=namespace,
                labels=dict(workload.labels) if workload is not None else {},
                root_namespace=self._options.root_namespace,
                inline=self._inline,
            )
        return found

    def _inline(self, jwks: str) -> str:
        """Inline key sets normalised once per generation, whatever the number of workloads."""
        keys = self._inline_keys.get(jwks)
        if keys is None:
            keys = self._inline_keys[jwks] = inline_keys(jwks)
        return keys

    def selected_policies(self, namespace: str, ip: str) -> Selected:
        """The AuthorizationPolicies of the workload at an address (by its labels), and those failing
        closed on it (targets this release cannot attach)."""
        workload = self._world.workloads.get(ip)
        labels = dict(workload.labels) if workload is not None else {}
        policies = applied(self._world, namespace=namespace, labels=labels, root_namespace=self._options.root_namespace)
        if self._unattached is None:
            self._unattached = unattached_index(self._world, root_namespace=self._options.root_namespace)
        return Selected(policies, self._unattached.get(ip, ()))

    def envoy_filters(self, namespace: str, ip: str) -> tuple[EnvoyFilter, ...]:
        """The EnvoyFilters applying to the proxy of the workload at an address (by its labels), in order."""
        if not self._world.envoy_filters:
            return ()
        workload = self._world.workloads.get(ip)
        labels = dict(workload.labels) if workload is not None else {}
        return selected_envoy_filters(
            self._world, namespace=namespace, labels=labels, root_namespace=self._options.root_namespace
        )

    def envoy_filter_clusters(self, namespace: str, labels: tuple[tuple[str, str], ...]) -> frozenset[str]:
        """The mesh clusters named by the EnvoyFilters applying to a gateway workload of this namespace with
        these labels (`translate/envoyfilter/clusters.py`): the gateway is sent them with its destinations'."""
        if not self._world.envoy_filters:
            return frozenset()
        return named_clusters(
            selected_envoy_filters(
                self._world, namespace=namespace, labels=dict(labels), root_namespace=self._options.root_namespace
            )
        )

    def wasm_plugins(self, namespace: str, ip: str) -> tuple[WasmPlugin, ...]:
        """The WasmPlugins applying to the proxy of the workload at an address (by its labels)."""
        if not self._world.wasm_plugins:
            return ()
        workload = self._world.workloads.get(ip)
        labels = dict(workload.labels) if workload is not None else {}
        return selected_wasm_plugins(
            self._world, namespace=namespace, labels=labels, root_namespace=self._options.root_namespace
        )

    def gateway_policies(self, namespace: str, labels: tuple[tuple[str, str], ...]) -> Selected:
        """The AuthorizationPolicies of a gateway workload of this namespace with these labels: mesh-wide,
        namespace-wide, by selector, and by a Gateway/GatewayClass target (its gateway-name labels)."""
        root = self._options.root_namespace
        return Selected(applied(self._world, namespace=namespace, labels=dict(labels), root_namespace=root))

    def authorization(self, namespace: str, ip: str) -> InboundAuthz:
        """The inbound authorization filters of the workload at an address (one translation per distinct
        set of policies and generation)."""
        return self._translated(self.selected_policies(namespace, ip))

    def gateway_authorization(self, namespace: str, labels: tuple[tuple[str, str], ...]) -> InboundAuthz:
        """The authorization filters of a gateway workload's listeners (as a sidecar's inbound side)."""
        return self._translated(self.gateway_policies(namespace, labels))

    def _translated(self, selected: Selected) -> InboundAuthz:
        found = self._authz.get(selected.identity)
        if found is None:
            options = self._options
            found = self._authz[selected.identity] = inbound_authz(
                selected, mesh=options.mesh, trust_domain=options.trust_domain, services=self._world.services
            )
        return found

    def telemetry(self, namespace: str, labels: tuple[tuple[str, str], ...]) -> WorkloadTelemetry:
        """The access logging and tracing of a workload of this namespace with these labels (Telemetry
        resources and the mesh config)."""
        key = (namespace, labels)
        found = self._telemetry.get(key)
        if found is None:
            options, world = self._options, self._world
            by_label = dict(labels)
            name = next(
                (by_label[k] for k in CANONICAL_NAME_LABELS if by_label.get(k)),
                "unknown",
            )
            found = self._telemetry[key] = workload_telemetry(
                applicable(
                    world.telemetries, namespace=namespace, labels=by_label, root_namespace=options.root_namespace
                ),
                mesh=options.mesh.telemetry,
                services=world.services,
                domain_suffix=world.domain_suffix,
                root_namespace=options.root_namespace,
                service_name=f"{name}.{namespace}",
            )
        return found

    def workload_telemetry(self, namespace: str, ip: str) -> WorkloadTelemetry:
        workload = self._world.workloads.get(ip)
        return self.telemetry(namespace, tuple(sorted(workload.labels)) if workload is not None else ())

    def gateway_jwt(self, namespace: str, labels: tuple[tuple[str, str], ...]) -> JwtProviders:
        """The JWT providers (RequestAuthentications, keys resolved) of a gateway workload."""
        found = self._gateway_jwt.get((namespace, labels))
        if found is None:
            found = self._gateway_jwt[(namespace, labels)] = workload_providers(
                self._world.request_authentications,
                self._world.jwks,
                namespace=namespace,
                labels=dict(labels),
                root_namespace=self._options.root_namespace,
                inline=self._inline,
            )
        return found

    def outbound_mode(self, key: ScopeKey) -> str:
        """`outboundTrafficPolicy.mode` of the scope's Sidecar, else the mesh default."""
        sidecar = self.scope(key).sidecar
        mode = sidecar.spec.outbound_mode if sidecar is not None else None
        return mode or self._options.outbound_traffic_policy

    @property
    def files_state(self) -> tuple[tuple[str, str], ...]:
        """The certificate files read this generation and their content digests."""
        return self._files.state

    def missing(self, rule: DestinationRule | None) -> frozenset[str]:
        """The files of this rule Envoy could not load (empty when files are not checked)."""
        return self._files.missing(rule)

    def selected_gateways(self, namespace: str, labels: tuple[tuple[str, str], ...]) -> tuple[Gateway, ...]:
        """The Gateways that select a gateway workload of this namespace with these labels, oldest first."""
        key = (namespace, labels)
        found = self._selected.get(key)
        if found is None:
            found = self._selected[key] = selected_gateways(
                self._world.gateways.values(),
                namespace=namespace,
                labels=dict(labels),
                scope_to_namespace=self._options.scope_gateway_to_namespace,
            )
        return found

    def gateway_file_problem(self, path: str) -> str | None:
        """Why Envoy could not load a gateway server's certificate file (None: fine, or not checked)."""
        return self._files.problem(path)

    def destinations(self, vs: VirtualService) -> list[str]:
        return destination_hosts(self._world, vs)

    def changed_endpoint_hosts(self) -> frozenset[str] | None:
        """The hosts of the endpoint keys that changed since the previous World (a superset); None when not
        known (no previous World, or this one was not derived from it)."""
        if self._changed_hosts is None:
            changes = self._world.changes_since(self._previous_world)
            self._changed_hosts = (
                (frozenset(host for host, _ in changes.endpoints),) if changes is not None else (None,)
            )
        return self._changed_hosts[0]

    def moved_addresses(self) -> set[str] | None:
        """Addresses whose proxies may hold something outdated besides their scope's layers, or
        None when every proxy must be looked at (no previous World, or a Sidecar changed)."""
        before = self._previous_world
        if before is None or self._prev_inbound is None:
            return None
        if self._moved is None:
            world = self._world
            sidecars = world.sidecars
            if sidecars.keys() != before.sidecars.keys() or any(
                sidecars[ns] is not before.sidecars[ns] for ns in sidecars
            ):
                return None
            if world.peer_authentications is not before.peer_authentications:
                return None  # inbound modes may change anywhere
            if self._files.state != self._prev_files:
                return None  # a Sidecar's ingress certificate file may have appeared or gone
            if world.request_authentications is not before.request_authentications or world.jwks is not before.jwks:
                return None  # so may inbound JWT providers
            if world.authorization_policies is not before.authorization_policies:
                return None  # inbound authorization may change anywhere
            if self._provider_services_changed(before):
                return None  # a CUSTOM policy's provider service came, went or changed
            if world.telemetries is not before.telemetries or self._collector_services_changed(before):
                return None  # access logging and tracing may change anywhere
            now, then = world.workloads, before.workloads
            changes = world.changes_since(before)
            candidates: Iterable[str] = (
                () if now is then else changes.workloads if changes is not None else now.keys() | then.keys()
            )
            moved = {ip for ip in candidates if now.get(ip) is not then.get(ip)}
            index, old = self._index(), self._prev_inbound.entries
            inbound = index.entries
            touched = index.touched if index.touched is not None else inbound.keys() | old.keys()
            moved |= {ip for ip in touched if inbound.get(ip) != old.get(ip)}
            self._moved = moved
        return self._moved

    def _collector_services_changed(self, before: World) -> bool:
        """Whether the service of a telemetry provider (or the enableTracing collector) changed: whether
        it is a service of the mesh decides whether proxies log to it or trace to it."""
        mesh = self._options.mesh.telemetry
        world = self._world
        hosts = {service_hostname(p.service, domain_suffix=world.domain_suffix) for p in mesh.providers if p.service}
        legacy, _ = legacy_address(mesh, root_namespace=self._options.root_namespace)
        hosts.add(service_hostname(legacy, domain_suffix=world.domain_suffix))
        now, then = world.services, before.services
        return not all(now.get(h) == then.get(h) for h in hosts)

    def _provider_services_changed(self, before: World) -> bool:
        """Whether the service of an ext_authz provider changed while a CUSTOM policy exists (whether the
        provider can be used decides what its workloads get)."""
        hosts = {p.ext_authz.hostname for p in self._options.mesh.extension_providers if p.ext_authz is not None}
        now, then = self._world.services, before.services
        if not hosts or all(now.get(h) == then.get(h) for h in hosts):
            return False
        policies = self._world.authorization_policies.values()
        return any(p.action == "CUSTOM" for found in policies for p in found)
