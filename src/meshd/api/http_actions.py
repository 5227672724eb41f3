"""What a VirtualService HTTP route does besides matching: header operations, redirects, direct
responses, delegation, rewrites, retries, mirroring and CORS, validated as Istio does plus what Envoy
would otherwise reject."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from meshd.api.destination import MAX_WEIGHT, Destination
from meshd.api.http_fault import Percentage
from meshd.api.http_match import (
    HEADER_NAME,
    RESERVED_HEADERS,
    StringMatch,
    camel,
    check_header_name,
    check_header_value,
)
from meshd.api.meta import StrictModel
from meshd.api.values import Duration, PortNumber, check_regex

RETRY_ON = frozenset(
    {
        "5xx", "gateway-error", "reset", "reset-before-request", "connect-failure", "envoy-ratelimited",
        "retriable-4xx", "refused-stream", "retriable-status-codes", "retriable-headers",
        "http3-post-connect-failure", "cancelled", "deadline-exceeded", "internal", "resource-exhausted",
        "unavailable",
    }
)  # fmt: skip
REDIRECT_CODES = (301, 302, 303, 307, 308)


def _check_values(**values: str) -> None:
    """Paths and authorities end up in request headers: the same characters are refused."""
    for field, value in values.items():
        try:
            check_header_value(value)
        except ValueError as err:
            raise ValueError(f"{field}: {err}") from None


class HeaderOperations(StrictModel):
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
                if name.lower() in RESERVED_HEADERS:
                    raise ValueError(f"{field}.{name}: the {name} header cannot be modified (use rewrite.authority)")
        for field, values in (("set", self.set), ("add", self.add)):
            for name, value in values.items():
                try:
                    check_header_value(value)
                except ValueError as err:
                    raise ValueError(f"{field}.{name}: {err}") from None
        return self


class Headers(StrictModel):
    request: HeaderOperations | None = None
    response: HeaderOperations | None = None


class HTTPRouteDestination(StrictModel):
    destination: Destination
    weight: int = Field(default=0, ge=0, le=MAX_WEIGHT)
    headers: Headers | None = None


# A redirect `uri` starting with this replaces the path's matched prefix rather than the whole path (Envoy's
# `prefix_rewrite` of a redirect): how a Gateway API redirect's ReplacePrefixMatch reaches the route, as in Istio
# (which honours it only in VirtualServices converted from the Gateway API; meshd in any).
PREFIX_REDIRECT = "%PREFIX()%"


class HTTPRedirect(StrictModel):
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


class HTTPBody(StrictModel):
    string: str | None = None
    bytes_: str | None = Field(default=None, alias="bytes")

    @model_validator(mode="after")
    def _one_of(self) -> HTTPBody:
        if self.string is not None and self.bytes_ is not None:
            raise ValueError("string: only one of string or bytes may be set")
        return self


class HTTPDirectResponse(StrictModel):
    status: int = Field(ge=200, le=599)
    body: HTTPBody | None = None


class Delegate(StrictModel):
    name: str = Field(min_length=1)
    namespace: str = ""


class RegexRewrite(StrictModel):
    match: str = Field(min_length=1)
    rewrite: str = ""

    @field_validator("match")
    @classmethod
    def _regex(cls, value: str) -> str:
        return check_regex(value)


class HTTPRewrite(StrictModel):
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


class HTTPRetry(StrictModel):
    attempts: int = Field(default=0, ge=0, le=2**31 - 1)
    per_try_timeout: Duration | None = None
    retry_on: str = ""
    retry_remote_localities: bool = False
    # the minimum time between tries: Envoy's retry back-off base interval (its maximum: 10 times it, Envoy's
    # default, as Istio sets only the base); at least 1ms
    backoff: Duration | None = None

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


class HTTPMirrorPolicy(StrictModel):
    destination: Destination
    percentage: Percentage | None = None


class CorsPolicy(StrictModel):
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
                if not HEADER_NAME.match(name):
                    raise ValueError(f"{camel(field)}[{i}]: {name!r} is not a valid HTTP header name")
        for i, method in enumerate(self.allow_methods):
            if not method or not HEADER_NAME.match(method):
                raise ValueError(f"allowMethods[{i}]: {method!r} is not an HTTP method")
        return self
