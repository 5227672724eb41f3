"""The HTTP filters of a connection manager, in Istio's order. Outbound: CORS, fault, router, with their
per-route configurations (Istio's corsPolicy and fault become `typed_per_filter_config` entries, so the
filters are inert until a route enables them). Inbound: request authentication (jwt_authn), then
authorization (RBAC, which reads what jwt_authn verified), then the router."""

from __future__ import annotations

from collections.abc import Sequence

from envoy.config.core.v3 import base_pb2
from envoy.extensions.filters.http.cors.v3 import cors_pb2
from envoy.extensions.filters.http.fault.v3 import fault_pb2
from envoy.extensions.filters.http.router.v3 import router_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2
from envoy.type.matcher.v3 import string_pb2
from envoy.type.v3 import percent_pb2
from google.protobuf import any_pb2, wrappers_pb2

from meshd.api.http_actions import CorsPolicy
from meshd.api.http_fault import GRPC_STATUS, HTTPFaultInjection
from meshd.api.values import parse_duration
from meshd.translate.alpn import alpn_filter
from meshd.translate.http_match import string_matcher
from meshd.translate.jwt_authn import JwtProviders, jwt_authn_filter
from meshd.translate.proto import duration, pack

CORS = "envoy.filters.http.cors"
FAULT = "envoy.filters.http.fault"
ROUTER = "envoy.filters.http.router"


def fractional(percent: float) -> percent_pb2.FractionalPercent:
    """A percentage as Istio sends it: parts per million."""
    return percent_pb2.FractionalPercent(
        numerator=round(percent * 10_000), denominator=percent_pb2.FractionalPercent.MILLION
    )


def outbound_http_filters() -> list[hcm_pb2.HttpFilter]:
    """`istio.alpn` (the ALPN of HTTP over Istio mTLS, `translate/alpn.py`), CORS and fault (configured per
    route), then the router."""
    return [
        alpn_filter(),
        hcm_pb2.HttpFilter(name=CORS, typed_config=pack(cors_pb2.Cors())),
        hcm_pb2.HttpFilter(name=FAULT, typed_config=pack(fault_pb2.HTTPFault())),
        router(),
    ]


def inbound_http_filters(
    *, jwt: JwtProviders = (), authz: Sequence[hcm_pb2.HttpFilter] = ()
) -> list[hcm_pb2.HttpFilter]:
    """The inbound HTTP filters: jwt_authn first (when a RequestAuthentication applies), the
    authorization filters after it (they read its verified payload), the router last."""
    filters = [jwt_authn_filter(jwt)] if jwt else []
    filters.extend(authz)
    filters.append(router())
    return filters


def router() -> hcm_pb2.HttpFilter:
    return hcm_pb2.HttpFilter(name=ROUTER, typed_config=pack(router_pb2.Router()))


def fault_config(fault: HTTPFaultInjection) -> fault_pb2.HTTPFault:
    out = fault_pb2.HTTPFault()
    if fault.delay is not None and fault.delay.fixed_delay is not None:
        out.delay.fixed_delay.CopyFrom(duration(fault.delay.fixed_delay))
        out.delay.percentage.CopyFrom(fractional(fault.delay.rate()))
    if fault.abort is not None:
        abort = fault.abort
        if abort.grpc_status is not None:
            out.abort.grpc_status = GRPC_STATUS.index(abort.grpc_status)
        else:
            out.abort.http_status = abort.http_status or 500
        out.abort.percentage.CopyFrom(fractional(abort.rate()))
    return out


def cors_config(policy: CorsPolicy) -> cors_pb2.CorsPolicy:
    out = cors_pb2.CorsPolicy(
        filter_enabled=base_pb2.RuntimeFractionalPercent(default_value=fractional(100.0)),
        forward_not_matching_preflights=wrappers_pb2.BoolValue(value=policy.unmatched_preflights != "IGNORE"),
    )
    if policy.allow_origins:
        out.allow_origin_string_match.extend(string_matcher(o) for o in policy.allow_origins)
    else:
        out.allow_origin_string_match.extend(string_pb2.StringMatcher(exact=o) for o in policy.allow_origin)
    if policy.allow_methods:
        out.allow_methods = ",".join(policy.allow_methods)
    if policy.allow_headers:
        out.allow_headers = ",".join(policy.allow_headers)
    if policy.expose_headers:
        out.expose_headers = ",".join(policy.expose_headers)
    if policy.max_age:
        out.max_age = str(int(parse_duration(policy.max_age)))
    if policy.allow_credentials is not None:
        out.allow_credentials.CopyFrom(wrappers_pb2.BoolValue(value=policy.allow_credentials))
    return out


def typed_per_filter_config(
    *, fault: fault_pb2.HTTPFault | None, cors: cors_pb2.CorsPolicy | None
) -> dict[str, any_pb2.Any]:
    out: dict[str, any_pb2.Any] = {}
    if cors is not None:
        out[CORS] = pack(cors)
    if fault is not None:
        out[FAULT] = pack(fault)
    return out
