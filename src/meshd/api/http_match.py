"""VirtualService HTTP matching: string matches (exact / prefix / regex), a route's match conditions,
and the HTTP header name and value rules Envoy applies (shared by the header operations)."""

from __future__ import annotations

import re

from pydantic import Field, model_validator

from meshd.api.meta import StrictModel, refused
from meshd.api.values import PortNumber, check_regex

HEADER_NAME = re.compile(r"^[!#$%&'*+\-.^_`|~0-9a-zA-Z]+$")
RESERVED_HEADERS = ("host",)


def check_header_name(name: str) -> str:
    if not HEADER_NAME.match(name):
        raise ValueError(f"{name!r} is not a valid HTTP header name")
    return name


def check_header_value(value: str) -> str:
    if any(c in value for c in "\0\r\n"):
        raise ValueError(f"header value {value!r} contains a NUL, CR or LF")
    return value


class StringMatch(StrictModel):
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


class HTTPMatchRequest(StrictModel):
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
    stat_prefix: str | None = refused("meshd generates no per-route statistics")

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
                    raise ValueError(f"{camel(field)}.{name}: {err}") from None
        for name, match in self.query_params.items():
            if match.prefix is not None:
                raise ValueError(f"queryParams.{name}: prefix match is not supported for query parameters")
        if self.uri is not None and self.uri.exact is not None and not self.uri.exact.startswith("/"):
            pass  # Istio allows it; Envoy matches it literally (never matches a path)
        return self


def camel(field: str) -> str:
    head, *rest = field.split("_")
    return head + "".join(p.title() for p in rest)
