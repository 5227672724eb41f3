"""Where a Gateway server's hosts and a bound VirtualService's hosts meet, as Istio decides it.

A server host is `[namespace/]dnsName`: the namespace part (`*` any, `.` the Gateway's own, or a name)
says whose VirtualServices may bind to it; the DNS name, possibly a wildcard (`*`, `*.example.com`),
says which of their hosts it serves. A VirtualService host and a server host intersect when one
covers the other; the virtual host is the more specific of the two (server `*.example.com` and
VirtualService `shop.example.com` give `shop.example.com`, and the other way round too). Only
VirtualServices exported to the Gateway's namespace bind to it.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from meshd.api.gateway import Gateway, Server, split_host
from meshd.api.networking import exported_to
from meshd.api.virtualservice import VirtualService
from meshd.model.derive import resolve_host


def covers(pattern: str, host: str) -> bool:
    """Whether `host` (possibly a wildcard itself) lies within `pattern`."""
    pattern, host = pattern.lower(), host.lower()
    if pattern == "*":
        return True
    if pattern.startswith("*."):
        suffix = pattern[1:]
        return host[1:].endswith(suffix) if host.startswith("*.") else host.endswith(suffix)
    return pattern == host


def intersect(a: str, b: str) -> str | None:
    """The more specific of two hosts when one covers the other, else None."""
    if covers(a, b):
        return b
    if covers(b, a):
        return a
    return None


def server_names(server: Server, *, gateway: Gateway) -> list[tuple[str, str]]:
    """(namespace the VirtualService must be in, or '*'; DNS name) per server host."""
    out = []
    for host in server.hosts:
        namespace, name = split_host(host)
        out.append((gateway.metadata.namespace if namespace == "." else namespace, name))
    return out


def dns_names(server: Server) -> list[str]:
    """The server's DNS names without their namespace part, in order, once each."""
    return list(dict.fromkeys(split_host(h)[1] for h in server.hosts))


def bindable(vs: VirtualService, *, gateway: Gateway) -> bool:
    """Bound VirtualServices take part only when exported to the Gateway's namespace."""
    return exported_to(vs.spec.export_to, owner_namespace=vs.metadata.namespace, namespace=gateway.metadata.namespace)


def virtual_hosts(
    vs: VirtualService, server: Server, *, gateway: Gateway, domain_suffix: str, allowed: Sequence[str] | None = None
) -> Iterator[str]:
    """The hosts a bound VirtualService gives this server (its hosts met with the server's), once each.
    `allowed`: the server's DNS names still served (the others lost a conflict)."""
    namespace = vs.metadata.namespace
    seen: set[str] = set()
    for vs_host in vs.spec.hosts:
        host = resolve_host(vs_host, namespace=namespace, domain_suffix=domain_suffix)
        for ns, name in server_names(server, gateway=gateway):
            if ns not in ("*", namespace) or (allowed is not None and name not in allowed):
                continue
            met = intersect(name, host)
            if met is not None and met not in seen:
                seen.add(met)
                yield met
