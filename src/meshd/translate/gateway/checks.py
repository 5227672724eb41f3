"""Gateway mistakes that do not depend on which workload serves the Gateway, reported once per World:

- a VirtualService bound (top-level or match-level `gateways`) to a Gateway that does not exist;
- a bound VirtualService whose routes cannot apply on the servers its hosts meet (http routes on a
  TLS-passthrough or TCP server, tls routes where no server passes TLS through, tcp routes where no
  server carries TCP) or whose hosts meet no server of the Gateway;
- a Gateway whose selector matches no workload (pod or WorkloadEntry).
They are warnings: what can be served still is.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping

from meshd.api.gateway import Gateway
from meshd.api.meta import InvalidResource
from meshd.api.virtualservice import VirtualService
from meshd.model.derive import MESH, gateway_reference
from meshd.model.services import Workload
from meshd.model.world import World
from meshd.translate.gateway.hosts import bindable, virtual_hosts
from meshd.translate.gateway.select import selects


def _warning(vs: VirtualService, field: str, message: str) -> InvalidResource:
    return InvalidResource(vs.key, field, message, severity="warning")


def _match_gateways(vs: VirtualService) -> Iterator[tuple[str, str]]:
    spec = vs.spec
    named: list[tuple[str, int, int, list[str]]] = []
    for kind, routes in (("http", spec.http), ("tcp", spec.tcp), ("tls", spec.tls)):
        for i, route in enumerate(routes):
            named += [(kind, i, j, m.gateways) for j, m in enumerate(route.match)]  # type: ignore[attr-defined]
    for kind, i, j, gateways in named:
        for k, name in enumerate(gateways):
            yield f"spec.{kind}[{i}].match[{j}].gateways[{k}]", name


def reference_errors(world: World) -> list[InvalidResource]:
    """Gateway names (top-level or in matches) that name no Gateway."""
    out = []
    for vs in world.virtual_services_by_name.values():
        named = [(f"spec.gateways[{i}]", n) for i, n in enumerate(vs.spec.gateways)] + list(_match_gateways(vs))
        for field, name in named:
            if name == MESH:
                continue
            ns, gw = gateway_reference(name, namespace=vs.metadata.namespace)
            if (ns, gw) not in world.gateways:
                out.append(_warning(vs, field, f"Gateway {ns}/{gw} does not exist: nothing is bound to it"))
    return out


def binding_errors(world: World, gateway: Gateway, bound: Iterable[VirtualService]) -> list[InvalidResource]:
    """Bound VirtualServices whose hosts meet no server, or whose routes fit none of the servers met."""
    out = []
    suffix = world.domain_suffix
    name = f"{gateway.metadata.namespace}/{gateway.metadata.name}"
    for vs in bound:
        if not bindable(vs, gateway=gateway):
            continue
        met = [
            s
            for s in gateway.spec.servers
            if next(virtual_hosts(vs, s, gateway=gateway, domain_suffix=suffix), None) is not None
        ]
        if not met:
            out.append(
                _warning(vs, "spec.hosts", f"no host meets a server host of Gateway {name}: nothing is served there")
            )
            continue
        for field, used, fits, what in (
            ("spec.http", vs.spec.http, any(s.serves_http for s in met), "terminates no HTTP (TLS passthrough or TCP)"),
            (
                "spec.tls",
                vs.spec.tls,
                any(s.passthrough for s in met),
                "passes no TLS through (tls routes need mode PASSTHROUGH)",
            ),
            (
                "spec.tcp",
                vs.spec.tcp,
                any(s.serves_tcp for s in met),
                "carries no TCP (protocol TCP, or TLS terminated)",
            ),
        ):
            if used and not fits:
                ports = ", ".join(str(s.port.number) for s in met)
                out.append(
                    _warning(vs, field, f"Gateway {name} on port {ports} {what}: these routes do not apply there")
                )
    return out


def selector_errors(
    world: World, *, workloads: Mapping[str, Workload], scope_to_namespace: bool
) -> list[InvalidResource]:
    """Gateways no workload is selected by (Istio's analysers say the same)."""
    out: list[InvalidResource] = []
    if not world.gateways:
        return out
    groups = {(w.namespace, w.labels) for w in workloads.values()}
    for gateway in world.gateways.values():
        if not any(
            selects(gateway, namespace=ns, labels=dict(labels), scope_to_namespace=scope_to_namespace)
            for ns, labels in groups
        ):
            where = " in its namespace" if scope_to_namespace else ""
            labels = dict(gateway.spec.selector)
            out.append(
                InvalidResource(
                    gateway.key,
                    "spec.selector",
                    f"no workload{where} carries the labels {labels}: no proxy serves this Gateway",
                    severity="warning",
                )
            )
    return out
