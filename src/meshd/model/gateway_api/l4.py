"""TCPRoute and TLSRoute rules as VirtualService tcp / tls routes (the routes a VirtualService bound to the
listener's Istio Gateway would have), and their order among the routes of one listener and hostname.

- TCPRoute (TCP listeners, TLS listeners that terminate): one tcp route matching the listener's port;
  TLSRoute (TLS Passthrough listeners): one tls route matching the listener's port and the SNI `hostname`
  (the route's hostnames met with the listener's; a wildcard as Envoy's server_names take it).
- backendRefs -> weighted destinations `<name>.<namespace>.svc.<domain>:<port>` (relative weights, as the
  Gateway API and VirtualServices both take them); a backend that is not usable (not found, not permitted,
  not a Service) and a zero weight carry no connection. A route left without a usable backend adds no route:
  its connections are refused, as the specification asks.
- Order: the older route first, then namespace/name (a later route for the same port and SNI is shadowed).
"""

from __future__ import annotations

from typing import Any

from meshd.api.gateway_l4route import KubernetesTCPRoute, KubernetesTLSRoute
from meshd.model.gateway_api.http import BackendCheck

L4Order = tuple[str, str, str]  # creationTimestamp, namespace, name


def l4_route(
    route: KubernetesTCPRoute | KubernetesTLSRoute,
    *,
    port: int,
    host: str,
    domain_suffix: str,
    backend_problem: BackendCheck,
) -> tuple[L4Order, str, dict[str, Any]] | None:
    """(order, "tcp" | "tls", VirtualService route) of a route attached to a listener of `port` for the SNI
    `host` (TLSRoute), or None when no backend of the route can take a connection."""
    meta = route.metadata
    destinations = []
    for ref in route.spec.rules[0].backend_refs:
        namespace = ref.namespace or meta.namespace
        if ref.weight == 0 or backend_problem(ref.group, ref.kind, namespace, ref.name, ref.port) is not None:
            continue
        destinations.append(
            {
                "destination": {"host": f"{ref.name}.{namespace}.svc.{domain_suffix}", "port": {"number": ref.port}},
                "weight": ref.weight,
            }
        )
    if not destinations:
        return None
    if len(destinations) == 1:
        del destinations[0]["weight"]
    order = (meta.creation_timestamp, meta.namespace, meta.name)
    if isinstance(route, KubernetesTLSRoute):
        return order, "tls", {"match": [{"sniHosts": [host], "port": port}], "route": destinations}
    return order, "tcp", {"match": [{"port": port}], "route": destinations}
