"""VirtualService delegation (Istio's VirtualService chaining), one level deep.

A root VirtualService's http route with `delegate {name, namespace}` is replaced by the http
routes of the delegate (a VirtualService without hosts, exported to the root's namespace). Each
delegate match is AND-ed with the root's match; a combination that can never match (e.g. two
different exact URIs) is left out. Errors about the reference are the root's
(`spec.http[i].delegate`); errors inside a delegated route are the delegate's.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

from meshd.api.http_match import HTTPMatchRequest, StringMatch
from meshd.api.meta import InvalidResource, ResourceKey
from meshd.api.networking import exported_to
from meshd.api.virtualservice import HTTPRoute, VirtualService

Lookup = Callable[[str, str], VirtualService | None]  # (namespace, name) -> VirtualService


class RouteEntry(NamedTuple):
    """One http route to translate, with the VirtualService it belongs to (for errors and short
    host names) and, for a delegated route, its merged matches."""

    route: HTTPRoute
    field: str
    owner: ResourceKey
    namespace: str
    matches: list[HTTPMatchRequest] | None


class _Conflict(Exception):
    pass


def delegate_key(vs: VirtualService, route: HTTPRoute) -> tuple[str, str] | None:
    if route.delegate is None:
        return None
    return (route.delegate.namespace or vs.metadata.namespace, route.delegate.name)


def delegate_keys(vs: VirtualService) -> list[tuple[str, str]]:
    return [k for k in (delegate_key(vs, r) for r in vs.spec.http) if k is not None]


def resolve_delegate(vs: VirtualService, index: int, lookup: Lookup) -> VirtualService:
    """The delegate of `vs.spec.http[index]`, or InvalidResource on the root."""
    key = delegate_key(vs, vs.spec.http[index])
    assert key is not None
    field = f"spec.http[{index}].delegate"
    found = lookup(*key)
    name = f"VirtualService {key[0]}/{key[1]}"
    if found is None:
        raise InvalidResource(vs.key, field, f"{name} does not exist")
    if found.spec.hosts:
        raise InvalidResource(vs.key, field, f"{name} has hosts: a delegate must have none")
    if not exported_to(found.spec.export_to, owner_namespace=key[0], namespace=vs.metadata.namespace):
        raise InvalidResource(vs.key, field, f"{name} is not exported to namespace {vs.metadata.namespace}")
    for j, route in enumerate(found.spec.http):
        if route.delegate is not None:
            raise InvalidResource(vs.key, field, f"{name} delegates again (spec.http[{j}]): only one level is allowed")
    return found


def expand(vs: VirtualService, lookup: Lookup) -> list[RouteEntry]:
    """The http routes of a VirtualService with every delegation replaced by the delegate's routes."""
    out: list[RouteEntry] = []
    for i, route in enumerate(vs.spec.http):
        if route.delegate is None:
            out.append(RouteEntry(route, f"spec.http[{i}]", vs.key, vs.metadata.namespace, None))
            continue
        delegate = resolve_delegate(vs, i, lookup)
        for j, inner in enumerate(delegate.spec.http):
            matches = merge_matches(route.match, inner.match)
            if matches == []:
                continue  # no combination can match
            out.append(RouteEntry(inner, f"spec.http[{j}]", delegate.key, delegate.metadata.namespace, matches))
    return out


def merge_matches(root: list[HTTPMatchRequest], inner: list[HTTPMatchRequest]) -> list[HTTPMatchRequest] | None:
    """Every (root, delegate) pair AND-ed; None when neither side has a condition."""
    if not root and not inner:
        return None
    if not root:
        return list(inner)
    if not inner:
        return list(root)
    out = []
    for a in root:
        for b in inner:
            try:
                out.append(merge_match(a, b))
            except _Conflict:
                continue
    return out


def _same_or_either(a: Any, b: Any) -> Any:
    if a is None or a == "" or a == {} or a == []:
        return b
    if b is None or b == "" or b == {} or b == [] or a == b:
        return a
    raise _Conflict


def _uri(root: StringMatch | None, inner: StringMatch | None) -> StringMatch | None:
    """The delegate may narrow the root's URI (root prefix /a, delegate /a/b); anything else conflicts."""
    if root is None or inner is None or root == inner:
        return inner if root is None else root
    if root.prefix is not None:
        narrower = inner.exact if inner.exact is not None else inner.prefix
        if narrower is not None and narrower.startswith(root.prefix):
            return inner
    if root.exact is not None and inner.prefix is not None and root.exact.startswith(inner.prefix):
        return root
    raise _Conflict


def _union(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    for key in a.keys() & b.keys():
        if a[key] != b[key]:
            raise _Conflict
    return {**a, **b}


def merge_match(root: HTTPMatchRequest, inner: HTTPMatchRequest) -> HTTPMatchRequest:
    name = ".".join(n for n in (root.name, inner.name) if n)
    return root.model_copy(
        update={
            "name": name,
            "uri": _uri(root.uri, inner.uri),
            "scheme": _same_or_either(root.scheme, inner.scheme),
            "method": _same_or_either(root.method, inner.method),
            "authority": _same_or_either(root.authority, inner.authority),
            "headers": _union(root.headers, inner.headers),
            "without_headers": _union(root.without_headers, inner.without_headers),
            "query_params": _union(root.query_params, inner.query_params),
            "source_labels": _union(root.source_labels, inner.source_labels),
            "port": _same_or_either(root.port, inner.port),
            "source_namespace": _same_or_either(root.source_namespace, inner.source_namespace),
            "gateways": root.gateways or inner.gateways,
            "ignore_uri_case": root.ignore_uri_case or inner.ignore_uri_case,
        }
    )
