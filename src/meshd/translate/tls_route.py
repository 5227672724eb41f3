"""VirtualService `tls` routes -> L4 chains of a TLS port (TLS the proxy does not terminate, routed by
the ClientHello's SNI, read by the listener's tls_inspector): each applicable match becomes a chain
matching its `sniHosts` (Envoy's `server_names`, `*.example.com` wildcards included; `*` any name), its
`destinationSubnets` (else the routed service's addresses) and `sourceSubnet`, sending to the route's weighted
destinations. Among chains that match the same way, the first (the first matching route) wins."""

from __future__ import annotations

from collections.abc import Sequence

from meshd.api.l4route import TLSRoute
from meshd.translate.l4_chain import L4Chain
from meshd.translate.l4_route import L4Context, route_chain, sni_names, sources, subnets


def tls_route_chains(*, ctx: L4Context, routes: Sequence[TLSRoute], field: str = "spec.tls") -> list[L4Chain]:
    """The chains of the routes that apply (in route order; duplicates are the caller's to drop)."""
    out: list[L4Chain] = []
    for i, route in enumerate(routes):
        where = f"{field}[{i}].route"
        for match in route.match:
            if ctx.applies(match):
                chain = route_chain(
                    ctx,
                    route.route,
                    where,
                    server_names=sni_names(match),
                    prefix_ranges=subnets(match, ctx),
                    source_ranges=sources(match),
                )
                out.append(chain)
    return out
