"""GRPCRoute rules as VirtualService http routes, in the order the Gateway API requires among the routes of one
hostname (merged with its HTTPRoutes' routes, as Istio does).

- A gRPC call is an HTTP/2 POST to `/<service>/<method>`, so a `method` match is a path match: Exact service
  and method -> exact `/svc/Method`; service only -> prefix `/svc/`; method only -> regex `/[^/]+/Method`;
  RegularExpression -> regex `/<service or [^/]+>/<method or [^/]+>`; no method match -> every call.
  `headers` (metadata) as an HTTPRoute's.
- Filters RequestHeaderModifier / ResponseHeaderModifier -> `headers` (also per backend), RequestMirror ->
  `mirrors`.
- backendRefs -> weighted destinations `<name>.<namespace>.svc.<domain>:<port>`; weight 0 gets no traffic. A
  rule whose backends are all unusable answers 503, which gRPC clients see as UNAVAILABLE (the specification's
  code for an invalid backend).
- The gateway talks to the backend in the protocol of its Service port (name or appProtocol `grpc`, `http2`,
  `kubernetes.io/h2c`: HTTP/2), as Istio does: a GRPCRoute does not force HTTP/2.
- Precedence (Gateway API): a longer exact service/method first (exact both, then an exact service, then a
  method only or regular expressions, the longer first; no method match last), then more header matches,
  then the older route, then namespace/name, then rule and match order.
"""

from __future__ import annotations

from typing import Any

from meshd.api.grpcroute import GRPCMethodMatch, GRPCRoute, GRPCRouteMatch, GRPCRouteRule
from meshd.model.gateway_api.http import BackendCheck, Precedence, _destination, _header_ops, header_matches, mirrors

ANY = "[^/]+"
NO_BACKEND_STATUS = 503  # gRPC: UNAVAILABLE


def grpc_uri(method: GRPCMethodMatch | None) -> tuple[int, dict[str, str]]:
    """(path rank as Precedence takes it, VirtualService uri match) of a method match."""
    if method is None:  # every call: after every method match
        return 3, {"prefix": "/"}
    if method.type == "Exact":
        if method.service and method.method:
            return 0, {"exact": f"/{method.service}/{method.method}"}
        if method.service:
            return 1, {"prefix": f"/{method.service}/"}
        return 2, {"regex": f"/{ANY}/{method.method}"}
    return 2, {"regex": f"/{method.service or ANY}/{method.method or ANY}"}


def grpc_routes(
    route: GRPCRoute, *, domain_suffix: str, backend_problem: BackendCheck
) -> list[tuple[Precedence, dict[str, Any]]]:
    """Every (precedence, VirtualService http route) of a GRPCRoute."""
    out = []
    meta = route.metadata
    for r, rule in enumerate(route.spec.rules):
        action = _action(rule, route=route, domain_suffix=domain_suffix, backend_problem=backend_problem)
        for m, match in enumerate(rule.matches or [GRPCRouteMatch()]):
            rank, uri = grpc_uri(match.method)
            precedence = Precedence(
                rank,
                -len(next(iter(uri.values()))),
                True,
                -len(match.headers),
                0,
                meta.creation_timestamp,
                meta.namespace,
                meta.name,
                r,
                m,
                0,
            )
            entry_match: dict[str, Any] = {"uri": uri}
            if match.headers:
                entry_match["headers"] = header_matches(match.headers)
            entry = {"name": f"{meta.namespace}.{meta.name}.grpc.{r}.{m}", "match": [entry_match], **action}
            out.append((precedence, entry))
    return out


def _action(
    rule: GRPCRouteRule, *, route: GRPCRoute, domain_suffix: str, backend_problem: BackendCheck
) -> dict[str, Any]:
    ns = route.metadata.namespace
    out: dict[str, Any] = {}
    headers = _header_ops(rule.filters)
    if headers:
        out["headers"] = headers
    mirrored = mirrors(rule.filters, namespace=ns, domain_suffix=domain_suffix, backend_problem=backend_problem)
    if mirrored:
        out["mirrors"] = mirrored
    destinations = [
        _destination(b, namespace=ns, domain_suffix=domain_suffix)
        for b in rule.backend_refs
        if b.weight > 0 and backend_problem(b.group, b.kind, b.namespace or ns, b.name, b.port) is None
    ]
    if destinations:
        out["route"] = destinations
    else:
        out["directResponse"] = {"status": NO_BACKEND_STATUS}
        out.pop("mirrors", None)
    return out
