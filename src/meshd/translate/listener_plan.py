"""The outbound listener plan of a scope: per port, HTTP (the route table of the port) or the L4 chains
of its TCP and TLS services, as plain hashable data (equal plans give equal listeners; the plan is a
checked derived value, `generate/queries.py`).

Per TCP/TLS service on a port, oldest first: the chains of its VirtualService's `tls` routes (TLS and
HTTPS ports) or `tcp` routes that apply to the scope's proxies (`translate/tls_route.py`,
`tcp_route.py`); without any, one default chain to `outbound|<port>||<host>`. Where a listener tells
services apart (traffic capture: one listener per port for every destination), a chain without
`destinationSubnets` matches the service's addresses; a TLS service without addresses matches its
host name as SNI (Istio's rule), so several external TLS hosts share 443. Without capture the
listener is bound on the proxy's address: TLS services share the port by SNI (a lone one takes every
connection), a TCP port serves its oldest service (the others are reported).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace

from meshd.api.destinationrule import DestinationRule
from meshd.api.meta import InvalidResource, ResourceKey
from meshd.api.networking import export_class
from meshd.api.virtualservice import VirtualService
from meshd.model.services import MeshService, ServicePort, is_http, is_served, is_sniffed, is_tls
from meshd.model.world import World, resolve_host
from meshd.translate import naming
from meshd.translate.l4_chain import L4Chain, distinct, normalise_cidr
from meshd.translate.l4_route import L4Context, chain_policy, route_chain, sidecar_applies, validating
from meshd.translate.scope import Scope
from meshd.translate.tcp_route import tcp_route_chains
from meshd.translate.tls_route import tls_route_chains

RESERVED_PORTS = frozenset({15000, 15001, 15004, 15006, 15008, 15020, 15021, 15090})


def tcp_port_shared(port: int, holder: str) -> str:
    return (
        f"TCP port {port} is already used by {holder}: not served to proxies without traffic capture"
        " (captured proxies tell the services apart by address)"
    )


@dataclass(frozen=True)
class PortPlan:
    """One outbound port: `http` (some service declares HTTP: the HTTP connection manager with RDS `<port>`),
    `sniff` (some service declares nothing: HTTP detected per connection), the L4 chains of its TCP, TLS and
    sniffed services, the chain that takes what no other matches (`default`), the ranges of sniffed services
    whose HTTP is told apart by address (`sniffed_ranges`, with capture), and how long detection waits
    (protocolDetectionTimeout)."""

    port: int
    http: bool = False
    sniff: bool = False
    chains: tuple[L4Chain, ...] = ()
    default: L4Chain | None = None
    sniffed_ranges: tuple[tuple[str, tuple[str, ...]], ...] = ()  # (the service's cluster, its ranges)
    detection_timeout: float = 0.0

    @property
    def inspects_tls(self) -> bool:
        """Whether a chain matches SNI: the listener needs the tls_inspector."""
        return any(c.server_names for c in self.chains)

    @property
    def l4(self) -> bool:
        """Whether the port carries anything but HTTP."""
        return bool(self.chains) or self.default is not None


def _port_protocol(service: MeshService, port: int) -> str:
    sp = service.port(port)
    return sp.protocol if sp is not None else "TCP"


def _age(service: MeshService) -> tuple[str, str]:
    return (service.creation or "~", service.hostname)


class ListenerPlan:
    """The outbound listeners of a scope. What cannot be served is reported (`errors`, naming the Service and
    port); VirtualServices whose TCP/TLS routes cannot be translated are left out (`route_errors`;
    `generate/checks.py` reports them).

    One port number shared by services of different kinds: proxies with traffic capture tell TCP services
    apart by their addresses and TLS services by SNI, and serve every one; proxies without capture (one
    listener per port) detect HTTP, tell TLS services without addresses apart by SNI and send the rest to the
    oldest other service: younger ones on that port are not served to them (a warning naming the port)."""

    def __init__(
        self,
        services: Sequence[tuple[MeshService, Sequence[ServicePort]]],
        *,
        rule_for: Callable[[str], DestinationRule | None] | None = None,
        scope: Scope | None = None,
        detection_timeout: float = 0.0,
    ) -> None:
        self.errors: list[InvalidResource] = []
        self.route_errors: list[InvalidResource] = []
        self._scope = scope
        self._capture = scope is not None and scope.key.capture
        self._rule_for = rule_for if rule_for is not None else (scope.destination_rule if scope else lambda _: None)
        self.detection_timeout = detection_timeout
        by_port: dict[int, list[MeshService]] = {}
        for service, ports in services:
            for sp in ports:
                by_port.setdefault(sp.number, []).append(service)
        self.ports: tuple[PortPlan, ...] = tuple(
            plan for port, on_port in sorted(by_port.items()) if (plan := self._plan_port(port, on_port)) is not None
        )
        self.signature = self.ports  # equal plans: equal listeners (the detection timeout is in each)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ListenerPlan) and other.signature == self.signature

    def __hash__(self) -> int:
        return hash(self.signature)

    def _reject(self, service: MeshService, message: str, *, severity: str = "error") -> None:
        key = ResourceKey("Service", service.namespace, service.name)
        self.errors.append(InvalidResource(key, "spec.ports", message, severity=severity))

    def _plan_port(self, port: int, services: list[MeshService]) -> PortPlan | None:
        if port in RESERVED_PORTS:
            # A warning: the rest of the Service is served, and Istio's own gateway Services declare the
            # status port 15021 (callers reach it directly, not through their sidecar's listeners).
            for s in services:
                self._reject(
                    s,
                    f"port {port} is reserved for the sidecar: not served through outbound listeners",
                    severity="warning",
                )
            return None
        served = []
        for s in services:
            protocol = _port_protocol(s, port)
            if is_served(protocol):
                served.append(s)
            else:
                self._reject(s, f"{protocol} port {port} is not proxied by the sidecar (TCP only)", severity="warning")
        http = [s for s in served if is_http(_port_protocol(s, port))]
        l4 = sorted((s for s in served if not is_http(_port_protocol(s, port))), key=_age)
        sniffed = [s for s in l4 if is_sniffed(_port_protocol(s, port))]
        if not http and not l4:
            return None
        # TLS services without addresses are told apart by SNI; of the others (TCP, sniffed, TLS with
        # addresses) a listener bound on the proxy's address serves only the oldest.
        by_name = [s for s in l4 if is_tls(_port_protocol(s, port)) and not s.addresses]
        by_address = [s for s in l4 if s not in by_name]
        for s in by_address[1:]:
            self._reject(s, tcp_port_shared(port, by_address[0].hostname), severity="warning")
        if http:
            for s in (s for s in by_address if not s.addresses):
                self._reject(
                    s,
                    f"{_port_protocol(s, port)} port {port} has no ClusterIP to tell it from the HTTP services on the"
                    " same port: captured proxies handle its traffic as HTTP",
                    severity="warning",
                )
        timeout = self.detection_timeout if (sniffed or (http and l4)) else 0.0
        if self._capture:
            chains = _named(distinct([c for s in l4 for c in self._service_chains(s, port, sni=True)]))
            default = None if http else next((c for c in chains if c.catch_all), None)
            ranges = tuple(
                (naming.outbound_cluster(port=port, host=s.hostname), tuple(normalise_cidr(a) for a in s.addresses))
                for s in sniffed
                if s.addresses
            )
            return PortPlan(
                port,
                http=bool(http),
                sniff=bool(sniffed),
                chains=tuple(c for c in chains if not c.catch_all),
                default=default,
                sniffed_ranges=ranges,
                detection_timeout=timeout,
            )
        sni = len(by_name) > 1 or bool(by_address) or bool(http)
        chains = _named(distinct([c for s in by_address[:1] + by_name for c in self._service_chains(s, port, sni=sni)]))
        return PortPlan(
            port,
            http=bool(http),
            sniff=bool(sniffed),
            chains=tuple(c for c in chains if not c.catch_all),
            default=next((c for c in chains if c.catch_all), None),
            detection_timeout=timeout,
        )

    def _service_chains(self, service: MeshService, port: int, *, sni: bool) -> list[L4Chain]:
        """The chains of one service (behind the Mongo proxy filter on a mongo port, Istio's default)."""
        chains = self._chains_of(service, port, sni=sni)
        if _port_protocol(service, port) == "MONGO":
            return [replace(c, mongo=True) for c in chains]
        return chains

    def _chains_of(self, service: MeshService, port: int, *, sni: bool) -> list[L4Chain]:
        """Its VirtualService's applicable TCP/TLS routes, else its default chain."""
        tls = is_tls(_port_protocol(service, port))
        addresses = tuple(normalise_cidr(a) for a in service.addresses) if self._capture else ()
        for vs in self._virtual_services(service):  # the oldest valid one with TCP or TLS routes
            if not (vs.spec.tcp or vs.spec.tls):
                continue
            try:
                chains = self._route_chains(vs, port, tls=tls, addresses=addresses)
            except InvalidResource as err:
                self.route_errors.append(err)
                continue
            if chains:
                return chains
            break  # the host's VirtualService routes none of this proxy's connections here: the default
        idle, tunnel = chain_policy(self._rule_for, naming.outbound_cluster(port=port, host=service.hostname))
        cluster = naming.outbound_cluster(port=port, host=service.hostname)
        # A TLS service the listener cannot tell apart by address is told apart by its host name as SNI.
        names = (service.hostname,) if tls and not addresses and sni else ()
        return [
            L4Chain(
                name=cluster,
                clusters=((cluster, 100),),
                server_names=names,
                prefix_ranges=addresses,
                idle_timeout=idle,
                tunnel=tunnel,
            )
        ]

    def _virtual_services(self, service: MeshService) -> tuple[VirtualService, ...]:
        return self._scope.virtual_services(service.hostname) if self._scope is not None else ()

    def _route_chains(self, vs: VirtualService, port: int, *, tls: bool, addresses: tuple[str, ...]) -> list[L4Chain]:
        scope = self._scope
        assert scope is not None
        world, namespace = scope.world, vs.metadata.namespace

        def resolve(host: str) -> tuple[str, MeshService | None]:
            fqdn = resolve_host(host, namespace=namespace, domain_suffix=world.domain_suffix)
            return fqdn, world.services.get(fqdn)

        ctx = L4Context(
            key=vs.key,
            namespace=namespace,
            port=port,
            resolve=resolve,
            rule_for=self._rule_for,
            applies=sidecar_applies(vs, port=port, namespace=scope.namespace, source_matches=scope.source_matches),
            addresses=addresses,
        )
        if tls and vs.spec.tls:
            return tls_route_chains(ctx=ctx, routes=vs.spec.tls)
        return tcp_route_chains(ctx=ctx, routes=vs.spec.tcp)


def _named(chains: Iterable[L4Chain]) -> list[L4Chain]:
    """Chains with unique names (Envoy refuses two chains of a listener with one name)."""
    out: list[L4Chain] = []
    seen: dict[str, int] = {}
    for chain in chains:
        count = seen.get(chain.name, 0)
        seen[chain.name] = count + 1
        out.append(chain if not count else replace(chain, name=f"{chain.name}#{count}"))
    return out


def _l4_ports(world: World, host: str) -> list[int]:
    """The TCP/TLS ports of the service(s) a VirtualService host routes (a wildcard host: every service it
    covers)."""
    if not host.startswith("*"):
        service = world.services.get(host)
        services = [service] if service is not None else []
    else:
        candidates = world.virtual_services.get(host)
        services = [s for s in world.services.values() if world.virtual_services_for(s.hostname) is candidates]
    return sorted({p.number for s in services for p in s.ports if not is_http(p.protocol)})


def l4_check_inputs(world: World, host: str) -> tuple[int, ...]:
    """What `validate_l4_routes` reads of a host besides its VirtualServices and their destinations."""
    return tuple(_l4_ports(world, host))


def validate_l4_routes(
    world: World, host: str, rule_for: Callable[[str], DestinationRule | None] | None = None
) -> list[InvalidResource]:
    """The TCP and TLS routes of a host's VirtualServices checked at each TCP/TLS port of the host against
    the default DestinationRules (or `rule_for`), so a rejected resource is reported whichever proxies it
    would reach; a younger VirtualService with TCP/TLS routes for the same host is reported as ignored."""
    candidates = [vs for vs in world.virtual_services.get(host, ()) if vs.spec.tcp or vs.spec.tls]
    ports = _l4_ports(world, host)
    if not candidates or not ports:
        return []
    errors: list[InvalidResource] = []
    chosen: dict[tuple[str, ...], VirtualService] = {}
    for vs in candidates:
        namespace = vs.metadata.namespace

        def resolve(name: str, namespace: str = namespace) -> tuple[str, MeshService | None]:
            fqdn = resolve_host(name, namespace=namespace, domain_suffix=world.domain_suffix)
            return fqdn, world.services.get(fqdn)

        found: list[InvalidResource] = []  # every route's, whichever one a proxy's plan meets first
        for port in ports:
            ctx = L4Context(
                key=vs.key,
                namespace=namespace,
                port=port,
                resolve=resolve,
                rule_for=rule_for if rule_for is not None else world.destination_rules.get,
                applies=validating,
            )
            routes = [(f"spec.tcp[{i}].route", r.route) for i, r in enumerate(vs.spec.tcp)]
            routes += [(f"spec.tls[{i}].route", r.route) for i, r in enumerate(vs.spec.tls)]
            for field, route in routes:
                try:
                    route_chain(ctx, route, field)
                except InvalidResource as err:
                    found.append(err)
        if found:
            errors += found
            continue
        # the first valid one of each export class is used where it is seen (translate/scope.py's order)
        first = chosen.setdefault(export_class(vs.spec.export_to, owner_namespace=vs.metadata.namespace), vs)
        if first is not vs:
            field = "spec.tcp" if vs.spec.tcp else "spec.tls"
            message = f"{host} is already routed (TCP/TLS) by the older VirtualService {first.key}; ignored"
            errors.append(InvalidResource(vs.key, field, message))
    return errors
