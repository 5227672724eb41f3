"""Sidecar scoping: what a group of proxies may reach.

A proxy's scope comes from the Sidecar that applies to it (workload selector in its namespace,
else its namespace's default, else the mesh default in the root namespace, else none: all hosts)
and from exportTo on services, VirtualServices and DestinationRules. Proxies with the same scope
key get identical clusters, endpoints and routes.
"""

from __future__ import annotations

import copy
import fnmatch
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from meshd.api.destinationrule import DestinationRule
from meshd.api.meta import InvalidResource, ResourceKey
from meshd.api.networking import IstioEgressListener, Sidecar, export_tier, exported_to
from meshd.api.virtualservice import VirtualService
from meshd.model.derive import rule_selector
from meshd.model.services import MeshService, ServicePort
from meshd.model.world import World
from meshd.translate.peer_auth import service_mode
from meshd.translate.spec import ident


class Signature:
    """A hashable tuple whose hash is computed once (large signatures are looked up often)."""

    __slots__ = ("_hash", "value")

    def __init__(self, value: tuple[object, ...]) -> None:
        self.value = value
        self._hash = hash(value)

    def __hash__(self) -> int:
        return self._hash

    def __eq__(self, other: object) -> bool:
        if other is self:
            return True
        return isinstance(other, Signature) and other._hash == self._hash and other.value == self.value


@dataclass(frozen=True, order=True)
class ScopeKey:
    namespace: str
    sidecar: ResourceKey | None
    # The proxy's locality (region/zone/subzone), set only when it has one: locality failover and
    # distribute make its endpoints differ.
    locality: str = ""
    # The proxy's values of labels some DestinationRule's failoverPriority names (usually none).
    failover_labels: tuple[tuple[str, str], ...] = ()
    # per World.source_selectors: whether the proxies' labels satisfy it (empty when no
    # VirtualService uses sourceLabels, so scopes do not fragment when the feature is unused)
    source: tuple[bool, ...] = ()
    # The proxies have the node agent's SDS: they get Istio mTLS (ISTIO_MUTUAL, auto mTLS).
    sds: bool = False
    # The proxies' traffic is captured (INTERCEPTION_MODE REDIRECT): capture-mode listeners.
    capture: bool = False
    # per World.rule_selectors: whether it selects the proxies (empty when no DestinationRule has a
    # workload selector)
    rule_selection: tuple[bool, ...] = ()

    def __post_init__(self) -> None:
        # hashed once: a scope key is looked up for every proxy on every push
        fields = (self.namespace, self.sidecar, self.locality, self.failover_labels, self.source, self.sds)
        object.__setattr__(self, "_hash", hash((*fields, self.capture, self.rule_selection)))

    def __hash__(self) -> int:
        return self._hash  # type: ignore[attr-defined,no-any-return]


def select_sidecar(
    world: World, *, namespace: str, labels: dict[str, str], root_namespace: str
) -> tuple[Sidecar | None, list[InvalidResource]]:
    """The Sidecar for a workload, as Istio picks it; extra default Sidecars are reported."""
    errors: list[InvalidResource] = []
    local = world.sidecars.get(namespace, ())
    for sc in local:
        selector = sc.spec.workload_selector
        if selector is not None and selector.labels and all(labels.get(k) == v for k, v in selector.labels.items()):
            return sc, errors
    for candidates in (local, world.sidecars.get(root_namespace, ()) if namespace != root_namespace else ()):
        defaults = [sc for sc in candidates if sc.spec.workload_selector is None]
        for extra in defaults[1:]:
            errors.append(
                InvalidResource(
                    extra.key, "spec.workloadSelector", f"{defaults[0].key} is already the namespace default; ignored"
                )
            )
        if defaults:
            return defaults[0], errors
    return None, errors


def _host_matches(pattern: str, service: MeshService, *, pattern_namespace: str, suffix: str) -> bool:
    if pattern == "*":
        return True
    if "." not in pattern and not pattern.startswith("*"):
        pattern = f"{pattern}.{pattern_namespace}.svc.{suffix}"
    if pattern.startswith("*."):
        return service.hostname.endswith(pattern[1:])
    return fnmatch.fnmatchcase(service.hostname, pattern)


def _listener_allows(listener: IstioEgressListener, service: MeshService, *, proxy_namespace: str, suffix: str) -> bool:
    for host in listener.hosts:
        ns, _, name = host.partition("/")
        if ns == "~":
            continue
        if ns == ".":
            ns = proxy_namespace
        if ns != "*" and ns != service.namespace:
            continue
        if _host_matches(name, service, pattern_namespace=ns if ns != "*" else service.namespace, suffix=suffix):
            return True
    return False


class Scope:
    """Visibility for one scope key, computed once per World."""

    def __init__(
        self,
        world: World,
        *,
        key: ScopeKey,
        sidecar: Sidecar | None,
        root_namespace: str,
        trust_domain: str = "cluster.local",
        auto_mtls: bool = True,
        cluster_id: str = "Kubernetes",
    ) -> None:
        self.world = world
        self.key = key
        self.namespace = key.namespace
        self._root = root_namespace
        self.root_namespace = root_namespace
        self.trust_domain = trust_domain
        self.auto_mtls = auto_mtls
        self.cluster_id = cluster_id  # the workloads' cluster (their sidecars' CLUSTER_ID)
        self._sidecar = sidecar
        self.services: list[tuple[MeshService, tuple[ServicePort, ...]]] = []
        for service in self._candidates():
            if not exported_to(list(service.export_to), owner_namespace=service.namespace, namespace=self.namespace):
                continue
            if service.resolution == "NONE" and not key.capture:
                continue  # forwarded to the original destination, which only captured traffic has
            ports = tuple(p for p in service.ports if self._egress_allows(service, p.number))
            if ports:
                self.services.append((service, ports))
        self.visible_hosts = frozenset(s.hostname for s, _ in self.services)
        self.headless = any(s.headless for s, _ in self.services)
        self._rule_cache: dict[str, DestinationRule | None] = {}
        # Scopes with equal signatures get identical clusters and endpoints (shared layer).
        chosen = []
        for service, _ in self.services:
            rules = world.rules_by_host.get(service.hostname, ())
            if len(rules) > 1 or any(
                (r.spec.export_to and "*" not in r.spec.export_to) or r.spec.workload_selector is not None
                for r in rules
            ):
                chosen.append((service.hostname, ident(self.destination_rule(service.hostname))))
        self.cluster_signature = Signature(
            (tuple((s, p) for s, p in self.services), tuple(chosen), key.locality, key.failover_labels, key.sds)
        )

    def rebased(self, world: World) -> Scope:
        """This scope over a newer World whose visibility inputs are unchanged (`same_visibility_inputs`): the
        visibility computed here still holds; lookups that read more of the World read the new one."""
        scope = copy.copy(self)
        scope.world = world
        scope._rule_cache = dict(self._rule_cache)
        return scope

    @property
    def sidecar(self) -> Sidecar | None:
        """The Sidecar resource that applies to the scope's proxies, if any."""
        return self._sidecar

    def _candidates(self) -> Iterable[MeshService]:
        """The services the Sidecar's egress hosts could match: only the namespaces it names, unless
        it names '*' (a scope limited to its own namespace never looks at the rest of the mesh)."""
        if self._sidecar is None or not self._sidecar.spec.egress:
            return self.world.services.values()
        namespaces: set[str] = set()
        for listener in self._sidecar.spec.egress:
            for host in listener.hosts:
                ns = host.partition("/")[0]
                if ns == "*":
                    return self.world.services.values()
                if ns != "~":
                    namespaces.add(self.namespace if ns == "." else ns)
        found = [s for ns in namespaces for s in self.world.by_namespace.get(ns, ())]
        return sorted(found, key=lambda s: s.hostname)

    def _egress_allows(self, service: MeshService, port: int) -> bool:
        if self._sidecar is None or not self._sidecar.spec.egress:
            return True
        egress = self._sidecar.spec.egress
        listeners = [e for e in egress if e.port is not None and e.port.number == port]
        if not listeners:
            listeners = [e for e in egress if e.port is None]
        suffix = self.world.domain_suffix
        return any(_listener_allows(e, service, proxy_namespace=self.namespace, suffix=suffix) for e in listeners)

    def source_matches(self, labels: dict[str, str]) -> bool:
        """Whether this scope's proxies carry the labels of a VirtualService match's sourceLabels."""
        selector = tuple(sorted(labels.items()))
        for i, known in enumerate(self.world.source_selectors):
            if known == selector:
                return i < len(self.key.source) and self.key.source[i]
        return False

    def destination_mode(self, service: MeshService) -> str:
        """The PeerAuthentication mode auto mTLS assumes for a destination service (builds read this
        derived mode, not the policies, so a cache key holding the mode covers it)."""
        return service_mode(self.world.peer_authentications, namespace=service.namespace, root_namespace=self._root)

    def virtual_services(self, host: str) -> tuple[VirtualService, ...]:
        """The mesh VirtualServices of a host this scope sees, in Istio's order: those exported to its namespace
        alone, then those exported to it by name, then public ones; each group oldest first (the first valid one
        routes the host)."""
        seen = [
            vs
            for vs in self.world.virtual_services_for(host) or ()
            if exported_to(vs.spec.export_to, owner_namespace=vs.metadata.namespace, namespace=self.namespace)
        ]
        return tuple(
            sorted(
                seen,
                key=lambda vs: export_tier(
                    vs.spec.export_to, owner_namespace=vs.metadata.namespace, namespace=self.namespace
                ),
            )
        )

    def destination_rule(self, host: str) -> DestinationRule | None:
        """Istio's lookup order: the proxy's namespace, the service's namespace, the root namespace,
        then any other namespace that exports its rule here (oldest first)."""
        if host not in self._rule_cache:
            self._rule_cache[host] = self._lookup_rule(host)
        return self._rule_cache[host]

    def selects(self, rule: DestinationRule) -> bool:
        """Whether a DestinationRule's workload selector picks this scope's proxies: only in its own namespace,
        by their labels (recorded in the scope key)."""
        selector = rule_selector(rule)
        if selector is None or selector[0] != self.namespace:
            return False
        index = self.world.rule_selectors.index(selector)
        return index < len(self.key.rule_selection) and self.key.rule_selection[index]

    def _lookup_rule(self, host: str) -> DestinationRule | None:
        """A rule whose workload selector picks the proxies wins (the oldest); then Istio's namespace order."""
        rules = self.world.rules_by_host.get(host, ())
        selected = next((r for r in rules if r.spec.workload_selector is not None and self.selects(r)), None)
        if selected is not None:
            return selected
        candidates = [
            r
            for r in rules
            if r.spec.workload_selector is None
            and exported_to(r.spec.export_to, owner_namespace=r.metadata.namespace, namespace=self.namespace)
        ]
        if not candidates:
            return None
        service = self.world.services.get(host)
        order = [self.namespace, service.namespace if service else None, self._root]
        for ns in order:
            for rule in candidates:
                if rule.metadata.namespace == ns:
                    return rule
        return candidates[0]


def same_items(a: Mapping[Any, object], b: Mapping[Any, object]) -> bool:
    """The same keys, each with the very same object."""
    return a is b or (a.keys() == b.keys() and all(v is b[k] for k, v in a.items()))


def same_scope_inputs(before: World, after: World) -> bool:
    """Whether everything a Scope and the listener plan built from it read of the World is unchanged:
    the services, VirtualServices, DestinationRules, Sidecars and PeerAuthentications, each the very same
    object (WorldState keeps unchanged ones), and the selectors derived from them. Endpoints, workloads,
    secrets and policies are not among them: an endpoint change keeps every scope."""
    return same_items(before.virtual_services, after.virtual_services) and same_visibility_inputs(before, after)


def same_plan_routes(before: World, after: World) -> bool:
    """Whether what a listener plan reads of the VirtualServices is unchanged: host by host, the same ones with
    TCP or TLS routes (the very same objects, in the same order), and no host gaining or losing VirtualServices
    (one naming a host exactly hides the wildcard ones covering it). A plan skips a VirtualService without TCP
    and TLS routes, so an edit of HTTP routes keeps every plan."""
    a, b = before.virtual_services, after.virtual_services
    if a is b:
        return True
    if a.keys() != b.keys():
        return False
    return all(now is a[host] or _l4_ids(now) == _l4_ids(a[host]) for host, now in b.items())


def _l4_ids(vss: tuple[VirtualService, ...]) -> tuple[int, ...]:
    return tuple(id(vs) for vs in vss if vs.spec.tcp or vs.spec.tls)


def same_visibility_inputs(before: World, after: World) -> bool:
    """Whether what a Scope itself computes (visible services and ports, cluster signature, rule lookups)
    still holds: `same_scope_inputs` but the VirtualServices, which a scope only looks up in its World
    (`virtual_services`), so that a rebased scope reads the new ones. A VirtualService edit keeps every
    scope (rebased) and rebuilds the listener plans."""
    return (
        before.domain_suffix == after.domain_suffix
        and same_items(before.services, after.services)
        and same_items(before.rules_by_host, after.rules_by_host)
        and same_items(before.destination_rules, after.destination_rules)
        and same_items(before.sidecars, after.sidecars)
        and same_items(before.peer_authentications, after.peer_authentications)
        and before.wildcard_hosts == after.wildcard_hosts
        and before.source_selectors == after.source_selectors
        and before.rule_selectors == after.rule_selectors
    )
