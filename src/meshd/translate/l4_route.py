"""What translating a VirtualService's TCP or TLS routes into L4 chains needs, shared by
`translate/tcp_route.py` and `translate/tls_route.py`: the context (listener port, which matches apply
to the proxy, the destination ranges a match without `destinationSubnets` stands for), weighted
destinations as clusters, and the per-destination policy a chain carries (DestinationRule tcp
idleTimeout and tunnel).

A reference the route cannot honour (undefined subset, port not on the service, destinations whose
tunnels differ) raises InvalidResource naming the VirtualService and field.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from meshd.api.destinationrule import DestinationRule
from meshd.api.l4route import L4MatchAttributes, RouteDestination, TLSMatchAttributes, effective_weights
from meshd.api.meta import InvalidResource, ResourceKey
from meshd.api.virtualservice import VirtualService
from meshd.model.services import MeshService
from meshd.translate.http_match import MESH_GATEWAY, MatchContext
from meshd.translate.http_route import RouteContext, destination_cluster
from meshd.translate.l4_chain import L4Chain, Tunnel, normalise_cidr, tunnel_of
from meshd.translate.policy import effective_policy

L4Match = L4MatchAttributes | TLSMatchAttributes


@dataclass(frozen=True)
class L4Context:
    """Where the TCP/TLS routes of one VirtualService are translated."""

    key: ResourceKey  # the VirtualService (errors name it)
    namespace: str  # where its short destination hosts resolve
    port: int  # the listener's port
    resolve: Callable[[str], tuple[str, MeshService | None]]  # host -> (FQDN, service if known)
    rule_for: Callable[[str], DestinationRule | None]
    applies: Callable[[L4Match], bool]  # whether a match exists for this proxy and port
    # the destination ranges a match without destinationSubnets stands for (the routed service's addresses,
    # where the listener tells services apart by address), normalised
    addresses: tuple[str, ...] = ()


def sidecar_applies(
    vs: VirtualService, *, port: int, namespace: str, source_matches: Callable[[dict[str, str]], bool]
) -> Callable[[L4Match], bool]:
    """Istio's rules for a sidecar: the match's port (if any) is the listener's; its gateways (else the
    VirtualService's, else `mesh`) include `mesh`; sourceNamespace and sourceLabels are the proxy's."""
    vs_gateways = vs.spec.gateways or [MESH_GATEWAY]

    def applies(match: L4Match) -> bool:
        if match.port is not None and match.port != port:
            return False
        if MESH_GATEWAY not in (match.gateways or vs_gateways):
            return False
        if match.source_namespace and match.source_namespace != namespace:
            return False
        return not match.source_labels or source_matches(match.source_labels)

    return applies


def validating(_: L4Match) -> bool:
    """Every match applies: references are checked whichever proxies would see them."""
    return True


def subnets(match: L4Match | None, ctx: L4Context) -> tuple[str, ...]:
    if match is not None and match.destination_subnets:
        return tuple(normalise_cidr(s) for s in match.destination_subnets)
    return ctx.addresses


def chain_policy(rule_for: Callable[[str], DestinationRule | None], cluster: str) -> tuple[str | None, Tunnel | None]:
    """(tcp idleTimeout, tunnel) the DestinationRule of `outbound|port|subset|host` sets."""
    _, port, subset, host = cluster.split("|", 3)
    policy = effective_policy(rule_for(host), port=int(port), subset=subset)
    pool = policy.connection_pool
    idle = pool.tcp.idle_timeout if pool is not None and pool.tcp is not None else None
    return idle, tunnel_of(policy.tunnel)


def route_chain(
    ctx: L4Context,
    route: Sequence[RouteDestination],
    field: str,
    *,
    server_names: tuple[str, ...] = (),
    prefix_ranges: tuple[str, ...] = (),
) -> L4Chain:
    """A chain sending to the route's weighted destinations (zero weights left out)."""
    rctx = RouteContext(
        key=ctx.key,
        namespace=ctx.namespace,
        resolve=ctx.resolve,
        rule_for=ctx.rule_for,
        match=MatchContext(port=ctx.port, namespace=ctx.namespace, source_matches=lambda _: True),
    )
    clusters = [
        (destination_cluster(rctx, d.destination, f"{field}[{i}].destination"), weight)
        for i, (d, weight) in enumerate(zip(route, effective_weights(route), strict=True))
    ]
    kept = tuple((c, w) for c, w in clusters if w > 0)
    policies = {chain_policy(ctx.rule_for, c) for c, _ in kept}
    tunnels = {tunnel for _, tunnel in policies}
    if len(tunnels) > 1:
        raise InvalidResource(
            ctx.key, field, "weighted destinations whose DestinationRules set different tunnels cannot share a route"
        )
    idle, tunnel = chain_policy(ctx.rule_for, kept[0][0])
    return L4Chain(
        name=kept[0][0] if len(kept) == 1 else f"{ctx.key.namespace}/{ctx.key.name}.{field}",
        clusters=kept,
        server_names=server_names,
        prefix_ranges=prefix_ranges,
        idle_timeout=idle,
        tunnel=tunnel,
    )
