"""xDS resource names, following Istio: `outbound|<port>|<subset>|<host>`, `inbound|<port>||`,
route configurations named by port, listeners named `<ip>_<port>`."""

from __future__ import annotations

from meshd.model.services import MeshService

VIRTUAL_INBOUND = "virtualInbound"
PASSTHROUGH = "PassthroughCluster"  # a captured connection to a destination the mesh does not know
BLACKHOLE = "BlackHoleCluster"  # no endpoints: every connection fails at once
INBOUND_PASSTHROUGH = "InboundPassthroughCluster"  # a captured inbound connection to an undeclared port
ANY_ADDRESS = "0.0.0.0"


def outbound_cluster(*, port: int, host: str, subset: str = "") -> str:
    return f"outbound|{port}|{subset}|{host}"


def inbound_cluster(*, port: int | str) -> str:
    return f"inbound|{port}||"


def route_config(*, port: int) -> str:
    return str(port)


def outbound_listener(*, ip: str, port: int) -> str:
    return f"{ip}_{port}"


def service_domains(service: MeshService, *, port: int, proxy_namespace: str) -> list[str]:
    """Host names a client may use for a service: FQDN, name.namespace(.svc), the short name
    from its own namespace, and the addresses, each with and without the port."""
    names = [service.hostname]
    suffix = f".{service.namespace}.svc."
    if suffix in service.hostname:
        short = service.hostname.split(".", 1)[0]
        names += [f"{short}.{service.namespace}", f"{short}.{service.namespace}.svc"]
        if proxy_namespace == service.namespace:
            names.append(short)
    names += [a for a in map(host_address, service.addresses) if a is not None]
    out: list[str] = []
    for name in names:
        out += [name, f"{name}:{port}"]
    return out


def host_address(address: str) -> str | None:
    """A service address as a Host a client may send: an IP (a /32 or /128 range as its IP); None for a
    wider CIDR range (no single Host names it)."""
    ip, slash, bits = address.partition("/")
    if not slash:
        return address
    return ip if bits in ("32", "128") else None
