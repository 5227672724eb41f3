"""VirtualService `tcp` routes -> L4 chains of a TCP port, as Istio builds them for a listener: each
applicable match becomes a chain matching its `destinationSubnets` (else the routed service's
addresses) and its `sourceSubnet` (the connection's source address) and sending to the route's weighted
destinations; a route without matches takes every connection, so the routes after it are never reached.
Among chains that match the same way, the first (the first matching route) wins."""

from __future__ import annotations

from collections.abc import Sequence

from meshd.api.l4route import TCPRoute
from meshd.translate.l4_chain import L4Chain
from meshd.translate.l4_route import L4Context, route_chain, sources, subnets


def tcp_route_chains(*, ctx: L4Context, routes: Sequence[TCPRoute], field: str = "spec.tcp") -> list[L4Chain]:
    """The chains of the routes that apply (in route order; duplicates are the caller's to drop)."""
    out: list[L4Chain] = []
    for i, route in enumerate(routes):
        where = f"{field}[{i}].route"
        if not route.match:
            out.append(route_chain(ctx, route.route, where, prefix_ranges=subnets(None, ctx)))
            break  # every connection matches: later routes are never reached
        for match in route.match:
            if ctx.applies(match):
                chain = route_chain(
                    ctx, route.route, where, prefix_ranges=subnets(match, ctx), source_ranges=sources(match)
                )
                out.append(chain)
    return out
