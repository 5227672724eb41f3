"""Outbound route configurations, one per HTTP port (named by the port, as Istio does), with a
virtual host per service on that port. VirtualService http routes become Envoy routes."""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterator, Mapping, Sequence
from functools import partial

from envoy.config.route.v3 import route_components_pb2

from meshd.api.destinationrule import DestinationRule
from meshd.api.meta import InvalidResource
from meshd.api.networking import export_class
from meshd.api.virtualservice import VirtualService
from meshd.model.services import MeshService, routes_http
from meshd.model.world import World, resolve_host
from meshd.protowire import length_delimited
from meshd.translate import naming
from meshd.translate.delegate import delegate_keys, expand
from meshd.translate.headless import pod_virtual_hosts
from meshd.translate.http_match import MatchContext
from meshd.translate.http_route import (
    RouteContext,
    destination_action,
    destinations,
    hash_policy_for,
    http_routes,
    set_timeout,
)
from meshd.translate.proto_guard import violations
from meshd.translate.retries import default_retry_policy
from meshd.translate.scope import Scope
from meshd.translate.spec import Ident, Partial, Spec, ident, refusal

# A virtual host serialised, or why the proto guard left it out
VhostBody = bytes | tuple[InvalidResource, ...]


def virtual_service_routes(
    world: World, vs: VirtualService, match: MatchContext, rule_for: Callable[[str], DestinationRule | None]
) -> list[route_components_pb2.Route]:
    """The routes of one VirtualService (delegations expanded) in one route configuration."""

    def lookup(namespace: str, name: str) -> VirtualService | None:
        return world.virtual_services_by_name.get((namespace, name))

    out: list[route_components_pb2.Route] = []
    for entry in expand(vs, lookup):

        def resolve(host: str, namespace: str = entry.namespace) -> tuple[str, MeshService | None]:
            fqdn = resolve_host(host, namespace=namespace, domain_suffix=world.domain_suffix)
            return fqdn, world.services.get(fqdn)

        ctx = RouteContext(key=entry.owner, namespace=entry.namespace, resolve=resolve, rule_for=rule_for, match=match)
        default_name = f"{entry.owner.namespace}/{entry.owner.name}"
        out += http_routes(ctx, entry.route, entry.field, matches=entry.matches, default_name=default_name)
    return out


def _default_routes(
    service: MeshService, port: int, rule_for: Callable[[str], DestinationRule | None]
) -> list[route_components_pb2.Route]:
    cluster = naming.outbound_cluster(port=port, host=service.hostname)
    action = destination_action(cluster)
    action.hash_policy.extend(hash_policy_for(rule_for, cluster))
    set_timeout(action, None)
    action.retry_policy.CopyFrom(default_retry_policy())
    return [route_components_pb2.Route(name="default", match=route_components_pb2.RouteMatch(prefix="/"), route=action)]


def _routed_vss(world: World, vs: VirtualService) -> list[VirtualService]:
    """The VirtualService and the delegates it names (that exist)."""
    found = [vs]
    for key in delegate_keys(vs):
        delegate = world.virtual_services_by_name.get(key)
        if delegate is not None:
            found.append(delegate)
    return found


def destination_hosts(world: World, vs: VirtualService) -> list[str]:
    """The resolved hosts a VirtualService (with its delegates) routes or mirrors to (http, tcp and tls
    routes): its routes depend on their ports and rules."""
    hosts: set[str] = set()
    for owner in _routed_vss(world, vs):
        found = [d for http in owner.spec.http for d in destinations(http)]
        found += [d.destination for tcp in owner.spec.tcp for d in tcp.route]
        found += [d.destination for tls in owner.spec.tls for d in tls.route]
        for dest in found:
            hosts.add(resolve_host(dest.host, namespace=owner.metadata.namespace, domain_suffix=world.domain_suffix))
    return sorted(hosts)


def delegate_inputs(world: World, vs: VirtualService) -> tuple[Ident | None, ...]:
    """The delegates a VirtualService names, by identity (None where missing): part of every key
    of its routes, so editing a delegate reaches its roots."""
    return tuple(ident(world.virtual_services_by_name.get(k)) for k in delegate_keys(vs))


def changed_route_hosts(before: World, after: World) -> frozenset[str] | None:
    """The hosts whose VirtualServices differ between two Worlds, when that is how a change of VirtualServices
    reaches a scope's routes; None when it may reach hosts not among them: a wildcard host's VirtualServices
    changed (they route hosts they do not name), or a changed VirtualService is named as a delegate (it reaches
    the hosts of the roots naming it; a root that comes or goes, or names another, changes its own hosts')."""
    a, b = before.virtual_services, after.virtual_services
    changed = frozenset(host for host in a.keys() | b.keys() if a.get(host) is not b.get(host))
    if any(host.startswith("*") for host in changed):
        return None
    na, nb = before.virtual_services_by_name, after.virtual_services_by_name
    names = {name for name in na.keys() | nb.keys() if na.get(name) is not nb.get(name)}
    if names and not names.isdisjoint(k for vs in nb.values() for k in delegate_keys(vs)):
        return None
    return changed


def uses_source(vss: Sequence[VirtualService], world: World) -> tuple[bool, bool]:
    """Whether any match of these VirtualServices (or their delegates) depends on the proxy's
    namespace (sourceNamespace) or labels (sourceLabels)."""
    namespace = labels = False
    for vs in vss:
        for owner in _routed_vss(world, vs):
            for http in owner.spec.http:
                for m in http.match:
                    namespace |= bool(m.source_namespace)
                    labels |= bool(m.source_labels)
    return namespace, labels


def host_routes(
    world: World,
    service: MeshService,
    match: MatchContext,
    candidates: Sequence[VirtualService],
    rule_for: Callable[[str], DestinationRule | None],
) -> tuple[list[route_components_pb2.Route], list[InvalidResource]]:
    """Routes for one host: the first valid VirtualService wins (`candidates` in the proxy's order, Scope's);
    the others of its export class are skipped and returned as errors (with the resource they concern). With
    the candidates of every namespace (World checks): the first valid one of each export class wins."""
    errors: list[InvalidResource] = []
    chosen: tuple[VirtualService, list[route_components_pb2.Route]] | None = None
    firsts: dict[tuple[str, ...], VirtualService] = {}
    for vs in candidates:
        try:
            if not match.validating and _proxy_dependent(world, vs):
                # a match this proxy does not get (other source, port) may hold the reference the World
                # checks reject the VirtualService for: rejected here too, as they report it
                virtual_service_routes(world, vs, _validation_context(match.port), rule_for)
            routes = virtual_service_routes(world, vs, match, rule_for)
        except InvalidResource as err:
            errors.append(err)
            continue
        if chosen is None:
            chosen = (vs, routes)
        first = firsts.setdefault(_export_class(vs), vs)
        if first is not vs:
            errors.append(
                InvalidResource(
                    vs.key,
                    "spec.hosts",
                    f"{_routed_as(world, first, service.hostname)} is already routed by the older VirtualService"
                    f" {first.key}; ignored",
                )
            )
    return (chosen[1] if chosen is not None else _default_routes(service, match.port, rule_for)), errors


def _export_class(vs: VirtualService) -> tuple[str, ...]:
    return export_class(vs.spec.export_to, owner_namespace=vs.metadata.namespace)


def _routed_as(world: World, vs: VirtualService, hostname: str) -> str:
    """The host of the VirtualService that routes a service: its name, else the most specific wildcard
    covering it (a conflict is the same for every service a wildcard covers, and World checks try one
    service per port). Read from the VirtualService itself: the route's key holds it."""
    namespace = vs.metadata.namespace
    hosts = [resolve_host(h, namespace=namespace, domain_suffix=world.domain_suffix) for h in vs.spec.hosts]
    if hostname in hosts:
        return hostname
    covering = [h for h in hosts if h == "*" or (h.startswith("*.") and hostname.endswith(h[1:]))]
    return max(covering, key=len, default=hostname)


def _proxy_dependent(world: World, vs: VirtualService) -> bool:
    """Whether some http match of the VirtualService (or its delegates) applies to some proxies or ports only."""
    return any(
        m.port is not None or m.source_labels or m.source_namespace
        for owner in _routed_vss(world, vs)
        for http in owner.spec.http
        for m in http.match
    )


def _validation_context(port: int) -> MatchContext:
    """Every match applies: a reference is checked whichever proxies would see it."""
    return MatchContext(port=port, namespace="", source_matches=lambda _: True, validating=True)


def wildcard_ports(world: World, host: str) -> dict[int, MeshService]:
    """For a wildcard host: one service it routes per HTTP port (routes differ only by port)."""
    candidates = world.virtual_services.get(host)
    out: dict[int, MeshService] = {}
    for service in world.services.values():
        if world.virtual_services_for(service.hostname) is candidates:
            for sp in service.ports:
                if routes_http(sp.protocol):
                    out.setdefault(sp.number, service)
    return dict(sorted(out.items()))


def validate_host_routes(
    world: World, host: str, rule_for: Callable[[str], DestinationRule | None] | None = None
) -> list[InvalidResource]:
    """The VirtualServices of one host (or wildcard host: once per port of the services it covers)
    checked against the default DestinationRules (or `rule_for`: those a workload selector picks), so a
    rejected resource is reported whichever proxies it would reach."""
    rules = rule_for if rule_for is not None else world.destination_rules.get
    errors: list[InvalidResource] = []
    candidates = world.virtual_services.get(host, ())
    if host.startswith("*"):
        targets = list(wildcard_ports(world, host).items())
    else:
        service = world.services.get(host)
        targets = [(sp.number, service) for sp in service.ports if routes_http(sp.protocol)] if service else []
    for port, target in targets:
        errors += host_routes(world, target, _validation_context(port), candidates, rules)[1]
    return list(dict.fromkeys(errors))


_RC_NAME, _RC_VIRTUAL_HOSTS, _RC_VALIDATE_CLUSTERS = 1, 2, 7  # RouteConfiguration field numbers
ROUTE_CONFIGURATION = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"


def catch_all_vhost(mode: str) -> bytes:
    """Istio's last virtual host of a capture-mode route table: unknown Hosts pass through to their
    original destination (ALLOW_ANY) or get a 502 (REGISTRY_ONLY)."""
    route = route_components_pb2.Route(name=mode.lower(), match=route_components_pb2.RouteMatch(prefix="/"))
    if mode == "REGISTRY_ONLY":
        vhost = route_components_pb2.VirtualHost(name="block_all", domains=["*"])
        route.direct_response.status = 502
    else:
        vhost = route_components_pb2.VirtualHost(name="allow_any", domains=["*"])
        route.route.cluster = naming.PASSTHROUGH
        route.route.timeout.SetInParent()  # no timeout (0s), as for any Istio route without one
    vhost.routes.append(route)
    body: bytes = vhost.SerializeToString(deterministic=True)
    return body


class RouteTable:
    """Outbound route configurations for one scope: per HTTP port, a virtual host per visible service.

    A virtual host is serialised once per (inputs, same namespace as the proxy or not) and shared by
    every scope, after the proto guard checked it (one that breaks a rule of Envoy's protos is left out
    of every configuration, its error kept in its place); a route configuration is the concatenation
    of its virtual hosts' bytes, so a scope
    costs a join, not a rebuild. A configuration's key holds every input, so an unchanged one is reused.
    """

    def __init__(
        self,
        scope: Scope,
        *,
        cache: dict[Hashable, VhostBody] | None = None,
        previous_cache: Mapping[Hashable, VhostBody] | None = None,
        catch_all: str | None = None,
        check: bool = False,
    ) -> None:
        """`catch_all`: for capture-mode proxies, the outboundTrafficPolicy mode. Each table then ends with
        Istio's `allow_any` virtual host (any other Host to PassthroughCluster) for ALLOW_ANY, or
        `block_all` (502) for REGISTRY_ONLY: captured HTTP to a destination the mesh does not know.
        `check`: a cached virtual host is built again and must be byte-identical (its key covers its inputs)."""
        self.scope = scope
        self._catch_all = catch_all
        self._check = check
        self._cache = cache if cache is not None else {}
        self._previous = previous_cache or {}
        self.errors: list[InvalidResource] = []  # found while building this table's virtual hosts

    def _vhost_key(self, service: MeshService, port: int) -> tuple[Hashable, ...]:
        scope, world = self.scope, self.scope.world
        candidates = scope.virtual_services(service.hostname)
        deps = tuple(
            (host, world.services.get(host), ident(scope.destination_rule(host)))
            for vs in candidates
            for host in destination_hosts(world, vs)
        )
        delegates = tuple(delegate_inputs(world, vs) for vs in candidates)
        by_namespace, by_labels = uses_source(candidates, world) if candidates else (False, False)
        source = (scope.namespace if by_namespace else None, scope.key.source if by_labels else None)
        same_namespace = service.namespace == scope.namespace
        own_rule = ident(scope.destination_rule(service.hostname))  # its hash policy, without a VirtualService
        # a headless service's pods have virtual hosts of their own: its endpoints (their names, addresses)
        pods = ident(world.endpoints.get((service.hostname, port))) if service.headless else None
        return (
            service, port, tuple(Ident(vs) for vs in candidates), deps, delegates, source, same_namespace, own_rule,
            pods,
        )  # fmt: skip

    def _vhost_bytes(self, service: MeshService, port: int, key: Hashable) -> VhostBody:
        body = self._cache.get(key)
        if body is None:
            body = self._previous.get(key)
            if body is None:
                body = self._vhost(service, port)
            elif self._check:
                self._verify(service, port, key, body)
            self._cache[key] = body
        elif self._check:
            self._verify(service, port, key, body)
        return body

    def _verify(self, service: MeshService, port: int, key: Hashable, body: VhostBody) -> None:
        if self._vhost(service, port) != body:
            raise AssertionError(
                f"virtual host {service.hostname}:{port} reused under key {key!r} but built now it differs: "
                "the key does not cover an input of the build"
            )

    def _vhost(self, service: MeshService, port: int) -> VhostBody:
        scope = self.scope
        match = MatchContext(port=port, namespace=scope.namespace, source_matches=scope.source_matches)
        routes, errors = host_routes(
            scope.world, service, match, scope.virtual_services(service.hostname), scope.destination_rule
        )
        # Reported once per World, whatever proxies are connected, by validate_host_routes (the same
        # function in the validation context): kept here only for the check mode's comparison.
        self.errors += errors
        vhost = route_components_pb2.VirtualHost(
            name=f"{service.hostname}:{port}",
            domains=naming.service_domains(service, port=port, proxy_namespace=scope.namespace),
            routes=routes,
        )
        # Checked here, once per distinct virtual host (cheaper than parsing every assembled configuration).
        found = violations(vhost)
        if found:
            return (refusal("virtual host", f"{vhost.name} of {naming.route_config(port=port)}", found),)
        body: bytes = vhost.SerializeToString(deterministic=True)
        return body

    def _build(self, port: int, entries: Sequence[tuple[MeshService, Hashable]]) -> bytes | Partial:
        parts = [length_delimited(_RC_NAME, naming.route_config(port=port).encode())]
        refused: list[InvalidResource] = []
        for service, key in entries:
            body = self._vhost_bytes(service, port, key)
            if isinstance(body, bytes):
                parts.append(length_delimited(_RC_VIRTUAL_HOSTS, body))
            else:
                refused += body
            if service.headless:
                for vhost in pod_virtual_hosts(self.scope.world, service, port):
                    parts.append(length_delimited(_RC_VIRTUAL_HOSTS, vhost.SerializeToString(deterministic=True)))
        if self._catch_all is not None and not any("*" in s.hostname.split(".") for s, _ in entries):
            parts.append(length_delimited(_RC_VIRTUAL_HOSTS, catch_all_vhost(self._catch_all)))
        parts.append(length_delimited(_RC_VALIDATE_CLUSTERS, b""))  # validate_clusters: false
        return Partial(b"".join(parts), tuple(refused)) if refused else b"".join(parts)

    def specs(self) -> Iterator[Spec]:
        by_port: dict[int, list[MeshService]] = {}
        for service, ports in self.scope.services:
            for sp in ports:
                if routes_http(sp.protocol):
                    by_port.setdefault(sp.number, []).append(service)
        for port, services in sorted(by_port.items()):
            entries = [(s, self._vhost_key(s, port)) for s in services]
            key = ("rds", port, self.scope.namespace, tuple(k for _, k in entries), self._catch_all)
            yield Spec(naming.route_config(port=port), key, partial(self._build, port, entries), ROUTE_CONFIGURATION)
