"""One gateway workload's configuration from the Gateways that select it: listeners, route
configurations, the clusters its routes use, the SDS secrets its servers need, and every error on
the way (conflicts, missing credentials, VirtualServices whose routes cannot be honoured). Pure;
the generator caches it per `GatewayKey` and the World checks run the same function to report.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial

from envoy.config.listener.v3 import listener_components_pb2
from envoy.extensions.transport_sockets.tls.v3 import tls_pb2

from meshd.api.gateway import Gateway
from meshd.api.meta import InvalidResource
from meshd.api.virtualservice import TCPRoute, TLSRoute, VirtualService
from meshd.model.derive import resolve_host
from meshd.model.world import World
from meshd.translate.authz.inbound import NO_AUTHZ, InboundAuthz
from meshd.translate.gateway import listeners as gl
from meshd.translate.gateway.hosts import bindable, intersect, virtual_hosts
from meshd.translate.gateway.plan import GatewayServer, PortPlan, plan_ports
from meshd.translate.gateway.routes import HttpRoutes, http_route_name, route_configuration, used_clusters
from meshd.translate.gateway.sni_dnat import SniTarget, sni_targets
from meshd.translate.gateway.tls import downstream_tls, sds_secret_names, server_files
from meshd.translate.http_match import MatchContext, applies
from meshd.translate.http_route import RouteContext
from meshd.translate.jwt_authn import JwtProviders
from meshd.translate.l4_route import cidr_ranges, route_clusters, tcp_proxy
from meshd.translate.naming import ANY_ADDRESS
from meshd.translate.scope import Scope
from meshd.translate.secrets import source
from meshd.translate.spec import Spec


@dataclass(frozen=True, order=True)
class GatewayKey:
    """What a gateway workload's configuration depends on besides the World: its namespace and labels
    (which Gateways select it; sourceLabels), locality (endpoints), the node agent's certificate
    (ISTIO_MUTUAL servers, mTLS to backends) and the address its listeners bind."""

    namespace: str
    labels: tuple[tuple[str, str], ...]
    locality: str = ""
    failover_labels: tuple[tuple[str, str], ...] = ()
    sds: bool = False
    address: str = ANY_ADDRESS
    # server port -> the port the workload listens on: the targetPort of a Service port of the
    # workload (Istio's mapping: Gateway port 80, gateway Service 80 -> 8080, listener 0.0.0.0_8080)
    port_map: tuple[tuple[int, int], ...] = ()
    # gatewayTopology.numTrustedProxies: X-Forwarded-For hops trusted for the client address
    trusted_hops: int = 0


@dataclass
class GatewayConfig:
    listeners: list[Spec] = field(default_factory=list)
    routes: list[Spec] = field(default_factory=list)
    clusters: set[str] = field(default_factory=set)  # outbound clusters the routes use
    sni_targets: list[SniTarget] = field(default_factory=list)  # AUTO_PASSTHROUGH destinations
    secrets: set[str] = field(default_factory=set)  # SDS resources of the servers' credentialNames
    errors: list[InvalidResource] = field(default_factory=list)


FileProblem = Callable[[str], str | None]  # a certificate file Envoy could not load: why, else None


class _Builder:
    def __init__(
        self,
        world: World,
        *,
        scope: Scope,
        key: GatewayKey,
        file_problem: FileProblem | None,
        authz: InboundAuthz,
        jwt: JwtProviders,
    ) -> None:
        self.world, self.scope, self.key = world, scope, key
        self.file_problem = file_problem
        self.authz, self.jwt = authz, jwt
        self.out = GatewayConfig()
        if authz.ext_authz_cluster:
            self.out.clusters.add(authz.ext_authz_cluster)
        labels = dict(key.labels)
        self._source_matches: Callable[[dict[str, str]], bool] = lambda wanted: all(
            labels.get(k) == v for k, v in wanted.items()
        )
        self.http = HttpRoutes(world, bindings=self.bindings, match_for=self.match_for, rule_for=scope.destination_rule)
        self._claimed: dict[tuple[str, int], set[str]] = {}

    # -- inputs -------------------------------------------------------------------------------

    def bindings(self, server: GatewayServer) -> Sequence[VirtualService]:
        g = server.gateway.metadata
        return self.world.gateway_bindings.get((g.namespace, g.name), ())

    def match_for(self, server: GatewayServer) -> MatchContext:
        return MatchContext(
            port=server.server.port.number,
            namespace=self.key.namespace,
            source_matches=self._source_matches,
            gateway=server.gateway_name,
        )

    def usable(self, server: GatewayServer) -> tuple[str, str] | None:
        tls = server.server.tls
        if tls is None or not server.server.terminates_tls:
            return None
        for name in sds_secret_names(tls):
            holder, why = source(
                self.world.secrets,
                namespace=self.key.namespace,
                resource=name,
                grants=self.world.gateway_secret_grants,
            )
            if holder is None:
                where = "tls.credentialName" if tls.credential_name else "tls.credentialNames"
                return where, f"{why}: the server is not served (never without its TLS)"
        if self.file_problem is not None:
            for where, path in server_files(tls):
                problem = self.file_problem(path)
                if problem is not None:
                    return where, f"{problem}: the server is not served (Envoy would refuse the listener)"
        self.out.secrets.update(sds_secret_names(tls))
        return None

    def http_filter(self, route_name: str, stat_prefix: str) -> listener_components_pb2.Filter:
        return gl.http_filter(
            route_name=route_name,
            stat_prefix=stat_prefix,
            authz=self.authz,
            jwt=self.jwt,
            trusted_hops=self.key.trusted_hops,
        )

    # -- ports ----------------------------------------------------------------------------------

    def build(self, gateways: Sequence[Gateway]) -> GatewayConfig:
        ports, errors = plan_ports(gateways, usable=self.usable, listen=dict(self.key.port_map))
        self.out.errors += errors
        for plan in ports:
            address = plan.bind or self.key.address
            if plan.kind == "http":
                chains = self._http_port(plan)
            else:
                chains = self._tls_port(plan) if plan.kind == "tls" else self._tcp_chains(plan.servers[0], tls=None)
            if chains:
                build = partial(
                    gl.listener, address=address, port=plan.number, chains=chains, inspect_tls=plan.kind == "tls"
                )
                self.out.listeners.append(Spec(gl.listener_name(address, plan.number), None, build))
        self.out.errors += self.http.errors
        return self.out

    def _routes(self, name: str, servers: Sequence[GatewayServer], port: int) -> None:
        config = route_configuration(name, self.http.vhosts(servers), port=port)
        self.out.clusters |= used_clusters(config)
        self.out.routes.append(Spec(name, None, partial(_same, config)))

    def _http_port(self, plan: PortPlan) -> list[listener_components_pb2.FilterChain]:
        name = http_route_name(plan.servers[0], listen=plan.number)
        self._routes(name, plan.servers, plan.number)
        stat = f"outbound_{plan.bind or self.key.address}_{plan.number}"
        return [gl.chain(f"http_{plan.number}", self.http_filter(name, stat))]

    def _claim(self, plan: PortPlan, server: GatewayServer, names: Sequence[str], where: str) -> list[str]:
        """The SNIs of a new chain that no earlier chain of the port has (`*`: no SNI); the others are
        reported. An empty result means the chain is not made."""
        claimed = self._claimed.setdefault((plan.bind, plan.number), set())
        granted = []
        for name in names:
            if name in claimed:
                port = server.server.port.number
                at = f"port {port}" + (f" (listener {plan.number})" if plan.number != port else "")
                message = f"SNI {name} on {at} is already served by another chain: left out"
                self.out.errors.append(server.error(where, message))
            else:
                claimed.add(name)
                granted.append(name)
        return granted

    def _tls_port(self, plan: PortPlan) -> list[listener_components_pb2.FilterChain]:
        chains: list[listener_components_pb2.FilterChain] = []
        for server in plan.servers:
            s = server.server
            if s.terminates_tls:
                assert s.tls is not None
                granted = self._claim(plan, server, server.hosts, "hosts")
                context = downstream_tls(s.tls, http=s.serves_http, sds=self.key.sds)
                if not granted or context is None:
                    continue  # (ISTIO_MUTUAL without the agent's certificate: not served, closed)
                snis = [] if "*" in granted else granted
                chain_name = f"{server.gateway_name}/{server.index}"
                if s.serves_http:
                    name = http_route_name(server, listen=plan.number)
                    self._routes(name, [_only(server, granted)], plan.number)
                    stat = f"outbound_{plan.bind or self.key.address}_{plan.number}"
                    chains.append(
                        gl.chain(
                            chain_name,
                            self.http_filter(name, stat),
                            server_names=snis,
                            tls=context,
                        )
                    )
                else:
                    chains += self._tcp_chains(server, tls=context, server_names=snis, prefix=chain_name)
            elif s.auto_passthrough:
                chains += self._auto_passthrough(plan, server)
            else:
                chains += self._tls_routes(plan, server)
        return chains

    # -- TCP and TLS routes ------------------------------------------------------------------------

    def _route_context(self, vs: VirtualService, server: GatewayServer) -> RouteContext:
        world = self.world

        def resolve(host: str, namespace: str = vs.metadata.namespace) -> tuple[str, object]:
            fqdn = resolve_host(host, namespace=namespace, domain_suffix=world.domain_suffix)
            return fqdn, world.services.get(fqdn)

        return RouteContext(
            key=vs.key,
            namespace=vs.metadata.namespace,
            resolve=resolve,  # type: ignore[arg-type]
            rule_for=self.scope.destination_rule,
            match=self.match_for(server),
        )

    def _bound(self, server: GatewayServer) -> list[VirtualService]:
        suffix = self.world.domain_suffix
        return [
            vs
            for vs in self.bindings(server)
            if bindable(vs, gateway=server.gateway)
            and next(virtual_hosts(vs, server.server, gateway=server.gateway, domain_suffix=suffix), None) is not None
        ]

    def _l4_clusters(
        self, vs: VirtualService, server: GatewayServer, route: TCPRoute | TLSRoute, field: str
    ) -> list[tuple[str, int]] | None:
        try:
            clusters = route_clusters(self._route_context(vs, server), route, field)
        except InvalidResource as err:
            self.out.errors.append(err)
            return None
        self.out.clusters.update(c for c, _ in clusters)
        return clusters

    def _tcp_chains(
        self,
        server: GatewayServer,
        *,
        tls: tls_pb2.DownstreamTlsContext | None,
        server_names: Sequence[str] = (),
        prefix: str = "",
    ) -> list[listener_components_pb2.FilterChain]:
        """A chain per distinct address match of the TCP routes that apply (the first route wins one)."""
        chains: dict[tuple[tuple[str, ...], str], listener_components_pb2.FilterChain] = {}
        ctx = self.match_for(server)
        for vs in self._bound(server):
            for i, route in enumerate(vs.spec.tcp):
                matches = [m for m in route.match if applies(m, ctx, namespace=vs.metadata.namespace)]
                if route.match and not matches:
                    continue
                keys = [(tuple(m.destination_subnets), m.source_subnet) for m in matches] or [((), "")]
                keys = [k for k in keys if k not in chains]
                if not keys:
                    continue
                clusters = self._l4_clusters(vs, server, route, f"spec.tcp[{i}]")
                if clusters is None:
                    break  # the VirtualService is left out (reported)
                for dest, src in keys:
                    stat = clusters[0][0] if len(clusters) == 1 else f"{server.gateway_name}/{server.index}"
                    chains[(dest, src)] = gl.chain(
                        f"{prefix or server.gateway_name}/tcp/{len(chains)}",
                        tcp_proxy(clusters, stat_prefix=stat),
                        before=self.authz.network_filters,
                        server_names=server_names,
                        tls=tls,
                        destination_ranges=cidr_ranges(dest),
                        source_ranges=cidr_ranges([src] if src else []),
                    )
        return list(chains.values())

    def _tls_routes(self, plan: PortPlan, server: GatewayServer) -> list[listener_components_pb2.FilterChain]:
        chains: list[listener_components_pb2.FilterChain] = []
        ctx = self.match_for(server)
        for vs in self._bound(server):
            for i, route in enumerate(vs.spec.tls):
                for match in route.match:
                    if not applies(match, ctx, namespace=vs.metadata.namespace):
                        continue
                    snis = list(
                        dict.fromkeys(m for h in match.sni_hosts for s in server.hosts if (m := intersect(s, h)))
                    )
                    if not snis:
                        continue
                    granted = self._claim(plan, server, snis, "hosts")
                    if not granted:
                        continue
                    clusters = self._l4_clusters(vs, server, route, f"spec.tls[{i}]")
                    if clusters is None:
                        return chains
                    stat = clusters[0][0] if len(clusters) == 1 else f"{vs.metadata.namespace}/{vs.metadata.name}"
                    chains.append(
                        gl.chain(
                            f"{server.gateway_name}/{server.index}/tls/{len(chains)}",
                            tcp_proxy(clusters, stat_prefix=stat),
                            before=self.authz.network_filters,
                            server_names=[] if "*" in granted else granted,
                            destination_ranges=cidr_ranges(match.destination_subnets),
                        )
                    )
        return chains

    def _auto_passthrough(self, plan: PortPlan, server: GatewayServer) -> list[listener_components_pb2.FilterChain]:
        chains = []
        for name, target in sni_targets(self.scope, server.hosts):
            if not self._claim(plan, server, [name], "hosts"):
                continue
            self.out.sni_targets.append(target)
            chains.append(
                gl.chain(
                    name,
                    tcp_proxy([(name, 1)], stat_prefix=name),
                    server_names=[name],
                    before=self.authz.network_filters,
                )
            )
        return chains


def _same(message: object) -> object:
    return message


def _only(server: GatewayServer, hosts: Sequence[str]) -> GatewayServer:
    """The server as far as the hosts it was granted (a host another chain took is not routed here)."""
    if list(hosts) == server.hosts:
        return server
    return _Granted(server.gateway, server.index, server.server, tuple(hosts))


@dataclass(frozen=True)
class _Granted(GatewayServer):
    granted: tuple[str, ...] = ()

    @property
    def hosts(self) -> list[str]:
        return list(self.granted)


def build_gateway(
    world: World,
    *,
    gateways: Sequence[Gateway],
    scope: Scope,
    key: GatewayKey,
    file_problem: FileProblem | None = None,
    authz: InboundAuthz = NO_AUTHZ,
    jwt: JwtProviders = (),
) -> GatewayConfig:
    """The configuration of a gateway workload `key` selected by `gateways` (oldest first), with its
    RequestAuthentications (`jwt`) and AuthorizationPolicies (`authz`) on every listener."""
    builder = _Builder(world, scope=scope, key=key, file_problem=file_problem, authz=authz, jwt=jwt)
    return builder.build(gateways)
