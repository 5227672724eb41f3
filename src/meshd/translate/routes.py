"""Outbound route configurations, one per HTTP port (named by the port, as Istio does), with a
virtual host per service on that port. VirtualService http routes become Envoy routes."""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterator, Mapping, Sequence
from functools import partial

from envoy.config.route.v3 import route_components_pb2
from envoy.extensions.retry.host.previous_hosts.v3 import previous_hosts_pb2
from envoy.type.matcher.v3 import regex_pb2, string_pb2
from google.protobuf import any_pb2, duration_pb2, wrappers_pb2

from meshd.api.destinationrule import DestinationRule
from meshd.api.meta import InvalidResource
from meshd.api.virtualservice import HTTPMatchRequest, HTTPRoute, StringMatch, VirtualService
from meshd.model.services import MeshService, is_http
from meshd.model.world import World, resolve_host
from meshd.protowire import length_delimited
from meshd.translate import naming
from meshd.translate.policy import route_hash_policies
from meshd.translate.scope import Scope
from meshd.translate.spec import Ident, Spec, ident

# Istio's default retry policy when a VirtualService says nothing.
DEFAULT_RETRY_ON = "connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes"
DEFAULT_RETRIES = 2


def default_retry_policy() -> route_components_pb2.RetryPolicy:
    predicate = any_pb2.Any()
    predicate.Pack(previous_hosts_pb2.PreviousHostsPredicate())
    return route_components_pb2.RetryPolicy(
        retry_on=DEFAULT_RETRY_ON,
        num_retries=wrappers_pb2.UInt32Value(value=DEFAULT_RETRIES),
        retry_host_predicate=[
            route_components_pb2.RetryPolicy.RetryHostPredicate(
                name="envoy.retry_host_predicates.previous_hosts", typed_config=predicate
            )
        ],
        host_selection_retry_max_attempts=5,
    )


def _string_matcher(match: StringMatch, *, ignore_case: bool = False) -> string_pb2.StringMatcher:
    if match.exact is not None:
        return string_pb2.StringMatcher(exact=match.exact, ignore_case=ignore_case)
    if match.prefix is not None:
        return string_pb2.StringMatcher(prefix=match.prefix, ignore_case=ignore_case)
    return string_pb2.StringMatcher(safe_regex=regex_pb2.RegexMatcher(regex=match.regex or ""))


def _route_match(match: HTTPMatchRequest | None) -> route_components_pb2.RouteMatch:
    out = route_components_pb2.RouteMatch()
    uri = match.uri if match else None
    if uri is None or (uri.prefix is not None and uri.prefix == ""):
        out.prefix = "/"
    elif uri.exact is not None:
        out.path = uri.exact
    elif uri.prefix is not None:
        out.prefix = uri.prefix
    else:
        out.safe_regex.CopyFrom(regex_pb2.RegexMatcher(regex=uri.regex or ""))
    if match is not None:
        if match.ignore_uri_case:
            out.case_sensitive.CopyFrom(wrappers_pb2.BoolValue(value=False))
        for name, value in sorted(match.headers.items()):
            out.headers.append(route_components_pb2.HeaderMatcher(name=name, string_match=_string_matcher(value)))
    return out


class _RouteBuilder:
    def __init__(
        self, world: World, vs: VirtualService, port: int, rule_for: Callable[[str], DestinationRule | None]
    ) -> None:
        self.world, self.vs, self.port, self.rule_for = world, vs, port, rule_for

    def destination_cluster(self, route: HTTPRoute, index: int, dest_index: int) -> str:
        return self.destination(route, index, dest_index)[0]

    def destination(
        self, route: HTTPRoute, index: int, dest_index: int
    ) -> tuple[str, list[route_components_pb2.RouteAction.HashPolicy]]:
        """The destination's cluster name and the hash policy its DestinationRule asks for."""
        dest = route.route[dest_index].destination
        field = f"spec.http[{index}].route[{dest_index}].destination"
        host = resolve_host(dest.host, namespace=self.vs.metadata.namespace, domain_suffix=self.world.domain_suffix)
        service = self.world.services.get(host)
        if dest.port is not None:
            port = dest.port.number
        elif service is not None and len(service.ports) == 1:
            port = service.ports[0].number
        elif service is not None and service.port(self.port) is not None:
            port = self.port
        else:
            raise InvalidResource(self.vs.key, f"{field}.port", f"a port is required: {host} has several ports")
        if dest.subset:
            rule = self.rule_for(host)
            if rule is None or all(s.name != dest.subset for s in rule.spec.subsets):
                raise InvalidResource(
                    self.vs.key,
                    f"{field}.subset",
                    f"subset {dest.subset!r} is not defined by a DestinationRule for {host}",
                )
        hashing = route_hash_policies(self.rule_for(host), port=port, subset=dest.subset)
        return naming.outbound_cluster(port=port, host=host, subset=dest.subset), hashing

    def action(self, route: HTTPRoute, index: int) -> route_components_pb2.RouteAction:
        action = route_components_pb2.RouteAction(
            timeout=duration_pb2.Duration(seconds=0), retry_policy=default_retry_policy()
        )
        found = [self.destination(route, index, j) for j in range(len(route.route))]
        clusters = [name for name, _ in found]
        # A consistent-hash DestinationRule needs the route to say what to hash (the first
        # destination that has one: Envoy uses it only for ring-hash / Maglev clusters).
        action.hash_policy.extend(next((h for _, h in found if h), []))
        weights = route.weights()
        if len(clusters) == 1:
            action.cluster = clusters[0]
        else:
            for name, weight in zip(clusters, weights, strict=True):
                if weight:
                    action.weighted_clusters.clusters.append(
                        route_components_pb2.WeightedCluster.ClusterWeight(
                            name=name, weight=wrappers_pb2.UInt32Value(value=weight)
                        )
                    )
        return action

    def routes(self) -> list[route_components_pb2.Route]:
        out = []
        for i, http in enumerate(self.vs.spec.http):
            action = self.action(http, i)
            matches: list[HTTPMatchRequest | None] = list(http.match) or [None]
            for m in matches:
                name = (
                    m.name if m and m.name else http.name
                ) or f"{self.vs.metadata.namespace}/{self.vs.metadata.name}"
                out.append(route_components_pb2.Route(name=name, match=_route_match(m), route=action))
        return out


def _default_routes(service: MeshService, port: int, rule: DestinationRule | None) -> list[route_components_pb2.Route]:
    return [
        route_components_pb2.Route(
            name="default",
            match=route_components_pb2.RouteMatch(prefix="/"),
            route=route_components_pb2.RouteAction(
                cluster=naming.outbound_cluster(port=port, host=service.hostname),
                timeout=duration_pb2.Duration(seconds=0),
                retry_policy=default_retry_policy(),
                hash_policy=route_hash_policies(rule, port=port),
            ),
        )
    ]


def destination_hosts(world: World, vs: VirtualService) -> list[str]:
    """The resolved hosts a VirtualService routes to (its route depends on their ports and rules)."""
    return sorted(
        {
            resolve_host(d.destination.host, namespace=vs.metadata.namespace, domain_suffix=world.domain_suffix)
            for http in vs.spec.http
            for d in http.route
        }
    )


def _host_routes(
    world: World,
    service: MeshService,
    port: int,
    candidates: Sequence[VirtualService],
    rule_for: Callable[[str], DestinationRule | None],
    errors: list[InvalidResource],
) -> list[route_components_pb2.Route]:
    """Routes for one host: the oldest valid VirtualService wins; others are reported and skipped."""
    chosen: tuple[VirtualService, list[route_components_pb2.Route]] | None = None
    for vs in candidates:
        try:
            routes = _RouteBuilder(world, vs, port, rule_for).routes()
        except InvalidResource as err:
            errors.append(err)
            continue
        if chosen is None:
            chosen = (vs, routes)
        else:
            errors.append(
                InvalidResource(
                    vs.key,
                    "spec.hosts",
                    f"{service.hostname} is already routed by the older VirtualService {chosen[0].key}; ignored",
                )
            )
    return chosen[1] if chosen is not None else _default_routes(service, port, rule_for(service.hostname))


def validate_host_routes(world: World, host: str) -> list[InvalidResource]:
    """The VirtualServices of one host checked against its default DestinationRule, so a rejected
    resource is reported whichever proxies it would reach."""
    errors: list[InvalidResource] = []
    service = world.services.get(host)
    if service is not None:
        for sp in service.ports:
            if is_http(sp.protocol):
                candidates = world.virtual_services.get(host, ())
                _host_routes(world, service, sp.number, candidates, world.destination_rules.get, errors)
    return list(dict.fromkeys(errors))


_RC_NAME, _RC_VIRTUAL_HOSTS, _RC_VALIDATE_CLUSTERS = 1, 2, 7  # RouteConfiguration field numbers
ROUTE_CONFIGURATION = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"


class RouteTable:
    """Outbound route configurations for one scope: per HTTP port, a virtual host per visible service.

    A virtual host is serialised once per (inputs, same namespace as the proxy or not) and shared by
    every scope; a route configuration is the concatenation of its virtual hosts' bytes, so a scope
    costs a join, not a rebuild. A configuration's key holds every input, so an unchanged one is reused.
    """

    def __init__(
        self,
        scope: Scope,
        *,
        cache: dict[Hashable, bytes] | None = None,
        previous_cache: Mapping[Hashable, bytes] | None = None,
    ) -> None:
        self.scope = scope
        self._cache = cache if cache is not None else {}
        self._previous = previous_cache or {}

    def _vhost_key(self, service: MeshService, port: int) -> tuple[Hashable, ...]:
        candidates = self.scope.virtual_services(service.hostname)
        deps = tuple(
            (host, self.scope.world.services.get(host), ident(self.scope.destination_rule(host)))
            for vs in candidates
            for host in destination_hosts(self.scope.world, vs)
        )
        own_rule = ident(self.scope.destination_rule(service.hostname))  # its hash policy, without a VirtualService
        return (
            service,
            port,
            tuple(Ident(vs) for vs in candidates),
            deps,
            service.namespace == self.scope.namespace,
            own_rule,
        )

    def _vhost_bytes(self, service: MeshService, port: int, key: Hashable) -> bytes:
        body = self._cache.get(key)
        if body is None:
            body = self._previous.get(key)
            if body is None:
                scope = self.scope
                ignored: list[InvalidResource] = []  # reported by validate_host_routes
                routes = _host_routes(
                    scope.world,
                    service,
                    port,
                    scope.virtual_services(service.hostname),
                    scope.destination_rule,
                    ignored,
                )
                vhost = route_components_pb2.VirtualHost(
                    name=f"{service.hostname}:{port}",
                    domains=naming.service_domains(service, port=port, proxy_namespace=scope.namespace),
                    routes=routes,
                )
                body = vhost.SerializeToString(deterministic=True)
            self._cache[key] = body
        return body

    def _build(self, port: int, entries: Sequence[tuple[MeshService, Hashable]]) -> bytes:
        parts = [length_delimited(_RC_NAME, naming.route_config(port=port).encode())]
        parts += [length_delimited(_RC_VIRTUAL_HOSTS, self._vhost_bytes(s, port, k)) for s, k in entries]
        parts.append(length_delimited(_RC_VALIDATE_CLUSTERS, b""))  # validate_clusters: false
        return b"".join(parts)

    def specs(self) -> Iterator[Spec]:
        by_port: dict[int, list[MeshService]] = {}
        for service, ports in self.scope.services:
            for sp in ports:
                if is_http(sp.protocol):
                    by_port.setdefault(sp.number, []).append(service)
        for port, services in sorted(by_port.items()):
            entries = [(s, self._vhost_key(s, port)) for s in services]
            key = ("rds", port, self.scope.namespace, tuple(k for _, k in entries))
            yield Spec(naming.route_config(port=port), key, partial(self._build, port, entries), ROUTE_CONFIGURATION)
