"""What WorldState derives from the Istio kinds, and from the Gateway API objects converted into them:
ServiceEntry services and endpoints, VirtualServices, DestinationRules and Sidecars by host or namespace,
Gateways and their bindings, the policies by namespace. Derived again when one of those kinds (or the set of
Kubernetes service hosts) changes: each part only when one of the kinds it reads changed (`changed`; a
VirtualService edit does not sort 5000 DestinationRules again), otherwise the previous derivation's part, the
same object. A part derived again keeps the previous derivation's object where it holds the very same items,
because consumers compare them by identity to know, e.g., that a host's rules did not change. Pure."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TypeVar

from meshd.api.authorization import AuthorizationPolicy
from meshd.api.destinationrule import DestinationRule
from meshd.api.envoyfilter import EnvoyFilter
from meshd.api.gateway import Gateway
from meshd.api.gateway_api import ReferenceGrant
from meshd.api.meta import InvalidResource, Resource, ResourceKey
from meshd.api.networking import ServiceEntry, Sidecar, WorkloadEntry
from meshd.api.security import PeerAuthentication
from meshd.api.virtualservice import VirtualService
from meshd.api.wasmplugin import WasmPlugin
from meshd.model import derive
from meshd.model.gateway_api.backend_tls import with_backend_tls
from meshd.model.gateway_api.conversion import GATEWAY_API_KINDS, GatewayApiConversion
from meshd.model.gateway_api.convert import GatewayApiResult
from meshd.model.gateway_api.grants import secret_grants as secret_grants_of
from meshd.model.services import Endpoint, MeshService

_K = TypeVar("_K")
_R = TypeVar("_R", bound=Resource)
_V = TypeVar("_V")


def _empty() -> Mapping[_K, _V]:
    return MappingProxyType({})


@dataclass(frozen=True)
class IstioDerived:
    se_services: dict[str, MeshService] = field(default_factory=dict)
    se_endpoints: dict[tuple[str, int], tuple[Endpoint, ...]] = field(default_factory=dict)
    virtual_services: dict[str, tuple[VirtualService, ...]] = field(default_factory=dict)  # by resolved host
    vs_by_name: dict[tuple[str, str], VirtualService] = field(default_factory=dict)
    gateway_bindings: dict[tuple[str, str], tuple[VirtualService, ...]] = field(default_factory=dict)
    # (namespace, name) -> Gateway; a new mapping object only when one of them changes (so the mappings below)
    gateways: Mapping[tuple[str, str], Gateway] = field(default_factory=_empty)
    rules: dict[str, tuple[DestinationRule, ...]] = field(default_factory=dict)  # by host
    sidecars: dict[str, tuple[Sidecar, ...]] = field(default_factory=dict)  # by namespace
    errors: list[InvalidResource] = field(default_factory=list)
    peer_auth: Mapping[str, tuple[PeerAuthentication, ...]] = field(default_factory=_empty)
    authz: Mapping[str, tuple[AuthorizationPolicy, ...]] = field(default_factory=_empty)
    envoy_filters: Mapping[str, tuple[EnvoyFilter, ...]] = field(default_factory=_empty)
    wasm_plugins: Mapping[str, tuple[WasmPlugin, ...]] = field(default_factory=_empty)
    secret_grants: Mapping[tuple[str, str, str], bool] = field(default_factory=_empty)
    # the parts `errors` is made of, and the Gateway API conversion: kept for the next derivation to reuse
    se_errors: list[InvalidResource] = field(default_factory=list)
    rule_errors: list[InvalidResource] = field(default_factory=list)
    tls_warnings: list[InvalidResource] = field(default_factory=list)
    converted: GatewayApiResult | None = None


def derive_istio(
    istio: Mapping[str, Mapping[ResourceKey, Resource]],
    *,
    services: Mapping[tuple[str, str], MeshService],
    conversion: GatewayApiConversion,
    suffix: str,
    previous: IstioDerived,
    changed: AbstractSet[str] | None = None,
    hosts_changed: bool = True,
) -> IstioDerived:
    """`istio`: the resources of each Istio (and Gateway API) kind; `services`: the Kubernetes services by
    (namespace, name); `conversion`: the Gateway API conversion (it converts again only what changed).
    `changed`: the kinds changed since `previous` was derived (None: any may have); `hosts_changed`: whether
    the set of Kubernetes service hosts did."""

    def stale(*kinds: str) -> bool:
        return changed is None or not changed.isdisjoint(kinds)

    converted = conversion.run([r for kind in GATEWAY_API_KINDS for r in istio[kind].values()], services=services)
    before = previous.converted
    if before is not None and (converted is before or converted == before):
        converted = before  # the same conversion: what is derived from it is the previous derivation's
    fresh = converted is not before

    if stale("ServiceEntry", "WorkloadEntry") or hosts_changed:
        taken = {s.hostname: s for s in services.values()}
        entries = [e for e in istio["WorkloadEntry"].values() if isinstance(e, WorkloadEntry)]
        se_services, se_chunks, se_errors = derive.service_entries(
            [s for s in istio["ServiceEntry"].values() if isinstance(s, ServiceEntry)],
            entries,
            taken=taken,
            suffix=suffix,
        )
        se_endpoints = {key: derive.merge_chunks(chunks) for key, chunks in se_chunks.items()}
    else:
        se_services, se_endpoints, se_errors = previous.se_services, previous.se_endpoints, previous.se_errors

    if stale("VirtualService") or fresh:
        vss = [v for v in istio["VirtualService"].values() if isinstance(v, VirtualService)]
        vss += converted.virtual_services
        virtual_services = _keep_identity(
            previous.virtual_services, derive.virtual_services_by_host(vss, suffix=suffix)
        )
        vs_by_name = {(v.metadata.namespace, v.metadata.name): v for v in vss}
        gateway_bindings = _keep_identity(previous.gateway_bindings, derive.gateway_bindings(vss))
    else:
        virtual_services, vs_by_name = previous.virtual_services, previous.vs_by_name
        gateway_bindings = previous.gateway_bindings

    kept_gateways = previous.gateways
    if stale("Gateway") or fresh:
        gateways = derive.gateways_by_key(
            [g for g in istio["Gateway"].values() if isinstance(g, Gateway)] + converted.gateways
        )
        if list(gateways) != list(kept_gateways) or any(gateways[key] is not kept_gateways[key] for key in gateways):
            kept_gateways = MappingProxyType(gateways)

    if stale("DestinationRule") or fresh:
        merged, tls_warnings = with_backend_tls(
            [d for d in istio["DestinationRule"].values() if isinstance(d, DestinationRule)],
            converted.destination_rules,
            domain_suffix=suffix,
        )
        by_host, rule_errors = derive.destination_rules_by_host(merged, suffix=suffix)
        rules = _keep_identity(previous.rules, by_host)
    else:
        rules, rule_errors, tls_warnings = previous.rules, previous.rule_errors, previous.tls_warnings

    sidecars = previous.sidecars
    if stale("Sidecar"):
        by_ns = derive.sidecars_by_namespace([s for s in istio["Sidecar"].values() if isinstance(s, Sidecar)])
        sidecars = _keep_identity(previous.sidecars, by_ns)
    peer_auth = _by_namespace(
        stale("PeerAuthentication"), istio["PeerAuthentication"].values(), PeerAuthentication,
        previous.peer_auth, derive.peer_authentications_by_namespace,
    )  # fmt: skip
    authz = _by_namespace(
        stale("AuthorizationPolicy"), istio["AuthorizationPolicy"].values(), AuthorizationPolicy,
        previous.authz, derive.authorization_policies_by_namespace,
    )  # fmt: skip
    envoy_filters = _by_namespace(
        stale("EnvoyFilter"), istio["EnvoyFilter"].values(), EnvoyFilter,
        previous.envoy_filters, derive.envoy_filters_by_namespace,
    )  # fmt: skip
    wasm_plugins = _by_namespace(
        stale("WasmPlugin"), istio["WasmPlugin"].values(), WasmPlugin,
        previous.wasm_plugins, derive.by_namespace_and_name,
    )  # fmt: skip
    secret_grants = previous.secret_grants
    if stale("ReferenceGrant"):
        secret_grants = secret_grants_of(g for g in istio["ReferenceGrant"].values() if isinstance(g, ReferenceGrant))
    return IstioDerived(
        se_services=se_services,
        se_endpoints=se_endpoints,
        virtual_services=virtual_services,
        vs_by_name=vs_by_name,
        gateway_bindings=gateway_bindings,
        gateways=kept_gateways,
        rules=rules,
        sidecars=sidecars,
        errors=se_errors + rule_errors + converted.errors + tls_warnings,
        peer_auth=peer_auth,
        authz=authz,
        envoy_filters=envoy_filters,
        wasm_plugins=wasm_plugins,
        secret_grants=secret_grants,
        se_errors=se_errors,
        rule_errors=rule_errors,
        tls_warnings=tls_warnings,
        converted=converted,
    )


def _by_namespace(
    stale: bool,
    resources: Iterable[Resource],
    kind: type[_R],
    previous: Mapping[str, tuple[_R, ...]],
    derive_by_namespace: Callable[[Iterable[_R]], dict[str, tuple[_R, ...]]],
) -> Mapping[str, tuple[_R, ...]]:
    """A policy kind by namespace: derived again only when it changed (`stale`), and then the previous
    mapping object while it holds the very same objects."""
    if not stale:
        return previous
    return _same_or_new(previous, derive_by_namespace(r for r in resources if isinstance(r, kind)))


def _keep_identity(old: dict[_K, tuple[_V, ...]], new: dict[_K, tuple[_V, ...]]) -> dict[_K, tuple[_V, ...]]:
    """Per key, keep the old tuple object when it holds the very same items: consumers compare these
    by identity to know that, e.g., the rules of a host did not change."""
    for key, items in new.items():
        before = old.get(key)
        if before is not None and len(before) == len(items) and all(a is b for a, b in zip(before, items, strict=True)):
            new[key] = before
    return new


def _same_or_new(old: Mapping[str, tuple[_V, ...]], new: dict[str, tuple[_V, ...]]) -> Mapping[str, tuple[_V, ...]]:
    """The old mapping object when it holds the very same objects (consumers compare it by identity)."""
    if new.keys() == old.keys() and all(
        len(items) == len(old[ns]) and all(a is b for a, b in zip(items, old[ns], strict=True))
        for ns, items in new.items()
    ):
        return old
    return MappingProxyType(new)
