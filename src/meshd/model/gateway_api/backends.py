"""A route's references to Services (pure): the problem of a backend reference (InvalidKind, RefNotPermitted without
a ReferenceGrant, BackendNotFound), the route's ResolvedRefs condition, and the Services routes name (what the
conversion needs to know of the cluster's Services)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from meshd.api.gateway_l4route import KubernetesTCPRoute, KubernetesTLSRoute, L4RouteRule
from meshd.api.grpcroute import GRPCRoute, GRPCRouteFilter, GRPCRouteRule
from meshd.api.httproute import BackendObjectReference, HTTPRoute, RouteFilter, RouteRule
from meshd.model.gateway_api.conditions import Condition, cond
from meshd.model.gateway_api.grants import Grants
from meshd.model.gateway_api.mesh import is_service_parent

ServiceIds = Mapping[tuple[str, str], frozenset[int]]  # (namespace, name) of a Kubernetes Service -> its ports
AnyRoute = HTTPRoute | GRPCRoute | KubernetesTCPRoute | KubernetesTLSRoute


def backend_problem(route: AnyRoute, *, grants: Grants, services: ServiceIds) -> Any:
    def problem(group: str, kind: str, namespace: str, name: str, port: int | None) -> tuple[str, str] | None:
        if group not in ("", "core") or kind != "Service":
            return "InvalidKind", f"backend {group or 'core'}/{kind} {name}: only Services are supported"
        if namespace != route.metadata.namespace and not grants.allows(
            from_kind=route.kind,
            from_namespace=route.metadata.namespace,
            to_kind="Service",
            to_namespace=namespace,
            name=name,
        ):
            return "RefNotPermitted", f"backend Service {namespace}/{name}: no ReferenceGrant in {namespace} allows it"
        if (namespace, name) not in services:
            return "BackendNotFound", f"backend Service {namespace}/{name} does not exist"
        if port is None or port not in services[(namespace, name)]:
            return "BackendNotFound", f"backend Service {namespace}/{name} has no port {port}"
        return None

    return problem


def resolved_refs(route: AnyRoute, *, grants: Grants, services: ServiceIds) -> tuple[Condition, str]:
    """The route's ResolvedRefs condition and the field of its first unresolved reference ("" if none)."""
    problem = backend_problem(route, grants=grants, services=services)
    ns = route.metadata.namespace
    rules: Sequence[RouteRule | GRPCRouteRule | L4RouteRule] = route.spec.rules
    for r, rule in enumerate(rules):
        refs: list[tuple[str, BackendObjectReference]] = [
            (f"backendRefs[{b}]", ref) for b, ref in enumerate(rule.backend_refs)
        ]
        if isinstance(rule, (RouteRule, GRPCRouteRule)):
            filters: Sequence[RouteFilter | GRPCRouteFilter] = rule.filters
            refs += [
                (f"filters[{f}].requestMirror.backendRef", flt.request_mirror.backend_ref)
                for f, flt in enumerate(filters)
                if flt.request_mirror is not None
            ]
        for where, ref in refs:
            found = problem(ref.group, ref.kind, ref.namespace or ns, ref.name, ref.port)
            if found is not None:
                return cond("ResolvedRefs", False, *found), f"spec.rules[{r}].{where}"
    return cond("ResolvedRefs", True, "ResolvedRefs", "references resolved"), ""


def named_services(routes: Iterable[AnyRoute]) -> set[tuple[str, str]]:
    """The Services routes name: as parents (mesh routing), backends and mirrors."""
    out: set[tuple[str, str]] = set()
    for route in routes:
        ns = route.metadata.namespace
        out.update((p.namespace or ns, p.name) for p in route.spec.parent_refs if is_service_parent(p))
        rules: Sequence[RouteRule | GRPCRouteRule | L4RouteRule] = route.spec.rules
        for rule in rules:
            out.update((b.namespace or ns, b.name) for b in rule.backend_refs)
            if isinstance(rule, (RouteRule, GRPCRouteRule)):
                out.update(
                    (f.request_mirror.backend_ref.namespace or ns, f.request_mirror.backend_ref.name)
                    for f in rule.filters
                    if f.request_mirror is not None
                )
    return out
