"""The servers of every Gateway that selects a gateway workload, merged per listening address and port,
as one proxy serves them.

Servers of different kinds cannot share a port (an HTTP server and a TLS server on 443 of the same
proxy): the older Gateway's server keeps the port, the other is left out and reported. At most one
TCP server per port (TCP has no host to tell them apart). HTTP servers share a port: their hosts
become virtual hosts of one route configuration (a host two servers claim is reported as a warning,
their routes are merged, as Istio serves them). TLS servers share a port by SNI; which server gets a
host two of them claim is decided when their filter chains are made (`listeners.py`). A server whose
certificate cannot be had (a missing Secret or file) is left out (its port does not serve plaintext
instead) and reported with the field.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from meshd.api.gateway import Gateway, Server
from meshd.api.meta import InvalidResource, ResourceKey
from meshd.translate.gateway.hosts import dns_names
from meshd.translate.gateway.select import gateway_name


@dataclass(frozen=True)
class GatewayServer:
    """One server of one Gateway, as served on a proxy."""

    gateway: Gateway
    index: int
    server: Server

    @property
    def key(self) -> ResourceKey:
        return self.gateway.key

    @property
    def field(self) -> str:
        return f"spec.servers[{self.index}]"

    @property
    def gateway_name(self) -> str:
        return gateway_name(self.gateway)

    @property
    def hosts(self) -> list[str]:
        return dns_names(self.server)

    def error(self, where: str, message: str, *, severity: str = "error") -> InvalidResource:
        return InvalidResource(self.key, f"{self.field}.{where}" if where else self.field, message, severity=severity)


@dataclass
class PortPlan:
    """The servers one listener serves: (bind address or "", the port it listens on), their kind."""

    bind: str
    number: int  # the listener's port (a server's port, or the targetPort it maps to)
    kind: str  # "http" | "tls" | "tcp"
    servers: list[GatewayServer] = field(default_factory=list)


# Why a server cannot be served here: (field under the server, message), or None
Usable = Callable[[GatewayServer], tuple[str, str] | None]


def plan_ports(
    gateways: Iterable[Gateway], *, usable: Usable, listen: Mapping[int, int] | None = None
) -> tuple[list[PortPlan], list[InvalidResource]]:
    """Per (bind, listener port) the servers served, in Gateway age then server order; and the conflicts.
    `listen`: server port -> the port the proxy listens on (the targetPort of the gateway workload's
    Service of that port, as Istio maps it: a Gateway on 80 served by a pod listening on 8080)."""
    ports_of = listen or {}
    ports: dict[tuple[str, int], PortPlan] = {}
    errors: list[InvalidResource] = []
    http_hosts: dict[tuple[str, int, str], GatewayServer] = {}
    for gateway in gateways:
        for index, server in enumerate(gateway.spec.servers):
            bound = GatewayServer(gateway, index, server)
            at = (server.bind, ports_of.get(server.port.number, server.port.number))
            plan = ports.get(at)
            if plan is not None and plan.kind != server.port.kind:
                first = plan.servers[0] if plan.servers else None
                holder = f" by {first.gateway_name} {first.field}" if first else ""
                errors.append(
                    bound.error(
                        "port",
                        f"port {server.port.number} is already a {plan.kind} port{holder} on the workloads both"
                        f" select: this {server.protocol} server is left out",
                    )
                )
                continue
            if plan is not None and plan.kind == "tcp" and plan.servers:
                first = plan.servers[0]
                errors.append(
                    bound.error(
                        "port",
                        f"port {server.port.number} already carries the TCP server {first.gateway_name} {first.field}"
                        " (TCP has no host to tell servers apart): left out",
                    )
                )
                continue
            problem = usable(bound)
            if problem is not None:
                errors.append(bound.error(*problem))
                continue
            if plan is None:
                plan = ports[at] = PortPlan(server.bind, at[1], server.port.kind)
            if plan.kind == "http":
                for host in bound.hosts:
                    other = http_hosts.setdefault((server.bind, server.port.number, host), bound)
                    if other is not bound and other.gateway is not gateway:
                        errors.append(
                            bound.error(
                                "hosts",
                                f"{host} on port {server.port.number} is also served by {other.gateway_name}"
                                f" {other.field}: their routes are merged",
                                severity="warning",
                            )
                        )
            plan.servers.append(bound)
    return sorted(ports.values(), key=lambda p: (p.number, p.bind)), errors
