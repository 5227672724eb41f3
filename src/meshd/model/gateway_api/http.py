"""HTTPRoute rules as VirtualService http routes (the same routes a VirtualService would give), and the
order the Gateway API requires among the routes of one hostname.

- A match is one VirtualService route (its own rewrite); `PathPrefix /foo` matches `/foo` and `/foo/...`
  (path segments, as the specification says), so it becomes two: exact `/foo` and prefix `/foo/`.
- Filters: RequestHeaderModifier / ResponseHeaderModifier -> `headers` (also per backend), RequestRedirect ->
  `redirect` (302 unless statusCode says 301; a new scheme without port: no port in the Location; ReplacePrefixMatch:
  Istio's `%PREFIX()%` uri, the matched prefix replaced),
  URLRewrite -> `rewrite` (ReplacePrefixMatch: the matched prefix; ReplaceFullPath: the whole path),
  RequestMirror (one or more; `percent` or `fraction`) -> `mirrors`, CORS -> `corsPolicy` (`cors.py`),
  timeouts.request -> `timeout`, retry and
  timeouts.backendRequest -> `retries` (`retry.py`).
- backendRefs -> weighted destinations `<name>.<namespace>.svc.<domain>:<port>`; weight 0 gets no traffic; a
  rule whose backends are all unusable (not found, not permitted, not a Service) answers 500.
- Precedence (Gateway API): Exact path before prefix, longer path first, then a method match, more header
  matches, more query matches, then the older route, then namespace/name, then rule and match order.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from meshd.api.grpcroute import GRPCBackendRef
from meshd.api.http_actions import PREFIX_REDIRECT
from meshd.api.httproute import HeaderFilter, HTTPBackendRef, HTTPRoute, HTTPRouteMatch, PathModifier, RouteRule
from meshd.model.gateway_api.cors import cors_policy
from meshd.model.gateway_api.retry import retry_fields

# group, kind, namespace, name, port -> (reason, message) of a problem, or None
BackendCheck = Callable[[str, str, str, str, int | None], tuple[str, str] | None]
_PATH_RANK = {"Exact": 0, "PathPrefix": 1, "RegularExpression": 2}


@dataclass(frozen=True, order=True)
class Precedence:
    path_rank: int
    path_length: int  # negated: longer first
    no_method: bool
    headers: int  # negated
    queries: int  # negated
    created: str
    namespace: str
    name: str
    rule: int
    match: int
    variant: int


def http_routes(
    route: HTTPRoute, *, domain_suffix: str, backend_problem: BackendCheck
) -> list[tuple[Precedence, dict[str, Any]]]:
    """Every (precedence, VirtualService http route) of an HTTPRoute."""
    out = []
    meta = route.metadata
    for r, rule in enumerate(route.spec.rules):
        action = _action(rule, route=route, domain_suffix=domain_suffix, backend_problem=backend_problem)
        for m, match in enumerate(rule.matches or [HTTPRouteMatch()]):
            for v, (uri, rewrite_prefix) in enumerate(_uri_variants(match)):
                precedence = Precedence(
                    _PATH_RANK[match.path.type],
                    -len(match.path.value.rstrip("/") or "/"),
                    match.method is None,
                    -len(match.headers),
                    -len(match.query_params),
                    meta.creation_timestamp,
                    meta.namespace,
                    meta.name,
                    r,
                    m,
                    v,
                )
                entry = {"name": f"{meta.namespace}.{meta.name}.{r}.{m}", "match": [_match(match, uri)], **action}
                rewrite = _rewrite(rule, rewrite_prefix)
                if rewrite:
                    entry["rewrite"] = rewrite
                prefix = _redirect_prefix(rule, rewrite_prefix)
                if prefix is not None:
                    entry["redirect"] = {**entry["redirect"], "uri": PREFIX_REDIRECT + prefix}
                out.append((precedence, entry))
    return out


def _uri_variants(match: HTTPRouteMatch) -> list[tuple[dict[str, str], str | None]]:
    """(VirtualService uri match, the prefix a ReplacePrefixMatch replaces it with: "" keep, "/" add)."""
    path = match.path
    if path.type == "Exact":
        return [({"exact": path.value}, "")]
    if path.type == "RegularExpression":
        return [({"regex": path.value}, "")]
    base = path.value.rstrip("/")
    if not base:
        return [({"prefix": "/"}, "/")]
    return [({"exact": base}, ""), ({"prefix": f"{base}/"}, "/")]


def header_matches(headers: Sequence[Any]) -> dict[str, dict[str, str]]:
    """An HTTPRoute's or GRPCRoute's header matches as a VirtualService match's `headers` (names lower-cased)."""
    return {h.name.lower(): {"exact" if h.type == "Exact" else "regex": h.value} for h in headers}


def _match(match: HTTPRouteMatch, uri: dict[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = {"uri": uri}
    if match.headers:
        out["headers"] = header_matches(match.headers)
    if match.query_params:
        out["queryParams"] = {q.name: {"exact" if q.type == "Exact" else "regex": q.value} for q in match.query_params}
    if match.method is not None:
        out["method"] = {"exact": match.method}
    return out


def _headers(f: HeaderFilter) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if f.set:
        out["set"] = {h.name: h.value for h in f.set}
    if f.add:
        out["add"] = {h.name: h.value for h in f.add}
    if f.remove:
        out["remove"] = list(f.remove)
    return out


def _header_ops(filters: list[Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for f in filters:
        if f.request_header_modifier is not None:
            out["request"] = _headers(f.request_header_modifier)
        if f.response_header_modifier is not None:
            out["response"] = _headers(f.response_header_modifier)
    return out


def _fqdn(ref: Any, *, namespace: str, domain_suffix: str) -> str:
    return f"{ref.name}.{ref.namespace or namespace}.svc.{domain_suffix}"


def _action(rule: RouteRule, *, route: HTTPRoute, domain_suffix: str, backend_problem: BackendCheck) -> dict[str, Any]:
    ns = route.metadata.namespace
    out: dict[str, Any] = {}
    headers = _header_ops(rule.filters)
    if headers:
        out["headers"] = headers
    for f in rule.filters:
        if f.request_redirect is not None:
            out["redirect"] = _redirect(f.request_redirect)
        if f.cors is not None:
            out["corsPolicy"] = cors_policy(f.cors)
    mirrored = mirrors(rule.filters, namespace=ns, domain_suffix=domain_suffix, backend_problem=backend_problem)
    if mirrored:
        out["mirrors"] = mirrored
    if rule.timeouts is not None and rule.timeouts.request is not None:
        out["timeout"] = rule.timeouts.request
    out.update(retry_fields(rule))
    if "redirect" in out:
        return out
    destinations = [
        _destination(b, namespace=ns, domain_suffix=domain_suffix)
        for b in rule.backend_refs
        if b.weight > 0 and backend_problem(b.group, b.kind, b.namespace or ns, b.name, b.port) is None
    ]
    if destinations:
        out["route"] = destinations
    else:
        out["directResponse"] = {"status": 500}
        out.pop("mirrors", None)
    return out


def mirrors(
    filters: Sequence[Any], *, namespace: str, domain_suffix: str, backend_problem: BackendCheck
) -> list[dict[str, Any]]:
    """A rule's RequestMirror filters (one or several, each with its `percent` or `fraction`) as the
    VirtualService's `mirrors`; a mirror whose backend cannot be used is left out (its problem is on the
    route's status)."""
    out: list[dict[str, Any]] = []
    for f in filters:
        mirror = f.request_mirror
        if mirror is None:
            continue
        ref = mirror.backend_ref
        if backend_problem(ref.group, ref.kind, ref.namespace or namespace, ref.name, ref.port) is not None:
            continue
        destination: dict[str, Any] = {"host": _fqdn(ref, namespace=namespace, domain_suffix=domain_suffix)}
        if ref.port is not None:
            destination["port"] = {"number": ref.port}
        entry: dict[str, Any] = {"destination": destination}
        if mirror.percentage is not None:
            entry["percentage"] = {"value": mirror.percentage}
        out.append(entry)
    return out


def _destination(backend: HTTPBackendRef | GRPCBackendRef, *, namespace: str, domain_suffix: str) -> dict[str, Any]:
    """A weighted VirtualService destination of an HTTPRoute's or GRPCRoute's backendRef, with its header filters."""
    out: dict[str, Any] = {
        "destination": {"host": _fqdn(backend, namespace=namespace, domain_suffix=domain_suffix)},
        "weight": backend.weight,
    }
    if backend.port is not None:
        out["destination"]["port"] = {"number": backend.port}
    headers = _header_ops(backend.filters)
    if headers:
        out["headers"] = headers
    return out


def _redirect(redirect: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"redirectCode": redirect.status_code}
    if redirect.scheme:
        # no port: the new scheme's well-known one, left out of the Location (as the Gateway API requires)
        out["scheme"] = redirect.scheme
    if redirect.hostname:
        out["authority"] = redirect.hostname
    if redirect.port is not None:
        out["port"] = redirect.port
    if redirect.path is not None and redirect.path.type == "ReplaceFullPath":
        out["uri"] = redirect.path.value
    return out


def _redirect_prefix(rule: RouteRule, variant: str | None) -> str | None:
    """What a redirect's ReplacePrefixMatch puts in place of the matched prefix (as URLRewrite's: the matched
    prefix `/foo/` keeps its slash, exact `/foo` is replaced wholly); None without one."""
    for f in rule.filters:
        path = f.request_redirect.path if f.request_redirect is not None else None
        if path is not None and path.type == "ReplacePrefixMatch":
            return path.value.rstrip("/") + "/" if variant == "/" else path.value
    return None


def _rewrite(rule: RouteRule, variant: str | None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for f in rule.filters:
        if f.url_rewrite is None:
            continue
        if f.url_rewrite.hostname:
            out["authority"] = f.url_rewrite.hostname
        path: PathModifier | None = f.url_rewrite.path
        if path is not None and path.type == "ReplaceFullPath":
            out["uriRegexRewrite"] = {"match": "^/.*$", "rewrite": path.value}
        elif path is not None:
            # the matched prefix `/foo/` (variant "/") is replaced keeping its slash; exact `/foo` wholly
            out["uri"] = path.value.rstrip("/") + "/" if variant == "/" else path.value
    return out
