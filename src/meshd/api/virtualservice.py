"""networking.istio.io VirtualService: every HTTP route field of Istio's schema, validated the way
Istio validates it plus what Envoy would otherwise reject (RE2 regexes, header names, redirect
codes), so an accepted VirtualService always translates into config Envoy accepts.

Cross-field validators raise `ValueError("<field>: <message>")`; the parser folds the field into
the error's path (`spec.http[2].fault.abort.httpStatus`).
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, field_validator, model_validator

from meshd.api.destination import MAX_TOTAL_WEIGHT, MAX_WEIGHT, Destination, PortSelector, check_weights
from meshd.api.l4route import TCPRoute, TLSRoute, check_sni_hosts
from meshd.api.meta import ApiModel, Resource
from meshd.api.values import Duration, DurationOrZero, Percent, PortNumber, check_regex

__all__ = ["MAX_TOTAL_WEIGHT", "MAX_WEIGHT", "Destination", "PortSelector", "TCPRoute", "TLSRoute"]

_HEADER_NAME = re.compile(r"^[!#$%&'*+\-.^_`|~0-9a-zA-Z]+$")
_RESERVED_HEADERS = ("host",)
GRPC_STATUS = (
    "OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND", "ALREADY_EXISTS",
    "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION", "ABORTED", "OUT_OF_RANGE",
    "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS", "UNAUTHENTICATED",
)  # fmt: skip
RETRY_ON = frozenset(
    {
        "5xx", "gateway-error", "reset", "reset-before-request", "connect-failure", "envoy-ratelimited",
        "retriable-4xx", "refused-stream", "retriable-status-codes", "retriable-headers",
        "http3-post-connect-failure", "cancelled", "deadline-exceeded", "internal", "resource-exhausted",
        "unavailable",
    }
)  # fmt: skip
REDIRECT_CODES = (301, 302, 303, 307, 308)


def check_header_name(name: str) -> str:
    if not _HEADER_NAME.match(name):
        raise ValueError(f"{name!r} is not a valid HTTP header name")
    return name


def check_header_value(value: str) -> str:
    if any(c in value for c in "\0\r\n"):
        raise ValueError(f"header value {value!r} contains a NUL, CR or LF")
    return value


def _check_values(**values: str) -> None:
    """Paths and authorities end up in request headers: the same characters are refused."""
    for field, value in values.items():
        try:
            check_header_value(value)
        except ValueError as err:
            raise ValueError(f"{field}: {err}") from None


class StringMatch(ApiModel):
    """One of exact / prefix / regex. An empty match means "present" where Istio allows it (headers)."""

    exact: str | None = None
    prefix: str | None = None
    regex: str | None = None

    @model_validator(mode="after")
    def _one_of(self) -> StringMatch:
        set_fields = [f for f in ("exact", "prefix", "regex") if getattr(self, f) is not None]
        if len(set_fields) > 1:
            raise ValueError("exactly one of exact, prefix, regex may be set")
        if self.regex == "":
            raise ValueError("regex: an empty regex is not allowed (omit the match, or use prefix)")
        if self.regex is not None:
            try:
                check_regex(self.regex)
            except ValueError as err:
                raise ValueError(f"regex: {err}") from None
        return self

    @property
    def empty(self) -> bool:
        return self.exact is None and self.prefix is None and self.regex is None


class HTTPMatchRequest(ApiModel):
    name: str = ""
    uri: StringMatch | None = None
    scheme: StringMatch | None = None
    method: StringMatch | None = None
    authority: StringMatch | None = None
    headers: dict[str, StringMatch] = Field(default_factory=dict)
    port: PortNumber | None = None
    source_labels: dict[str, str] = Field(default_factory=dict)
    gateways: list[str] = Field(default_factory=list)
    query_params: dict[str, StringMatch] = Field(default_factory=dict)
    ignore_uri_case: bool = False
    without_headers: dict[str, StringMatch] = Field(default_factory=dict)
    source_namespace: str = ""
    stat_prefix: str = ""

    @model_validator(mode="after")
    def _check(self) -> HTTPMatchRequest:
        for field in ("uri", "scheme", "method", "authority"):
            match = getattr(self, field)
            if match is not None and match.empty:
                raise ValueError(f"{field}: one of exact, prefix, regex is required")
        for field in ("headers", "without_headers"):
            for name in getattr(self, field):
                try:
                    check_header_name(name)
                except ValueError as err:
                    raise ValueError(f"{_camel(field)}.{name}: {err}") from None
        for name, match in self.query_params.items():
            if match.prefix is not None:
                raise ValueError(f"queryParams.{name}: prefix match is not supported for query parameters")
        if self.uri is not None and self.uri.exact is not None and not self.uri.exact.startswith("/"):
            pass  # Istio allows it; Envoy matches it literally (never matches a path)
        return self


def _camel(field: str) -> str:
    head, *rest = field.split("_")
    return head + "".join(p.title() for p in rest)


class HeaderOperations(ApiModel):
    set: dict[str, str] = Field(default_factory=dict)
    add: dict[str, str] = Field(default_factory=dict)
    remove: list[str] = Field(default_factory=list)

    @model_validator(mode="after")
    def _check(self) -> HeaderOperations:
        for field, names in (("set", list(self.set)), ("add", list(self.add)), ("remove", self.remove)):
            for name in names:
                try:
                    check_header_name(name)
                except ValueError as err:
                    raise ValueError(f"{field}.{name}: {err}") from None
                if name.lower() in _RESERVED_HEADERS:
                    raise ValueError(f"{field}.{name}: the {name} header cannot be modified (use rewrite.authority)")
        for field, values in (("set", self.set), ("add", self.add)):
            for name, value in values.items():
                try:
                    check_header_value(value)
                except ValueError as err:
                    raise ValueError(f"{field}.{name}: {err}") from None
        return self


class Headers(ApiModel):
    request: HeaderOperations | None = None
    response: HeaderOperations | None = None


class HTTPRouteDestination(ApiModel):
    destination: Destination
    weight: int = Field(default=0, ge=0, le=MAX_WEIGHT)
    headers: Headers | None = None


class HTTPRedirect(ApiModel):
    uri: str = ""
    authority: str = ""
    port: PortNumber | None = None
    derive_port: Literal["FROM_PROTOCOL_DEFAULT", "FROM_REQUEST_PORT"] | None = None
    scheme: str = ""
    redirect_code: int = 301

    @model_validator(mode="after")
    def _check(self) -> HTTPRedirect:
        if self.port is not None and self.derive_port is not None:
            raise ValueError("port: only one of port or derivePort may be set")
        if self.redirect_code not in REDIRECT_CODES:
            codes = ", ".join(map(str, REDIRECT_CODES))
            raise ValueError(f"redirectCode: {self.redirect_code} is not a redirect code Envoy supports ({codes})")
        if self.scheme and self.scheme not in ("http", "https"):
            raise ValueError(f"scheme: {self.scheme!r} must be http or https")
        if not (self.uri or self.authority or self.port or self.derive_port or self.scheme):
            raise ValueError("uri: a redirect needs at least one of uri, authority, port, derivePort, scheme")
        _check_values(uri=self.uri, authority=self.authority)
        return self


class HTTPBody(ApiModel):
    string: str | None = None
    bytes_: str | None = Field(default=None, alias="bytes")

    @model_validator(mode="after")
    def _one_of(self) -> HTTPBody:
        if self.string is not None and self.bytes_ is not None:
            raise ValueError("string: only one of string or bytes may be set")
        return self


class HTTPDirectResponse(ApiModel):
    status: int = Field(ge=200, le=599)
    body: HTTPBody | None = None


class Delegate(ApiModel):
    name: str = Field(min_length=1)
    namespace: str = ""


class RegexRewrite(ApiModel):
    match: str = Field(min_length=1)
    rewrite: str = ""

    @field_validator("match")
    @classmethod
    def _regex(cls, value: str) -> str:
        return check_regex(value)


class HTTPRewrite(ApiModel):
    uri: str = ""
    authority: str = ""
    uri_regex_rewrite: RegexRewrite | None = None

    @model_validator(mode="after")
    def _check(self) -> HTTPRewrite:
        if self.uri and self.uri_regex_rewrite is not None:
            raise ValueError("uriRegexRewrite: only one of uri or uriRegexRewrite may be set")
        if not (self.uri or self.authority or self.uri_regex_rewrite):
            raise ValueError("uri: a rewrite needs uri, authority or uriRegexRewrite")
        _check_values(uri=self.uri, authority=self.authority)
        return self


class HTTPRetry(ApiModel):
    attempts: int = Field(default=0, ge=0, le=2**31 - 1)
    per_try_timeout: Duration | None = None
    retry_on: str = ""
    retry_remote_localities: bool = False

    @field_validator("retry_on")
    @classmethod
    def _policies(cls, value: str) -> str:
        for policy in (p.strip() for p in value.split(",") if p.strip()):
            if policy in RETRY_ON:
                continue
            if policy.isdigit() and 100 <= int(policy) <= 599:
                continue
            raise ValueError(f"{policy!r} is neither an Envoy retry policy nor an HTTP status code")
        return value


class Percentage(ApiModel):
    value: Percent = 0.0


class FaultDelay(ApiModel):
    fixed_delay: Duration | None = None
    exponential_delay: str | None = None
    percentage: Percentage | None = None
    percent: int | None = Field(default=None, ge=0, le=100)  # deprecated integer form

    @model_validator(mode="after")
    def _check(self) -> FaultDelay:
        if self.exponential_delay is not None:
            raise ValueError("exponentialDelay: not supported (as in Istio); use fixedDelay")
        if self.fixed_delay is None:
            raise ValueError("fixedDelay: required")
        return self

    def rate(self) -> float:
        return _rate(self.percentage, self.percent)


def _rate(percentage: Percentage | None, percent: int | None) -> float:
    if percentage is not None:
        return percentage.value
    if percent is not None:
        return float(percent)
    return 100.0


class FaultAbort(ApiModel):
    http_status: int | None = None
    grpc_status: str | None = None
    http2_error: str | None = None
    percentage: Percentage | None = None

    @model_validator(mode="after")
    def _check(self) -> FaultAbort:
        chosen = [f for f in ("http_status", "grpc_status", "http2_error") if getattr(self, f) is not None]
        if len(chosen) != 1:
            raise ValueError("httpStatus: exactly one of httpStatus or grpcStatus is required")
        if self.http2_error is not None:
            raise ValueError("http2Error: not supported (as in Istio); use httpStatus or grpcStatus")
        if self.http_status is not None and not 200 <= self.http_status <= 599:
            raise ValueError(f"httpStatus: {self.http_status} is not an HTTP status in [200, 599]")
        if self.grpc_status is not None and self.grpc_status not in GRPC_STATUS:
            raise ValueError(f"grpcStatus: {self.grpc_status!r} is not a gRPC status name (e.g. UNAVAILABLE)")
        return self

    def rate(self) -> float:
        return _rate(self.percentage, None)


class HTTPFaultInjection(ApiModel):
    delay: FaultDelay | None = None
    abort: FaultAbort | None = None

    @model_validator(mode="after")
    def _check(self) -> HTTPFaultInjection:
        if self.delay is None and self.abort is None:
            raise ValueError("delay: a fault needs delay or abort")
        return self


class HTTPMirrorPolicy(ApiModel):
    destination: Destination
    percentage: Percentage | None = None


class CorsPolicy(ApiModel):
    allow_origins: list[StringMatch] = Field(default_factory=list)
    allow_origin: list[str] = Field(default_factory=list)  # deprecated: exact origins
    allow_methods: list[str] = Field(default_factory=list)
    allow_headers: list[str] = Field(default_factory=list)
    expose_headers: list[str] = Field(default_factory=list)
    max_age: Duration | None = None
    allow_credentials: bool | None = None
    unmatched_preflights: Literal["UNSPECIFIED", "FORWARD", "IGNORE"] = "UNSPECIFIED"

    @model_validator(mode="after")
    def _check(self) -> CorsPolicy:
        for i, origin in enumerate(self.allow_origins):
            if origin.empty:
                raise ValueError(f"allowOrigins[{i}]: one of exact, prefix, regex is required")
            if origin.prefix == "":
                raise ValueError(f"allowOrigins[{i}]: an empty prefix is not allowed (use regex: '.*')")
        for field in ("allow_headers", "expose_headers"):
            for i, name in enumerate(getattr(self, field)):
                if not _HEADER_NAME.match(name):
                    raise ValueError(f"{_camel(field)}[{i}]: {name!r} is not a valid HTTP header name")
        for i, method in enumerate(self.allow_methods):
            if not method or not _HEADER_NAME.match(method):
                raise ValueError(f"allowMethods[{i}]: {method!r} is not an HTTP method")
        return self


class HTTPRoute(ApiModel):
    name: str = ""
    match: list[HTTPMatchRequest] = Field(default_factory=list)
    route: list[HTTPRouteDestination] = Field(default_factory=list)
    redirect: HTTPRedirect | None = None
    direct_response: HTTPDirectResponse | None = None
    delegate: Delegate | None = None
    rewrite: HTTPRewrite | None = None
    timeout: DurationOrZero | None = None
    retries: HTTPRetry | None = None
    fault: HTTPFaultInjection | None = None
    mirror: Destination | None = None
    mirrors: list[HTTPMirrorPolicy] = Field(default_factory=list)
    mirror_percentage: Percentage | None = None
    mirror_percent: int | None = Field(default=None, ge=0, le=100)  # deprecated integer form
    cors_policy: CorsPolicy | None = None
    headers: Headers | None = None

    @model_validator(mode="after")
    def _check(self) -> HTTPRoute:
        actions = [f for f in ("route", "redirect", "direct_response", "delegate") if getattr(self, f)]
        if not actions:
            raise ValueError("route: one of route, redirect, directResponse or delegate is required")
        if self.redirect is not None and self.direct_response is not None:
            raise ValueError("redirect: only one of redirect or directResponse may be set")
        if self.route and (self.redirect is not None or self.direct_response is not None):
            raise ValueError("route: a route cannot also redirect or answer directly")
        if self.delegate is not None and len(actions) > 1:
            raise ValueError("delegate: a delegating route cannot also route, redirect or answer")
        if self.redirect is not None and self.rewrite is not None:
            raise ValueError("rewrite: a redirect cannot be combined with a rewrite")
        if self.mirror is not None and self.mirrors:
            raise ValueError("mirrors: only one of mirror or mirrors may be set")
        # As Istio does today: weights that do not add up to 100 are relative (Envoy divides by their sum);
        # only a total of 0 (nowhere to send traffic) is refused.
        check_weights([d.weight for d in self.route])
        return self

    def weights(self) -> list[int]:
        """Effective weights: a single destination gets 100."""
        if len(self.route) == 1:
            return [100]
        return [d.weight for d in self.route]


class VirtualServiceSpec(ApiModel):
    hosts: list[str] = Field(default_factory=list)
    gateways: list[str] = Field(default_factory=list)
    http: list[HTTPRoute] = Field(default_factory=list)
    tcp: list[TCPRoute] = Field(default_factory=list)
    tls: list[TLSRoute] = Field(default_factory=list)
    export_to: list[str] = Field(default_factory=list)

    @model_validator(mode="after")
    def _check(self) -> VirtualServiceSpec:
        for i, host in enumerate(self.hosts):
            if not host:
                raise ValueError(f"hosts[{i}]: a host cannot be empty")
            if "/" in host:
                raise ValueError(f"hosts[{i}]: {host!r} must be a host name, not <namespace>/<host>")
            if "*" in host and host != "*" and (not host.startswith("*") or "*" in host[1:]):
                raise ValueError(f"hosts[{i}]: {host!r}: a wildcard is only allowed as the leftmost label")
        for i, gateway in enumerate(self.gateways):
            namespace, slash, name = gateway.partition("/")
            if not gateway or (slash and (not namespace or not name or "/" in name)):
                raise ValueError(f"gateways[{i}]: {gateway!r} must be <gateway name>, <namespace>/<name> or mesh")
        if self.is_delegate and (self.tcp or self.tls):
            raise ValueError("tcp: a delegate VirtualService (without hosts) may only have http routes")
        check_sni_hosts(self.tls, self.hosts)
        return self

    @property
    def is_delegate(self) -> bool:
        """A VirtualService without hosts is a delegate: only reachable from another's `delegate`."""
        return not self.hosts


class VirtualService(Resource):
    kind: Literal["VirtualService"]
    spec: VirtualServiceSpec
