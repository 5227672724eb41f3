"""Kubernetes Gateway API HTTPRoute (gateway.networking.k8s.io v1), as meshd reads it.

Strict: an unknown field is refused by name, and so is every field meshd does not translate yet (filter
type ExtensionRef, per-backend filters other than the header modifiers, `sessionPersistence`), so that
nothing a user writes is dropped.
Matches, filters and backends become VirtualService routes (`model/gateway_api/`).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from meshd.api.gateway_api import Hostname, ParentReference, PreciseHostname
from meshd.api.httproute_cors import CORSFilter
from meshd.api.meta import Resource, StrictModel, refused
from meshd.api.values import Duration, DurationOrZero, PortNumber, check_regex, parse_duration

MAX_BACKEND_WEIGHT = 1_000_000


class PathMatch(StrictModel):
    type: Literal["Exact", "PathPrefix", "RegularExpression"] = "PathPrefix"
    value: str = "/"

    @model_validator(mode="after")
    def _check(self) -> PathMatch:
        if self.type == "RegularExpression":
            check_regex(self.value)
        elif not self.value.startswith("/"):
            raise ValueError(f"value: {self.value!r} must start with /")
        return self


HEADER_NAME = r"^[A-Za-z0-9!#$%&'*+\-.^_`|~]+$"


class HeaderMatch(StrictModel):
    type: Literal["Exact", "RegularExpression"] = "Exact"
    name: str = Field(min_length=1, max_length=256, pattern=HEADER_NAME)
    value: str = Field(max_length=4096)

    @model_validator(mode="after")
    def _check(self) -> HeaderMatch:
        if self.type == "RegularExpression":
            check_regex(self.value)
        return self


class HTTPRouteMatch(StrictModel):
    path: PathMatch = Field(default_factory=PathMatch)
    headers: list[HeaderMatch] = Field(default_factory=list, max_length=16)
    query_params: list[HeaderMatch] = Field(default_factory=list, max_length=16)
    method: Literal["GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"] | None = None


class HeaderValue(StrictModel):
    name: str = Field(min_length=1, max_length=256, pattern=HEADER_NAME)
    value: str = Field(max_length=4096)


class HeaderFilter(StrictModel):
    set: list[HeaderValue] = Field(default_factory=list, max_length=16)
    add: list[HeaderValue] = Field(default_factory=list, max_length=16)
    remove: list[str] = Field(default_factory=list, max_length=16)


class PathModifier(StrictModel):
    type: Literal["ReplaceFullPath", "ReplacePrefixMatch"]
    replace_full_path: str | None = None
    replace_prefix_match: str | None = None

    @model_validator(mode="after")
    def _check(self) -> PathModifier:
        value = self.replace_full_path if self.type == "ReplaceFullPath" else self.replace_prefix_match
        other = self.replace_prefix_match if self.type == "ReplaceFullPath" else self.replace_full_path
        if value is None or other is not None:
            raise ValueError(f"type: {self.type} takes {self.type[0].lower()}{self.type[1:]} (only)")
        if not value.startswith("/"):
            raise ValueError(f"{self.type[0].lower()}{self.type[1:]}: {value!r} must start with /")
        return self

    @property
    def value(self) -> str:
        return self.replace_full_path or self.replace_prefix_match or "/"


class RequestRedirect(StrictModel):
    scheme: Literal["http", "https"] | None = None
    hostname: PreciseHostname | None = None
    path: PathModifier | None = None
    port: PortNumber | None = None
    status_code: Literal[301, 302] = 302


class URLRewrite(StrictModel):
    hostname: PreciseHostname | None = None
    path: PathModifier | None = None


class BackendObjectReference(StrictModel):
    group: str = ""
    kind: str = "Service"
    name: str = Field(min_length=1)
    namespace: str = ""
    port: PortNumber | None = None

    @model_validator(mode="after")
    def _port(self) -> BackendObjectReference:
        if self.group in ("", "core") and self.kind == "Service" and self.port is None:
            raise ValueError("port: required for a Service backend")
        return self


class Fraction(StrictModel):
    numerator: int = Field(ge=0)
    denominator: int = Field(default=100, gt=0)

    @model_validator(mode="after")
    def _check(self) -> Fraction:
        if self.numerator > self.denominator:
            raise ValueError("numerator: greater than the denominator")
        return self


class RequestMirror(StrictModel):
    backend_ref: BackendObjectReference
    percent: int | None = Field(default=None, ge=0, le=100)
    fraction: Fraction | None = None

    @model_validator(mode="after")
    def _check(self) -> RequestMirror:
        if self.percent is not None and self.fraction is not None:
            raise ValueError("fraction: only one of percent and fraction may be set")
        return self

    @property
    def percentage(self) -> float | None:
        """The share mirrored, in percent (None: every request)."""
        if self.fraction is not None:
            return 100.0 * self.fraction.numerator / self.fraction.denominator
        return None if self.percent is None else float(self.percent)


FILTER_FIELDS = {
    "RequestHeaderModifier": "requestHeaderModifier",
    "ResponseHeaderModifier": "responseHeaderModifier",
    "RequestRedirect": "requestRedirect",
    "URLRewrite": "urlRewrite",
    "RequestMirror": "requestMirror",
    "CORS": "cors",
}


class RouteFilter(StrictModel):
    type: str = Field(min_length=1)
    request_header_modifier: HeaderFilter | None = None
    response_header_modifier: HeaderFilter | None = None
    request_redirect: RequestRedirect | None = None
    url_rewrite: URLRewrite | None = None
    request_mirror: RequestMirror | None = None
    extension_ref: dict[str, object] | None = refused("extension filters are not applied by meshd")
    cors: CORSFilter | None = None

    @model_validator(mode="after")
    def _check(self) -> RouteFilter:
        if self.type not in FILTER_FIELDS:
            raise ValueError(
                f"type: filter {self.type!r} is not supported by meshd (supported: {', '.join(FILTER_FIELDS)})"
            )
        wanted = FILTER_FIELDS[self.type]
        for name in FILTER_FIELDS.values():
            given = getattr(self, _snake(name)) is not None
            if given != (name == wanted):
                raise ValueError(f"{name}: " + ("required by the filter's type" if not given else "not of its type"))
        return self


def _snake(camel: str) -> str:
    return "".join(f"_{c.lower()}" if c.isupper() else c for c in camel)


class HTTPBackendRef(BackendObjectReference):
    weight: int = Field(default=1, ge=0, le=MAX_BACKEND_WEIGHT)
    filters: list[RouteFilter] = Field(default_factory=list, max_length=16)

    @model_validator(mode="after")
    def _check(self) -> HTTPBackendRef:
        for i, f in enumerate(self.filters):
            if f.type not in ("RequestHeaderModifier", "ResponseHeaderModifier"):
                raise ValueError(f"filters[{i}].type: {f.type} on a backendRef is not supported by meshd yet")
        return self


class RouteTimeouts(StrictModel):
    request: DurationOrZero | None = None
    backend_request: DurationOrZero | None = None  # each try's timeout (model/gateway_api/retry.py)

    @model_validator(mode="after")
    def _check(self) -> RouteTimeouts:
        request, backend = self.request, self.backend_request
        if request and backend and parse_duration(request) and parse_duration(backend) > parse_duration(request):
            raise ValueError("backendRequest: must not be longer than request")
        return self


class RouteRetry(StrictModel):
    """GEP-1731 (experimental): attempts -> num_retries, codes -> retriable codes, backoff -> back-off base."""

    codes: list[int] = Field(default_factory=list, max_length=16)
    attempts: int | None = Field(default=None, ge=0, le=1000)
    # Istio's `retries.backoff`: Envoy's retry back-off base interval (model/gateway_api/retry.py); at least 1ms
    backoff: Duration | None = None

    @model_validator(mode="after")
    def _check(self) -> RouteRetry:
        for i, code in enumerate(self.codes):
            if not 400 <= code <= 599:
                raise ValueError(f"codes[{i}]: {code} is not an HTTP status code from 400 to 599")
        return self


class RouteRule(StrictModel):
    name: str = ""
    matches: list[HTTPRouteMatch] = Field(default_factory=list, max_length=64)
    filters: list[RouteFilter] = Field(default_factory=list, max_length=16)
    backend_refs: list[HTTPBackendRef] = Field(default_factory=list, max_length=16)
    timeouts: RouteTimeouts | None = None
    retry: RouteRetry | None = None
    session_persistence: dict[str, object] | None = refused("session persistence is not applied by meshd")

    @model_validator(mode="after")
    def _check(self) -> RouteRule:
        types = [f.type for f in self.filters]
        if "RequestRedirect" in types and ("URLRewrite" in types or self.backend_refs):
            raise ValueError("filters: a RequestRedirect cannot be combined with URLRewrite or backendRefs")
        for kind in ("RequestRedirect", "URLRewrite", "RequestHeaderModifier", "ResponseHeaderModifier", "CORS"):
            if types.count(kind) > 1:
                raise ValueError(f"filters: {kind} may appear once per rule")
        return self


class HTTPRouteSpec(StrictModel):
    parent_refs: list[ParentReference] = Field(default_factory=list, max_length=32)
    hostnames: list[Hostname] = Field(default_factory=list, max_length=16)
    rules: list[RouteRule] = Field(default_factory=lambda: [RouteRule()], max_length=16)


class HTTPRoute(Resource):
    kind: Literal["HTTPRoute"]
    spec: HTTPRouteSpec
