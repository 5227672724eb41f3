"""World: an immutable, indexed snapshot of the mesh.

Indexes: services by hostname, endpoints by (hostname, port), VirtualServices by host (and by the
Gateway they are bound to), DestinationRules by host, Sidecars by namespace, workloads by address,
Secrets by namespace/name, Gateways by namespace/name.
Building it never raises: semantic problems become InvalidResource entries in `errors`. `build_world` builds one from
scratch; `model.state.WorldState` keeps one up to date change by change (same result).
"""

from __future__ import annotations

import weakref
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from meshd.api.authorization import AuthorizationPolicy
from meshd.api.destinationrule import DestinationRule
from meshd.api.envoyfilter import EnvoyFilter
from meshd.api.gateway import Gateway
from meshd.api.gateway_api import ReferenceGrant
from meshd.api.jwks import FetchedJwks
from meshd.api.kube import ConfigMap, EndpointSlice, Pod, Secret, Service
from meshd.api.meta import InvalidResource, Resource
from meshd.api.networking import ServiceEntry, Sidecar, WorkloadEntry
from meshd.api.request_authentication import RequestAuthentication
from meshd.api.security import PeerAuthentication
from meshd.api.telemetry import Telemetry
from meshd.api.virtualservice import VirtualService
from meshd.api.wasmplugin import WasmPlugin
from meshd.model import derive
from meshd.model.derive import EXPORT_TO_ANNOTATION, EndpointChunks, default_rule, resolve_host
from meshd.model.gateway_api.backend_tls import ca_secrets, with_backend_tls
from meshd.model.gateway_api.conversion import GATEWAY_API_KINDS, GatewayApiConversion
from meshd.model.gateway_api.grants import secret_grants
from meshd.model.layered import Layered
from meshd.model.services import Endpoint, MeshService, Workload

__all__ = ["EXPORT_TO_ANNOTATION", "World", "WorldChanges", "build_world", "default_rule", "resolve_host"]


@dataclass(frozen=True)
class WorldChanges:
    """What a World changed from the one WorldState derived it from (`World.changes_since`): every endpoint
    key and workload address whose value is not the very same object is listed (a listed one may be
    unchanged). A reader that kept a result of the base World walks these keys instead of the whole mesh
    (the other fields it reads it compares itself: an unchanged one is the same object, or holds the same)."""

    base: weakref.ref[World]
    endpoints: frozenset[tuple[str, int]]
    workloads: frozenset[str]


@dataclass(frozen=True)
class World:
    domain_suffix: str
    services: Mapping[str, MeshService]
    endpoints: Mapping[tuple[str, int], tuple[Endpoint, ...]]
    virtual_services: Mapping[str, tuple[VirtualService, ...]]  # resolved host -> oldest first
    destination_rules: Mapping[str, DestinationRule]  # host -> the rule a proxy with no closer one uses
    # host -> one rule per namespace (and per workload selector), oldest first
    rules_by_host: Mapping[str, tuple[DestinationRule, ...]]
    sidecars: Mapping[str, tuple[Sidecar, ...]]  # namespace -> Sidecars, oldest first
    workloads: Mapping[str, Workload]  # address -> workload
    errors: tuple[InvalidResource, ...]
    revision: int = 0
    by_namespace: Mapping[str, tuple[MeshService, ...]] = field(default_factory=dict)  # sorted by hostname
    secrets: Mapping[tuple[str, str], Secret] = field(default_factory=dict)  # (namespace, name) -> Secret
    # every VirtualService by (namespace, name): how a `delegate` finds its target
    virtual_services_by_name: Mapping[tuple[str, str], VirtualService] = field(default_factory=dict)
    # the distinct sourceLabels selectors of all VirtualService matches (sorted): a proxy's scope
    # records which of them its labels satisfy
    source_selectors: tuple[tuple[tuple[str, str], ...], ...] = ()
    # the wildcard hosts of `virtual_services`, most specific first ("*" last)
    wildcard_hosts: tuple[str, ...] = ()
    # namespace -> PeerAuthentications, oldest first (the mapping is the same object while none changes)
    peer_authentications: Mapping[str, tuple[PeerAuthentication, ...]] = field(default_factory=dict)
    # the distinct (namespace, matchLabels) of DestinationRule workload selectors (sorted): a proxy's scope
    # records which of them select it
    rule_selectors: tuple[derive.RuleSelector, ...] = ()
    # namespace -> RequestAuthentications, oldest first; jwksUri -> the key set meshd fetched from it
    # (canonical JSON). Each mapping is the same object while nothing in it changes.
    request_authentications: Mapping[str, tuple[RequestAuthentication, ...]] = field(default_factory=dict)
    jwks: Mapping[str, str] = field(default_factory=dict)
    # namespace -> AuthorizationPolicies by name (the mapping is the same object while none changes)
    authorization_policies: Mapping[str, tuple[AuthorizationPolicy, ...]] = field(default_factory=dict)
    # every Gateway by (namespace, name), oldest first (the mapping is the same object while none changes)
    gateways: Mapping[tuple[str, str], Gateway] = field(default_factory=dict)
    # (namespace, name) a VirtualService's top-level `gateways` names -> those VirtualServices, oldest
    # first (whether or not the Gateway exists); each tuple is the same object while unchanged
    gateway_bindings: Mapping[tuple[str, str], tuple[VirtualService, ...]] = field(default_factory=dict)
    # namespace -> its EnvoyFilters in the order Istio applies them (priority, creation time, name)
    envoy_filters: Mapping[str, tuple[EnvoyFilter, ...]] = field(default_factory=dict)
    # namespace -> its WasmPlugins by name (the mapping is the same object while none changes)
    wasm_plugins: Mapping[str, tuple[WasmPlugin, ...]] = field(default_factory=dict)
    # (Gateway namespace, Secret namespace, Secret name or "") that ReferenceGrants allow: which other
    # namespace's Secrets gateway proxies may be served (translate/secrets.py)
    gateway_secret_grants: Mapping[tuple[str, str, str], bool] = field(default_factory=dict)
    # namespace -> Telemetry resources, oldest first (the mapping is the same object while none changes)
    telemetries: Mapping[str, tuple[Telemetry, ...]] = field(default_factory=dict)
    # set by WorldState on a World derived change by change from the last one (not part of its value)
    changes: WorldChanges | None = field(default=None, compare=False, repr=False)

    def changes_since(self, before: World | None) -> WorldChanges | None:
        """What changed since `before`, when this World was derived from it change by change; else None
        (then anything may have changed)."""
        changes = self.changes
        if changes is None or before is None or changes.base() is not before:
            return None
        return changes

    def virtual_services_for(self, host: str) -> tuple[VirtualService, ...] | None:
        """The VirtualServices routing a host: those naming it exactly, else those of the most
        specific wildcard host that covers it. The tuple is the World's own (its identity says
        whether it changed)."""
        found = self.virtual_services.get(host)
        if found is not None or not self.wildcard_hosts:
            return found
        for pattern in self.wildcard_hosts:
            if pattern == "*" or host.endswith(pattern[1:]):
                return self.virtual_services[pattern]
        return None

    def services_on_port(self, number: int) -> list[MeshService]:
        return [s for s in self.services.values() if s.port(number) is not None]


def assemble(
    *,
    domain_suffix: str,
    services: Mapping[str, MeshService],
    endpoints: Mapping[tuple[str, int], tuple[Endpoint, ...]],
    virtual_services: Mapping[str, tuple[VirtualService, ...]],
    rules_by_host: Mapping[str, tuple[DestinationRule, ...]],
    sidecars: Mapping[str, tuple[Sidecar, ...]],
    workloads: Mapping[str, Workload],
    errors: Iterable[InvalidResource],
    revision: int,
    secrets: Mapping[tuple[str, str], Secret] | None = None,
    virtual_services_by_name: Mapping[tuple[str, str], VirtualService],
    peer_authentications: Mapping[str, tuple[PeerAuthentication, ...]] | None = None,
    request_authentications: Mapping[str, tuple[RequestAuthentication, ...]] | None = None,
    jwks: Mapping[str, str] | None = None,
    authorization_policies: Mapping[str, tuple[AuthorizationPolicy, ...]] | None = None,
    gateways: Mapping[tuple[str, str], Gateway] | None = None,
    gateway_bindings: Mapping[tuple[str, str], tuple[VirtualService, ...]] | None = None,
    envoy_filters: Mapping[str, tuple[EnvoyFilter, ...]] | None = None,
    telemetries: Mapping[str, tuple[Telemetry, ...]] | None = None,
    wasm_plugins: Mapping[str, tuple[WasmPlugin, ...]] | None = None,
    gateway_secret_grants: Mapping[tuple[str, str, str], bool] | None = None,
    previous: World | None = None,
) -> World:
    """`previous`: the World assembled before (WorldState's); what is derived from the DestinationRules alone
    is taken from it while every host's rules and service are the objects they were (a VirtualService edit
    then derives nothing per host)."""

    # A mapping that is the previous World's own object is taken as it is (WorldState passes one when
    # nothing it was made of changed): not sorted or copied again.
    def kept(mapping: object, field: str) -> bool:
        return previous is not None and mapping is getattr(previous, field)

    ordered = services if kept(services, "services") else dict(sorted(services.items()))
    if previous is not None and _same_rules(previous, rules_by_host, services):
        default_rules, selectors = previous.destination_rules, previous.rule_selectors
    else:
        default_rules = MappingProxyType(
            {
                host: rule
                for host, rules in rules_by_host.items()
                if (rule := default_rule(host, rules, services)) is not None
            }
        )
        selectors = derive.rule_selectors(rules_by_host)
    if previous is not None and kept(services, "services"):
        grouped = previous.by_namespace
    else:
        by_namespace: dict[str, list[MeshService]] = defaultdict(list)
        for service in ordered.values():
            by_namespace[service.namespace].append(service)
        grouped = MappingProxyType({ns: tuple(v) for ns, v in by_namespace.items()})
    return World(
        domain_suffix=domain_suffix,
        by_namespace=grouped,
        services=ordered if kept(services, "services") else MappingProxyType(ordered),
        endpoints=endpoints if kept(endpoints, "endpoints") else Layered(dict(sorted(endpoints.items()))),
        virtual_services=MappingProxyType(dict(virtual_services)),
        destination_rules=default_rules,
        rules_by_host=rules_by_host if kept(rules_by_host, "rules_by_host") else MappingProxyType(dict(rules_by_host)),
        sidecars=sidecars if kept(sidecars, "sidecars") else MappingProxyType(dict(sidecars)),
        workloads=workloads if isinstance(workloads, MappingProxyType | Layered) else MappingProxyType(dict(workloads)),
        errors=tuple(errors),
        revision=revision,
        secrets=MappingProxyType(dict(secrets or {})),
        virtual_services_by_name=MappingProxyType(dict(virtual_services_by_name)),
        source_selectors=derive.source_selectors(virtual_services_by_name.values()),
        wildcard_hosts=tuple(sorted((h for h in virtual_services if h.startswith("*")), key=lambda h: (-len(h), h))),
        peer_authentications=peer_authentications if peer_authentications is not None else MappingProxyType({}),
        rule_selectors=selectors,
        request_authentications=request_authentications
        if request_authentications is not None
        else MappingProxyType({}),
        jwks=jwks if jwks is not None else MappingProxyType({}),
        authorization_policies=authorization_policies if authorization_policies is not None else MappingProxyType({}),
        gateways=gateways if gateways is not None else MappingProxyType({}),
        gateway_bindings=MappingProxyType(dict(gateway_bindings or {})),
        envoy_filters=envoy_filters if envoy_filters is not None else MappingProxyType({}),
        telemetries=telemetries if telemetries is not None else MappingProxyType({}),
        wasm_plugins=wasm_plugins if wasm_plugins is not None else MappingProxyType({}),
        gateway_secret_grants=gateway_secret_grants if gateway_secret_grants is not None else MappingProxyType({}),
    )


def _same_rules(
    previous: World, rules_by_host: Mapping[str, tuple[DestinationRule, ...]], services: Mapping[str, MeshService]
) -> bool:
    """Whether each host's rules, and the service of each host with rules, are the previous World's objects."""
    before, then = previous.rules_by_host, previous.services
    if rules_by_host is before and services is then:
        return True
    return before.keys() == rules_by_host.keys() and all(
        before[host] is rules and then.get(host) is services.get(host) for host, rules in rules_by_host.items()
    )


def build_world(resources: Iterable[Resource], *, domain_suffix: str, revision: int = 0) -> World:
    """Index every resource. Pure: the same resources always give an equal World."""
    by_kind: dict[str, list[Resource]] = defaultdict(list)
    for resource in resources:
        by_kind[resource.key.kind].append(resource)
    pods = {(p.metadata.namespace, p.metadata.name): p for p in by_kind["Pod"] if isinstance(p, Pod)}
    entries = sorted((e for e in by_kind["WorkloadEntry"] if isinstance(e, WorkloadEntry)), key=lambda e: e.key)
    # An address claimed twice goes to the last by namespace/name; a pod wins over a WorkloadEntry.
    workloads = {e.spec.address: derive.entry_workload(e) for e in entries if e.spec.address}
    workloads.update(
        {pods[k].status.pod_ip or "": derive.pod_workload(pods[k]) for k in sorted(pods) if pods[k].status.pod_ip}
    )

    services: dict[str, MeshService] = {}
    chunks: EndpointChunks = defaultdict(list)
    for svc in by_kind["Service"]:
        if isinstance(svc, Service):
            mesh = derive.mesh_service(svc, suffix=domain_suffix)
            services[mesh.hostname] = mesh
            for key, found in derive.external_name_endpoints(svc, mesh).items():
                chunks[key].append(found)
    for eps in by_kind["EndpointSlice"]:
        assert isinstance(eps, EndpointSlice)
        service = services.get(derive.fqdn(eps.service_name or "", eps.metadata.namespace, domain_suffix))
        if eps.service_name and service is not None:
            for port, endpoints in derive.slice_endpoints(eps, service, pods=pods, workloads=workloads):
                chunks[(service.hostname, port)].append(endpoints)

    k8s_services = {(s.namespace, s.name): s for s in services.values()}
    se_services, se_chunks, errors = derive.service_entries(
        [s for s in by_kind["ServiceEntry"] if isinstance(s, ServiceEntry)],
        entries,
        taken=services,
        suffix=domain_suffix,
    )
    services.update(se_services)
    for key, more in se_chunks.items():
        chunks[key].extend(more)
    converted = GatewayApiConversion(domain_suffix=domain_suffix).run(
        [r for kind in GATEWAY_API_KINDS for r in by_kind[kind]], services=k8s_services
    )
    rules, tls_warnings = with_backend_tls(
        [d for d in by_kind["DestinationRule"] if isinstance(d, DestinationRule)],
        converted.destination_rules,
        domain_suffix=domain_suffix,
    )
    rules_by_host, rule_errors = derive.destination_rules_by_host(rules, suffix=domain_suffix)
    secrets = {(s.metadata.namespace, s.metadata.name): s for s in by_kind["Secret"] if isinstance(s, Secret)}
    secrets.update(ca_secrets(c for c in by_kind["ConfigMap"] if isinstance(c, ConfigMap)))
    vss = [v for v in by_kind["VirtualService"] if isinstance(v, VirtualService)] + converted.virtual_services
    return assemble(
        domain_suffix=domain_suffix,
        services=services,
        endpoints={key: derive.merge_chunks(c) for key, c in chunks.items()},
        virtual_services=derive.virtual_services_by_host(vss, suffix=domain_suffix),
        virtual_services_by_name={(v.metadata.namespace, v.metadata.name): v for v in vss},
        rules_by_host=rules_by_host,
        sidecars=derive.sidecars_by_namespace([s for s in by_kind["Sidecar"] if isinstance(s, Sidecar)]),
        workloads=workloads,
        errors=errors + rule_errors + converted.errors + tls_warnings,
        revision=revision,
        secrets=secrets,
        peer_authentications=MappingProxyType(
            derive.peer_authentications_by_namespace(
                p for p in by_kind["PeerAuthentication"] if isinstance(p, PeerAuthentication)
            )
        ),
        request_authentications=MappingProxyType(
            derive.oldest_first_by_namespace(
                r for r in by_kind["RequestAuthentication"] if isinstance(r, RequestAuthentication)
            )
        ),
        jwks=MappingProxyType({j.uri: j.keys for j in by_kind["FetchedJwks"] if isinstance(j, FetchedJwks)}),
        authorization_policies=MappingProxyType(
            derive.authorization_policies_by_namespace(
                p for p in by_kind["AuthorizationPolicy"] if isinstance(p, AuthorizationPolicy)
            )
        ),
        gateways=MappingProxyType(
            derive.gateways_by_key([g for g in by_kind["Gateway"] if isinstance(g, Gateway)] + converted.gateways)
        ),
        gateway_bindings=derive.gateway_bindings(vss),
        envoy_filters=MappingProxyType(
            derive.envoy_filters_by_namespace(e for e in by_kind["EnvoyFilter"] if isinstance(e, EnvoyFilter))
        ),
        telemetries=MappingProxyType(
            derive.oldest_first_by_namespace(t for t in by_kind["Telemetry"] if isinstance(t, Telemetry))
        ),
        wasm_plugins=MappingProxyType(
            derive.by_namespace_and_name(w for w in by_kind["WasmPlugin"] if isinstance(w, WasmPlugin))
        ),
        gateway_secret_grants=secret_grants(g for g in by_kind["ReferenceGrant"] if isinstance(g, ReferenceGrant)),
    )
