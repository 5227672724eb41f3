"""Route configurations of a gateway proxy, named as Istio names them: `http.<port>` for the plain HTTP
servers of a port (all of them share it; the port the listener listens on),
`https.<port>.<port name>.<gateway>.<namespace>` for each HTTPS server whose TLS the gateway terminates
(`.<bind>` appended when the server binds an address).

A virtual host per host where a bound VirtualService meets the server (`hosts.py`), named
`<host>:<port>`, matching the host with or without a port; the http routes of every VirtualService
that gives that host, oldest first (at gateways, Istio merges VirtualServices of one host). A
VirtualService whose routes cannot be honoured (undefined subset, missing port) is left out and
reported. `httpsRedirect`: the server's virtual hosts require TLS (Envoy answers 301 to https), and
each server host gets one even without a VirtualService. A port with no virtual host answers 404.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from envoy.config.route.v3 import route_components_pb2 as rc
from envoy.config.route.v3 import route_pb2

from meshd.api.destinationrule import DestinationRule
from meshd.api.meta import InvalidResource
from meshd.api.virtualservice import VirtualService
from meshd.model.world import World
from meshd.translate.gateway.hosts import bindable, virtual_hosts
from meshd.translate.gateway.plan import GatewayServer
from meshd.translate.http_match import MatchContext
from meshd.translate.routes import virtual_service_routes


def http_route_name(server: GatewayServer, *, listen: int) -> str:
    """Istio's RDS name for a server's routes (`listen`: the port its listener listens on)."""
    s = server.server
    suffix = f".{s.bind}" if s.bind else ""
    if s.port.kind == "http":
        return f"http.{listen}{suffix}"
    g = server.gateway.metadata
    return f"https.{s.port.number}.{s.port.name}.{g.name}.{g.namespace}{suffix}"


def domains(host: str) -> list[str]:
    """A host with or without any port in the Host header (a wildcard host as it is)."""
    return [host] if "*" in host else [host, f"{host}:*"]


@dataclass
class VhostEntry:
    host: str
    server: GatewayServer
    routes: list[rc.Route] = field(default_factory=list)
    sources: list[VirtualService] = field(default_factory=list)


class HttpRoutes:
    """Builds the routes of bound VirtualServices, each (VirtualService, Gateway, port) once."""

    def __init__(
        self,
        world: World,
        *,
        bindings: Callable[[GatewayServer], Sequence[VirtualService]],
        match_for: Callable[[GatewayServer], MatchContext],
        rule_for: Callable[[str], DestinationRule | None],
    ) -> None:
        self.world = world
        self._bindings = bindings
        self._match_for = match_for
        self._rule_for = rule_for
        self._built: dict[tuple[int, str, int], list[rc.Route] | None] = {}
        self.errors: list[InvalidResource] = []

    def _routes(self, vs: VirtualService, server: GatewayServer) -> list[rc.Route] | None:
        key = (id(vs), server.gateway_name, server.server.port.number)
        if key not in self._built:
            try:
                self._built[key] = virtual_service_routes(self.world, vs, self._match_for(server), self._rule_for)
            except InvalidResource as err:
                self.errors.append(err)
                self._built[key] = None
        return self._built[key]

    def vhosts(self, servers: Sequence[GatewayServer]) -> list[VhostEntry]:
        """The virtual hosts of these servers (one route configuration), in order of first appearance."""
        entries: dict[str, VhostEntry] = {}
        suffix = self.world.domain_suffix
        for server in servers:
            allowed = server.hosts
            for vs in self._bindings(server):
                if not vs.spec.http or not bindable(vs, gateway=server.gateway):
                    continue
                hosts = list(
                    virtual_hosts(vs, server.server, gateway=server.gateway, domain_suffix=suffix, allowed=allowed)
                )
                if not hosts:
                    continue
                routes = self._routes(vs, server)
                if routes is None:
                    continue
                for host in hosts:
                    entry = entries.setdefault(host, VhostEntry(host, server))
                    if all(vs is not seen for seen in entry.sources):
                        entry.sources.append(vs)
                        entry.routes += routes
            tls = server.server.tls
            if tls is not None and tls.https_redirect:
                for host in allowed:
                    entries.setdefault(host, VhostEntry(host, server))
        return list(entries.values())


def _vhost(entry: VhostEntry, port: int) -> rc.VirtualHost:
    vhost = rc.VirtualHost(name=f"{entry.host}:{port}", domains=domains(entry.host), routes=entry.routes)
    tls = entry.server.server.tls
    if tls is not None and tls.https_redirect:
        vhost.require_tls = rc.VirtualHost.ALL
    return vhost


def blackhole(port: int) -> rc.VirtualHost:
    """Istio's virtual host of a port nothing is bound to: every request gets a 404."""
    route = rc.Route(
        name="default", match=rc.RouteMatch(prefix="/"), direct_response=rc.DirectResponseAction(status=404)
    )
    return rc.VirtualHost(name=f"blackhole:{port}", domains=["*"], routes=[route])


def route_configuration(name: str, entries: Sequence[VhostEntry], *, port: int) -> route_pb2.RouteConfiguration:
    config = route_pb2.RouteConfiguration(name=name)
    config.virtual_hosts.extend(_vhost(e, port) for e in entries)
    if not entries:
        config.virtual_hosts.append(blackhole(port))
    config.validate_clusters.value = False
    return config


def used_clusters(config: route_pb2.RouteConfiguration) -> set[str]:
    """Every cluster a route configuration sends or mirrors to."""
    out: set[str] = set()
    for vhost in config.virtual_hosts:
        for route in vhost.routes:
            if not route.HasField("route"):
                continue
            action = route.route
            if action.cluster:
                out.add(action.cluster)
            out.update(c.name for c in action.weighted_clusters.clusters)
            out.update(m.cluster for m in action.request_mirror_policies)
    return out
