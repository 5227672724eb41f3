"""One Istio HTTPRoute -> Envoy Routes (one per applicable match, same action), as Istio builds
them for a sidecar: destinations (weighted, per-destination headers), redirect, directResponse,
rewrite, timeout, retries, fault and CORS (per-route filter config), mirrors, header operations.

Everything here is pure; a reference the route cannot honour (undefined subset, port not on the
service, ...) raises InvalidResource naming the VirtualService and field.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from envoy.config.core.v3 import base_pb2
from envoy.config.route.v3 import route_components_pb2 as rc
from envoy.type.matcher.v3 import regex_pb2
from google.protobuf import duration_pb2, wrappers_pb2

from meshd.api.destination import Destination
from meshd.api.destinationrule import DestinationRule
from meshd.api.http_actions import PREFIX_REDIRECT, HeaderOperations, Headers, HTTPDirectResponse, HTTPRedirect
from meshd.api.http_match import HTTPMatchRequest
from meshd.api.meta import InvalidResource, ResourceKey
from meshd.api.values import check_regex
from meshd.api.virtualservice import HTTPRoute
from meshd.model.services import MeshService
from meshd.translate import naming
from meshd.translate.http_filters import cors_config, fault_config, fractional, typed_per_filter_config
from meshd.translate.http_match import MatchContext, applies, route_match
from meshd.translate.policy import route_hash_policies
from meshd.translate.proto import duration
from meshd.translate.retries import retry_policy

# Envoy's default limit on a direct response body (max_direct_response_body_size_bytes).
MAX_DIRECT_RESPONSE_BODY = 4096
_REDIRECT_CODES = {
    301: rc.RedirectAction.MOVED_PERMANENTLY,
    302: rc.RedirectAction.FOUND,
    303: rc.RedirectAction.SEE_OTHER,
    307: rc.RedirectAction.TEMPORARY_REDIRECT,
    308: rc.RedirectAction.PERMANENT_REDIRECT,
}


@dataclass(frozen=True)
class RouteContext:
    """What translating the routes of one VirtualService needs besides the routes themselves."""

    key: ResourceKey  # the VirtualService (errors name it)
    namespace: str  # where its short destination hosts resolve
    resolve: Callable[[str], tuple[str, MeshService | None]]  # host -> (FQDN, service if known)
    rule_for: Callable[[str], DestinationRule | None]
    match: MatchContext


def header_value(value: str) -> str:
    """A literal header value: Envoy reads `%...%` as a formatter, so a user's `%` is doubled."""
    return value.replace("%", "%%")


def _header_options(ops: HeaderOperations) -> list[base_pb2.HeaderValueOption]:
    out = [
        base_pb2.HeaderValueOption(
            header=base_pb2.HeaderValue(key=name.lower(), value=header_value(value)),
            append_action=base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD,
        )
        for name, value in sorted(ops.set.items())
    ]
    out += [
        base_pb2.HeaderValueOption(
            header=base_pb2.HeaderValue(key=name.lower(), value=header_value(value)),
            append_action=base_pb2.HeaderValueOption.APPEND_IF_EXISTS_OR_ADD,
        )
        for name, value in sorted(ops.add.items())
    ]
    return out


def apply_headers(target: rc.Route | rc.WeightedCluster.ClusterWeight, headers: Headers | None) -> None:
    """Request/response set, add and remove on a route or a weighted cluster."""
    if headers is None:
        return
    if headers.request is not None:
        target.request_headers_to_add.extend(_header_options(headers.request))
        target.request_headers_to_remove.extend(n.lower() for n in headers.request.remove)
    if headers.response is not None:
        target.response_headers_to_add.extend(_header_options(headers.response))
        target.response_headers_to_remove.extend(n.lower() for n in headers.response.remove)


def destination_cluster(ctx: RouteContext, dest: Destination, field: str) -> str:
    """The cluster of a destination (route, mirror), checking its port and subset."""
    host, service = ctx.resolve(dest.host)
    port = ctx.match.port
    if dest.port is not None:
        port = dest.port.number
        if service is not None and service.port(port) is None:
            known = ", ".join(str(p.number) for p in service.ports)
            raise InvalidResource(ctx.key, f"{field}.port", f"port {port} is not a port of {host} ({known})")
    elif service is not None and len(service.ports) == 1:
        port = service.ports[0].number
    elif service is not None and service.port(port) is None:
        raise InvalidResource(ctx.key, f"{field}.port", f"a port is required: {host} has several ports")
    if dest.subset:
        rule = ctx.rule_for(host)
        if rule is None or all(s.name != dest.subset for s in rule.spec.subsets):
            raise InvalidResource(
                ctx.key, f"{field}.subset", f"subset {dest.subset!r} is not defined by a DestinationRule for {host}"
            )
    return naming.outbound_cluster(port=port, host=host, subset=dest.subset)


def set_timeout(action: rc.RouteAction, timeout: str | None) -> None:
    """Istio's timeout: none unless set (`0s`); a gRPC request's own `grpc-timeout` is honoured up
    to the same limit (0: no limit), through Envoy's max_grpc_timeout as Istio does."""
    value = duration(timeout) if timeout else duration_pb2.Duration(seconds=0)
    action.timeout.CopyFrom(value)
    action.max_grpc_timeout.CopyFrom(value)


def hash_policy_for(rule_for: Callable[[str], DestinationRule | None], cluster: str) -> list[rc.RouteAction.HashPolicy]:
    """The hash policy the DestinationRule of an outbound cluster `outbound|port|subset|host` asks for."""
    _, port, subset, host = cluster.split("|", 3)
    return route_hash_policies(rule_for(host), port=int(port), subset=subset)


def destination_action(cluster: str) -> rc.RouteAction:
    """The action for one destination cluster (the place for per-destination policies, e.g. hashing)."""
    return rc.RouteAction(cluster=cluster)


def _forward_action(ctx: RouteContext, route: HTTPRoute, field: str) -> rc.RouteAction:
    clusters = [
        destination_cluster(ctx, d.destination, f"{field}.route[{j}].destination") for j, d in enumerate(route.route)
    ]
    if len(clusters) == 1:
        action = destination_action(clusters[0])
    else:
        action = rc.RouteAction()
        for name, dest, weight in zip(clusters, route.route, route.weights(), strict=True):
            if weight:
                entry = rc.WeightedCluster.ClusterWeight(name=name, weight=wrappers_pb2.UInt32Value(value=weight))
                apply_headers(entry, dest.headers)
                action.weighted_clusters.clusters.append(entry)
    # A consistent-hash DestinationRule needs the route to say what to hash: the first destination
    # whose rule has a hash policy (Envoy uses it only for ring-hash / Maglev clusters).
    action.hash_policy.extend(next((h for h in (hash_policy_for(ctx.rule_for, c) for c in clusters) if h), []))
    set_timeout(action, route.timeout)
    policy = retry_policy(route.retries)
    if policy is not None:
        action.retry_policy.CopyFrom(policy)
    _rewrite(action, route)
    _mirrors(ctx, action, route, field)
    return action


def _rewrite(action: rc.RouteAction, route: HTTPRoute) -> None:
    rewrite = route.rewrite
    if rewrite is None:
        return
    if rewrite.authority:
        action.host_rewrite_literal = rewrite.authority
    if rewrite.uri_regex_rewrite is not None:
        action.regex_rewrite.CopyFrom(
            regex_pb2.RegexMatchAndSubstitute(
                pattern=regex_pb2.RegexMatcher(regex=rewrite.uri_regex_rewrite.match),
                substitution=rewrite.uri_regex_rewrite.rewrite,
            )
        )
    elif rewrite.uri:
        action.prefix_rewrite = rewrite.uri


def _rewrite_for_match(action: rc.RouteAction, match: HTTPMatchRequest | None) -> rc.RouteAction:
    """Istio's special case: rewriting a prefix (without trailing slash) to `/` must not leave `//`."""
    prefix = match.uri.prefix if match is not None and match.uri is not None else None
    if action.prefix_rewrite != "/" or not prefix or prefix.endswith("/"):
        return action
    pattern = f"^{re.escape(prefix)}/*"
    try:
        check_regex(pattern)
    except ValueError:
        return action  # a prefix too long for Envoy's regex limit keeps the plain prefix rewrite
    out = rc.RouteAction()
    out.CopyFrom(action)
    out.ClearField("prefix_rewrite")
    out.regex_rewrite.CopyFrom(
        regex_pb2.RegexMatchAndSubstitute(pattern=regex_pb2.RegexMatcher(regex=pattern), substitution="/")
    )
    return out


def _mirrors(ctx: RouteContext, action: rc.RouteAction, route: HTTPRoute, field: str) -> None:
    entries: list[tuple[str, float]] = []
    if route.mirror is not None:
        rate = route.mirror_percentage.value if route.mirror_percentage is not None else None
        if rate is None and route.mirror_percent is not None:
            rate = float(route.mirror_percent)
        entries.append((destination_cluster(ctx, route.mirror, f"{field}.mirror"), 100.0 if rate is None else rate))
    for i, mirror in enumerate(route.mirrors):
        rate = mirror.percentage.value if mirror.percentage is not None else 100.0
        entries.append((destination_cluster(ctx, mirror.destination, f"{field}.mirrors[{i}].destination"), rate))
    for cluster, rate in entries:
        action.request_mirror_policies.append(
            rc.RouteAction.RequestMirrorPolicy(
                cluster=cluster,
                runtime_fraction=base_pb2.RuntimeFractionalPercent(default_value=fractional(rate)),
                trace_sampled=wrappers_pb2.BoolValue(value=False),
            )
        )


def redirect_action(redirect: HTTPRedirect, *, request_port: int) -> rc.RedirectAction:
    """`request_port` is the port of the route configuration: the port the request came in on."""
    out = rc.RedirectAction(response_code=_REDIRECT_CODES[redirect.redirect_code])
    if redirect.uri.startswith(PREFIX_REDIRECT):
        out.prefix_rewrite = redirect.uri.removeprefix(PREFIX_REDIRECT)
    elif redirect.uri:
        out.path_redirect = redirect.uri
    if redirect.authority:
        out.host_redirect = redirect.authority
    if redirect.scheme:
        out.scheme_redirect = redirect.scheme
    if redirect.port is not None:
        out.port_redirect = redirect.port
    elif redirect.derive_port == "FROM_PROTOCOL_DEFAULT":
        out.port_redirect = 443 if redirect.scheme == "https" else 80
    elif redirect.derive_port == "FROM_REQUEST_PORT":
        out.port_redirect = request_port  # Envoy would drop the port of a redirected host otherwise
    return out


def direct_response(ctx: RouteContext, response: HTTPDirectResponse, field: str) -> rc.DirectResponseAction:
    out = rc.DirectResponseAction(status=response.status)
    body = response.body
    if body is None:
        return out
    if body.bytes_ is not None:
        try:
            data = base64.b64decode(body.bytes_, validate=True)
        except (binascii.Error, ValueError):
            raise InvalidResource(ctx.key, f"{field}.body.bytes", "not valid base64") from None
        out.body.inline_bytes = data
    else:
        data = (body.string or "").encode()
        out.body.inline_string = body.string or ""
    if len(data) > MAX_DIRECT_RESPONSE_BODY:
        raise InvalidResource(
            ctx.key, f"{field}.body", f"{len(data)} bytes is more than Envoy's {MAX_DIRECT_RESPONSE_BODY}-byte limit"
        )
    return out


def route_name(route: HTTPRoute, match: HTTPMatchRequest | None, default: str) -> str:
    if route.name and match is not None and match.name:
        return f"{route.name}.{match.name}"
    return route.name or (match.name if match is not None else "") or default


def virtual_service_path(key: ResourceKey) -> str:
    return f"/apis/networking.istio.io/v1alpha3/namespaces/{key.namespace}/virtual-service/{key.name}"


def http_routes(
    ctx: RouteContext,
    route: HTTPRoute,
    field: str,
    *,
    matches: Sequence[HTTPMatchRequest] | None = None,
    default_name: str,
) -> list[rc.Route]:
    """The Envoy routes of one HTTPRoute: one per applicable match (none if every match is for
    another port or source), all with the same action. `matches` overrides the route's own
    (delegation merges them with the root's)."""
    own = list(route.match if matches is None else matches)
    applicable: list[HTTPMatchRequest | None] = [m for m in own if applies(m, ctx.match, namespace=ctx.namespace)]
    if not own:
        applicable = [None]
    if not applicable:
        return []
    template = rc.Route()
    # Istio's provenance on every route: which VirtualService made it (istioctl and `meshd explain` read it)
    template.metadata.filter_metadata["istio"].update({"config": virtual_service_path(ctx.key)})
    if route.redirect is not None:
        template.redirect.CopyFrom(redirect_action(route.redirect, request_port=ctx.match.port))
    elif route.direct_response is not None:
        template.direct_response.CopyFrom(direct_response(ctx, route.direct_response, f"{field}.directResponse"))
    else:
        template.route.CopyFrom(_forward_action(ctx, route, field))
    apply_headers(template, route.headers)
    if len(route.route) == 1:
        apply_headers(template, route.route[0].headers)
    filters = typed_per_filter_config(
        fault=fault_config(route.fault) if route.fault is not None else None,
        cors=cors_config(route.cors_policy) if route.cors_policy is not None else None,
    )
    for name, config in filters.items():
        template.typed_per_filter_config[name].CopyFrom(config)
    out = []
    for match in applicable:
        entry = rc.Route()
        entry.CopyFrom(template)
        entry.name = route_name(route, match, default_name)
        entry.match.CopyFrom(route_match(match))
        if entry.HasField("route"):
            entry.route.CopyFrom(_rewrite_for_match(entry.route, match))
        out.append(entry)
    return out


def destinations(route: HTTPRoute) -> list[Destination]:
    """Every destination a route sends or mirrors to."""
    found = [d.destination for d in route.route]
    if route.mirror is not None:
        found.append(route.mirror)
    found += [m.destination for m in route.mirrors]
    return found
