"""Where a route's hostnames meet a listener's hostname (Gateway API rules): a listener without hostname takes
every route hostname; a route without hostnames takes the listener's; `*.example.com` matches any name with at
least one more label (`a.example.com`, `a.b.example.com`), never `example.com`."""

from __future__ import annotations


def _covers(pattern: str, name: str) -> bool:
    if pattern.startswith("*."):
        return name.endswith(pattern[1:]) and len(name) > len(pattern) - 1
    return pattern == name


def meet(route_host: str, listener_host: str) -> str | None:
    """The hostname both match (the more specific one), or None."""
    if route_host == listener_host:
        return route_host
    if (
        listener_host.startswith("*.")
        and _covers(listener_host, route_host.removeprefix("*."))
        and (not route_host.startswith("*."))
    ):
        return route_host
    if route_host.startswith("*.") and not listener_host.startswith("*.") and _covers(route_host, listener_host):
        return listener_host
    if route_host.startswith("*.") and listener_host.startswith("*."):
        a, b = route_host[1:], listener_host[1:]
        if a.endswith(b):
            return route_host
        if b.endswith(a):
            return listener_host
    return None


def intersect_hostnames(route_hosts: list[str], listener_host: str) -> list[str]:
    """The hostnames a route serves on a listener, once each ("*": any)."""
    if not route_hosts:
        return [listener_host or "*"]
    if not listener_host:
        return list(dict.fromkeys(route_hosts))
    out = [met for host in route_hosts if (met := meet(host, listener_host)) is not None]
    return list(dict.fromkeys(out))
