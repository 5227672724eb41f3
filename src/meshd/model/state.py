"""WorldState: keeps the World's indexes and applies resource changes to them, so a change costs
what it touches, not the size of the mesh (one EndpointSlice change recomputes one service's
endpoints). Pods, Services and EndpointSlices, the kinds that change all the time, are updated
incrementally; the Istio kinds, fewer and rarer, are re-derived when one of them changes. The
result equals `build_world` over the same resources (a test checks this on random changes)."""

from __future__ import annotations

import dataclasses
import weakref
from collections import defaultdict
from collections.abc import Mapping
from types import MappingProxyType
from typing import TypeVar

from meshd.api.destinationrule import DestinationRule
from meshd.api.jwks import FETCHED_JWKS, FetchedJwks
from meshd.api.kube import CONFIGMAP_SECRET_PREFIX, ConfigMap, EndpointSlice, Pod, Secret, Service
from meshd.api.meta import Resource, ResourceKey
from meshd.api.networking import Sidecar, WorkloadEntry
from meshd.api.request_authentication import RequestAuthentication
from meshd.api.telemetry import Telemetry
from meshd.model import derive
from meshd.model.gateway_api.conversion import GATEWAY_API_KINDS, GatewayApiConversion
from meshd.model.istio_derived import IstioDerived, derive_istio
from meshd.model.layered import Layered
from meshd.model.services import Endpoint, MeshService, Workload
from meshd.model.world import World, WorldChanges, assemble

_ISTIO_KINDS = (
    "ServiceEntry",
    "WorkloadEntry",
    "VirtualService",
    "DestinationRule",
    "Sidecar",
    "PeerAuthentication",
    "AuthorizationPolicy",
    "Gateway",
    *GATEWAY_API_KINDS,
    "EnvoyFilter",
    "WasmPlugin",
)
ServiceId = tuple[str, str]  # (namespace, name)
_K = TypeVar("_K")


def _discard(index: dict[_K, set[ResourceKey]], at: _K, key: ResourceKey) -> None:
    """Remove key from index[at], dropping the entry once empty (addresses come and go under churn)."""
    keys = index.get(at)
    if keys is not None:
        keys.discard(key)
        if not keys:
            del index[at]


class WorldState:
    def __init__(self, *, domain_suffix: str) -> None:
        self._suffix = domain_suffix
        self._pods: dict[ServiceId, Pod] = {}
        self._pod_workloads: dict[str, Workload] = {}
        self._pods_at: dict[str, set[ServiceId]] = defaultdict(set)
        self._services: dict[ServiceId, MeshService] = {}
        self._external: dict[ServiceId, dict[tuple[str, int], tuple[Endpoint, ...]]] = {}  # ExternalName services
        self._slices: dict[ResourceKey, EndpointSlice] = {}
        self._slices_of: dict[ServiceId, set[ResourceKey]] = defaultdict(set)
        self._slices_by_pod: dict[ServiceId, set[ResourceKey]] = defaultdict(set)
        self._slices_by_address: dict[str, set[ResourceKey]] = defaultdict(set)
        self._k8s_endpoints: dict[tuple[str, int], tuple[Endpoint, ...]] = {}
        self._endpoint_keys: dict[str, list[tuple[str, int]]] = {}  # host -> its endpoint keys
        self._istio: dict[str, dict[ResourceKey, Resource]] = {kind: {} for kind in _ISTIO_KINDS}
        self._gateway_api = GatewayApiConversion(domain_suffix=domain_suffix)
        self._entry_workloads: dict[str, Workload] = {}
        # derived from the Istio kinds (and the set of Kubernetes service hosts): model/istio_derived.py
        self._derived = IstioDerived()
        # address -> workload (a pod's over a WorkloadEntry's): a new version per change, sharing the rest
        self._workloads: Layered[str, Workload] = Layered()
        self._secrets: dict[tuple[str, str], Secret] = {}
        # RequestAuthentications and fetched key sets: re-derived (a new mapping object) only when one changes
        self._request_authn: dict[ResourceKey, RequestAuthentication] = {}
        self._request_authn_by_ns: Mapping[str, tuple[RequestAuthentication, ...]] = MappingProxyType({})
        self._jwks: Mapping[str, str] = MappingProxyType({})
        self._telemetry: dict[ResourceKey, Telemetry] = {}
        self._telemetry_by_ns: Mapping[str, tuple[Telemetry, ...]] = MappingProxyType({})
        # the last World assembled, and what changed since: only endpoints, workloads, Secrets and the
        # JWT inputs (the kinds that change all the time) are updated in place of a full assembly; either
        # way the endpoint keys and workload addresses that changed are handed on (WorldChanges)
        self._last: World | None = None
        self._reassemble = True
        self._dirty_endpoints: set[tuple[str, int]] = set()
        self._dirty_workloads: set[str] = set()
        self._assembled_se_keys: frozenset[tuple[str, int]] = frozenset()  # ServiceEntry endpoints last assembled
        # what the last assembly was made of: an assembly takes the last World's own mapping (no sort, no copy)
        # of what is the same (a VirtualService edit at 5000 services sorts neither services nor endpoints)
        self._services_dirty = True
        self._assembled_from: IstioDerived | None = None

    # -- applying changes ---------------------------------------------------------------------

    def apply(self, changes: Mapping[ResourceKey, Resource | None]) -> None:
        dirty: set[ServiceId] = set()
        dirty_addresses: set[str] = set()
        hosts_changed = entries_changed = False
        istio_kinds: set[str] = set()  # the Istio (and Gateway API) kinds changed
        for key, resource in changes.items():
            if key.kind == "ConfigMap":  # its CA feeds SDS (and it is a BackendTLSPolicy input, below)
                ca = resource.ca_secret() if isinstance(resource, ConfigMap) else None
                at = (key.namespace, CONFIGMAP_SECRET_PREFIX + key.name)
                if ca is not None:
                    self._secrets[at] = ca
                else:
                    self._secrets.pop(at, None)
            if key.kind == "Pod":
                self._apply_pod(key, resource, dirty, dirty_addresses)
            elif key.kind == "Service":
                hosts_changed |= self._apply_service(key, resource)
                self._reassemble = self._services_dirty = True
                dirty.add((key.namespace, key.name))
            elif key.kind == "EndpointSlice":
                self._apply_slice(key, resource, dirty)
            elif key.kind == "Secret":
                # Secrets only feed SDS: an unchanged Secret stays the same object (consumers compare identity).
                if isinstance(resource, Secret):
                    self._secrets[(key.namespace, key.name)] = resource
                else:
                    self._secrets.pop((key.namespace, key.name), None)
            elif key.kind == "RequestAuthentication":
                self._apply_request_authentication(key, resource)
            elif key.kind == "Telemetry":
                if isinstance(resource, Telemetry):
                    self._telemetry[key] = resource
                else:
                    self._telemetry.pop(key, None)
                self._telemetry_by_ns = MappingProxyType(derive.oldest_first_by_namespace(self._telemetry.values()))
            elif key.kind == FETCHED_JWKS:
                self._apply_jwks(key, resource)
            elif key.kind in _ISTIO_KINDS:
                previous = self._istio[key.kind].pop(key, None)
                if resource is not None:
                    self._istio[key.kind][key] = resource
                istio_kinds.add(key.kind)
                self._reassemble = True
                if key.kind == "WorkloadEntry":
                    entries_changed = True
                    for entry in (previous, resource):
                        if isinstance(entry, WorkloadEntry) and entry.spec.address:
                            dirty_addresses.add(entry.spec.address)
        if entries_changed:
            entries = sorted(
                (e for e in self._istio["WorkloadEntry"].values() if isinstance(e, WorkloadEntry)), key=lambda e: e.key
            )
            self._entry_workloads = {e.spec.address: derive.entry_workload(e) for e in entries if e.spec.address}
        # the workloads: a new version over the addresses of the pods and entries that changed (a pod's workload
        # over a WorkloadEntry's); the others keep their objects (an entry's derived again is equal)
        if dirty_addresses:
            pods, by_entry = self._pod_workloads, self._entry_workloads
            held = {a: w for a in dirty_addresses if (w := pods[a] if a in pods else by_entry.get(a)) is not None}
            self._workloads = self._workloads.updated(held, dirty_addresses)
            self._dirty_workloads |= dirty_addresses
        for address in dirty_addresses:
            for slice_key in self._slices_by_address.get(address, ()):
                dirty.add(self._service_of(self._slices[slice_key]))
        for service_id in dirty:
            self._recompute_endpoints(service_id)
        if istio_kinds or hosts_changed:
            self._rederive_istio(istio_kinds, hosts_changed=hosts_changed)

    def _apply_request_authentication(self, key: ResourceKey, resource: Resource | None) -> None:
        if isinstance(resource, RequestAuthentication):
            self._request_authn[key] = resource
        else:
            self._request_authn.pop(key, None)
        self._request_authn_by_ns = MappingProxyType(derive.oldest_first_by_namespace(self._request_authn.values()))

    def _apply_jwks(self, key: ResourceKey, resource: Resource | None) -> None:
        keys = dict(self._jwks)
        if isinstance(resource, FetchedJwks):
            keys[key.name] = resource.keys
        else:
            keys.pop(key.name, None)
        self._jwks = MappingProxyType(keys)

    def _apply_pod(self, key: ResourceKey, pod: Resource | None, dirty: set[ServiceId], addresses: set[str]) -> None:
        pod_id = (key.namespace, key.name)
        old = self._pods.pop(pod_id, None)
        if old is not None and old.status.pod_ip:
            self._pods_at[old.status.pod_ip].discard(pod_id)
            self._elect_pod(old.status.pod_ip)
            addresses.add(old.status.pod_ip)
        if isinstance(pod, Pod):
            self._pods[pod_id] = pod
            if pod.status.pod_ip:
                self._pods_at[pod.status.pod_ip].add(pod_id)
                self._elect_pod(pod.status.pod_ip)
                addresses.add(pod.status.pod_ip)
        for slice_key in self._slices_by_pod.get(pod_id, ()):
            dirty.add(self._service_of(self._slices[slice_key]))

    def _elect_pod(self, address: str) -> None:
        """An address claimed by two pods goes to the last by namespace/name (as in build_world)."""
        claimants = self._pods_at.get(address)
        if claimants:
            self._pod_workloads[address] = derive.pod_workload(self._pods[max(claimants)])
        else:
            self._pod_workloads.pop(address, None)
            self._pods_at.pop(address, None)

    def _apply_service(self, key: ResourceKey, svc: Resource | None) -> bool:
        """Returns True when the set of service hosts changed (ServiceEntries may collide with it)."""
        existed = (key.namespace, key.name) in self._services
        service_id = (key.namespace, key.name)
        self._external.pop(service_id, None)
        if isinstance(svc, Service):
            mesh = self._services[service_id] = derive.mesh_service(svc, suffix=self._suffix)
            external = derive.external_name_endpoints(svc, mesh)
            if external:
                self._external[service_id] = external
        else:
            self._services.pop(service_id, None)
        return existed != ((key.namespace, key.name) in self._services)

    def _apply_slice(self, key: ResourceKey, eps: Resource | None, dirty: set[ServiceId]) -> None:
        old = self._slices.pop(key, None)
        if old is not None:
            dirty.add(self._service_of(old))
            _discard(self._slices_of, self._service_of(old), key)
            for ref, addresses in self._backing(old):
                if ref is not None:
                    _discard(self._slices_by_pod, ref, key)
                for address in addresses:
                    _discard(self._slices_by_address, address, key)
        if isinstance(eps, EndpointSlice):
            self._slices[key] = eps
            dirty.add(self._service_of(eps))
            self._slices_of[self._service_of(eps)].add(key)
            for ref, addresses in self._backing(eps):
                if ref is not None:
                    self._slices_by_pod[ref].add(key)
                for address in addresses:
                    self._slices_by_address[address].add(key)

    @staticmethod
    def _backing(eps: EndpointSlice) -> list[tuple[ServiceId | None, list[str]]]:
        out: list[tuple[ServiceId | None, list[str]]] = []
        for ep in eps.endpoints:
            ref = ep.target_ref
            pod_id = (
                (ref.namespace or eps.metadata.namespace, ref.name) if ref is not None and ref.kind == "Pod" else None
            )
            out.append((pod_id, list(ep.addresses)))
        return out

    @staticmethod
    def _service_of(eps: EndpointSlice) -> ServiceId:
        return (eps.metadata.namespace, eps.service_name or "")

    def _recompute_endpoints(self, service_id: ServiceId) -> None:
        host = derive.fqdn(service_id[1], service_id[0], self._suffix)
        for key in self._endpoint_keys.pop(host, []):
            self._k8s_endpoints.pop(key, None)
            self._dirty_endpoints.add(key)
        service = self._services.get(service_id)
        if service is None or not service_id[1]:
            return
        chunks: dict[tuple[str, int], list[tuple[Endpoint, ...]]] = defaultdict(list)
        for slice_key in sorted(self._slices_of.get(service_id, ())):
            eps = self._slices[slice_key]
            for port, endpoints in derive.slice_endpoints(eps, service, pods=self._pods, workloads=self._workloads):
                chunks[(host, port)].append(endpoints)
        for key, external in self._external.get(service_id, {}).items():
            chunks[key].append(external)
        for key, found in chunks.items():
            self._k8s_endpoints[key] = derive.merge_chunks(found)
            self._dirty_endpoints.add(key)
        self._endpoint_keys[host] = list(chunks)

    def _rederive_istio(self, changed: set[str], *, hosts_changed: bool) -> None:
        self._derived = derive_istio(
            self._istio,
            services=self._services,
            conversion=self._gateway_api,
            suffix=self._suffix,
            previous=self._derived,
            changed=changed,
            hosts_changed=hosts_changed,
        )

    # -- reading ----------------------------------------------------------------------------------

    def world(self, *, revision: int = 0) -> World:
        last = self._last
        changed_endpoints = frozenset(self._dirty_endpoints)
        if last is None or self._reassemble:
            # ServiceEntry endpoints are merged anew by an assembly: their keys, before and now, may all differ
            se_keys = frozenset(self._derived.se_endpoints)
            changes = (
                WorldChanges(
                    weakref.ref(last),
                    changed_endpoints | self._assembled_se_keys | se_keys,
                    frozenset(self._dirty_workloads),
                )
                if last is not None
                else None
            )
            world = self._last = dataclasses.replace(self._assemble(revision), changes=changes)
            self._reassemble = False
            self._dirty_endpoints.clear()
            self._dirty_workloads.clear()
            self._assembled_se_keys = se_keys
            return world
        changes = WorldChanges(weakref.ref(last), changed_endpoints, frozenset(self._dirty_workloads))
        self._dirty_workloads.clear()
        endpoints = last.endpoints
        if self._dirty_endpoints:
            # sorted by key: a new version over the last one's base (no copy), sorted again only when a key came
            changed: dict[tuple[str, int], tuple[Endpoint, ...]] = {}
            gone: list[tuple[str, int]] = []
            for key in self._dirty_endpoints:
                value = self._endpoints_at(key)
                if value is None:
                    gone.append(key)
                else:
                    changed[key] = value
            layered = endpoints if isinstance(endpoints, Layered) else Layered(endpoints)
            endpoints = layered.updated(changed, gone)
            if any(key not in layered for key in changed):
                endpoints = Layered(dict(sorted(endpoints.items())))
            self._dirty_endpoints.clear()
        world = self._last = dataclasses.replace(
            last,
            endpoints=endpoints,
            workloads=self._workloads,
            secrets=MappingProxyType(dict(self._secrets)),
            request_authentications=self._request_authn_by_ns,
            jwks=self._jwks,
            telemetries=self._telemetry_by_ns,
            revision=revision,
            changes=changes,
        )
        return world

    def _endpoints_at(self, key: tuple[str, int]) -> tuple[Endpoint, ...] | None:
        k8s, entries = self._k8s_endpoints.get(key), self._derived.se_endpoints.get(key)
        if k8s is not None and entries is not None:
            return derive.merge_chunks([k8s, entries])
        return k8s if k8s is not None else entries

    def _assemble(self, revision: int) -> World:
        d, last, then = self._derived, self._last, self._assembled_from
        services: Mapping[str, MeshService]
        endpoints: Mapping[tuple[str, int], tuple[Endpoint, ...]]
        if last is not None and then is not None and not self._services_dirty and d.se_services is then.se_services:
            services = last.services
        else:
            services = {s.hostname: s for s in self._services.values()}
            services.update(d.se_services)
        if last is not None and then is not None and not self._dirty_endpoints and d.se_endpoints is then.se_endpoints:
            endpoints = last.endpoints  # every endpoint change since the assembly is in it (world())
        else:
            endpoints = dict(self._k8s_endpoints)
            for key, eps in d.se_endpoints.items():
                endpoints[key] = derive.merge_chunks([endpoints[key], eps]) if key in endpoints else eps
        rules: Mapping[str, tuple[DestinationRule, ...]] = d.rules
        sidecars: Mapping[str, tuple[Sidecar, ...]] = d.sidecars
        if last is not None and then is not None:
            rules = last.rules_by_host if d.rules is then.rules else rules
            sidecars = last.sidecars if d.sidecars is then.sidecars else sidecars
        self._services_dirty, self._assembled_from = False, d
        return assemble(
            previous=last,
            domain_suffix=self._suffix,
            services=services,
            endpoints=endpoints,
            virtual_services=d.virtual_services,
            rules_by_host=rules,
            sidecars=sidecars,
            workloads=self._workloads,
            errors=d.errors,
            revision=revision,
            secrets=self._secrets,
            virtual_services_by_name=d.vs_by_name,
            peer_authentications=d.peer_auth,
            request_authentications=self._request_authn_by_ns,
            jwks=self._jwks,
            authorization_policies=d.authz,
            gateways=d.gateways,
            gateway_bindings=d.gateway_bindings,
            envoy_filters=d.envoy_filters,
            telemetries=self._telemetry_by_ns,
            wasm_plugins=d.wasm_plugins,
            gateway_secret_grants=d.secret_grants,
        )
