"""Istio HTTPMatchRequest -> Envoy RouteMatch, and which matches apply to a sidecar.

Fields of one match are AND-ed: uri becomes the path matcher, scheme / method / authority the
`:scheme` / `:method` / `:authority` pseudo-header matchers, headers (an empty match means
"present") and withoutHeaders (inverted) header matchers, queryParams query-parameter matchers.
`port`, `gateways`, `sourceNamespace` and `sourceLabels` are not Envoy conditions: they decide
whether the match exists at all in a given route configuration (`applies`): for a sidecar (the
reserved gateway `mesh`) or for the servers of one Gateway (its `<namespace>/<name>`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from envoy.config.route.v3 import route_components_pb2
from envoy.type.matcher.v3 import regex_pb2, string_pb2
from google.protobuf import wrappers_pb2

from meshd.api.http_match import HTTPMatchRequest, StringMatch

MESH_GATEWAY = "mesh"


@dataclass(frozen=True)
class MatchContext:
    """Where the routes are built: the route configuration's port and the proxy's source."""

    port: int
    namespace: str
    source_matches: Callable[[dict[str, str]], bool]
    validating: bool = False  # every match of these gateways applies (references are checked for any proxy)
    # None: the mesh (a sidecar); else the Gateway whose server the routes are for (`<ns>/<name>`)
    gateway: str | None = None


class SourceMatch(Protocol):
    """The fields of an http, tcp or tls match that say where it applies."""

    @property
    def port(self) -> int | None: ...
    @property
    def gateways(self) -> list[str]: ...
    @property
    def source_namespace(self) -> str: ...
    @property
    def source_labels(self) -> dict[str, str]: ...


def gateway_applies(names: list[str], ctx: MatchContext, *, namespace: str) -> bool:
    """Whether a match-level `gateways` list (names resolved in the VirtualService's `namespace`)
    includes where the routes are built; an empty list inherits the VirtualService's binding."""
    if not names:
        return True
    if ctx.gateway is None:
        return MESH_GATEWAY in names
    return any((n if "/" in n else f"{namespace}/{n}") == ctx.gateway for n in names if n != MESH_GATEWAY)


def applies(match: SourceMatch, ctx: MatchContext, *, namespace: str = "") -> bool:
    """Whether a match exists for a proxy of this source in the route configuration of this port.
    `namespace`: the VirtualService's (its short gateway names resolve there)."""
    if not gateway_applies(match.gateways, ctx, namespace=namespace):
        return False  # (also when validating: a match for other gateways never applies here)
    if ctx.validating:
        return True
    if match.port is not None and match.port != ctx.port:
        return False
    if match.source_namespace and match.source_namespace != ctx.namespace:
        return False
    return not match.source_labels or ctx.source_matches(match.source_labels)


def string_matcher(match: StringMatch, *, ignore_case: bool = False) -> string_pb2.StringMatcher:
    if match.exact is not None:
        return string_pb2.StringMatcher(exact=match.exact, ignore_case=ignore_case)
    if match.prefix is not None:
        return string_pb2.StringMatcher(prefix=match.prefix, ignore_case=ignore_case)
    return string_pb2.StringMatcher(safe_regex=regex_pb2.RegexMatcher(regex=match.regex or ""))


def _header(name: str, match: StringMatch, *, invert: bool = False) -> route_components_pb2.HeaderMatcher:
    out = route_components_pb2.HeaderMatcher(name=name, invert_match=invert)
    if match.empty or match.prefix == "":
        out.present_match = True  # `{}` (or an empty prefix): the header is present
    else:
        out.string_match.CopyFrom(string_matcher(match))
    return out


def _query(name: str, match: StringMatch) -> route_components_pb2.QueryParameterMatcher:
    out = route_components_pb2.QueryParameterMatcher(name=name)
    if match.empty:
        out.present_match = True
    else:
        out.string_match.CopyFrom(string_matcher(match))
    return out


def route_match(match: HTTPMatchRequest | None) -> route_components_pb2.RouteMatch:
    out = route_components_pb2.RouteMatch()
    uri = match.uri if match else None
    if uri is None or uri.prefix == "":
        out.prefix = "/"
    elif uri.exact is not None:
        out.path = uri.exact
    elif uri.prefix is not None:
        out.prefix = uri.prefix
    else:
        out.safe_regex.CopyFrom(regex_pb2.RegexMatcher(regex=uri.regex or ""))
    if match is None:
        return out
    if match.ignore_uri_case:
        out.case_sensitive.CopyFrom(wrappers_pb2.BoolValue(value=False))
    for pseudo, value in ((":scheme", match.scheme), (":method", match.method), (":authority", match.authority)):
        if value is not None:
            out.headers.append(_header(pseudo, value))
    for name, value in sorted(match.headers.items()):
        out.headers.append(_header(name.lower(), value))
    for name, value in sorted(match.without_headers.items()):
        out.headers.append(_header(name.lower(), value, invert=True))
    for name, value in sorted(match.query_params.items()):
        out.query_parameters.append(_query(name, value))
    return out
