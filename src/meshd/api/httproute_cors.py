"""The CORS filter of an HTTPRoute rule (Gateway API GEP-1767, `type: CORS`), as meshd reads it.

`allowOrigins`: `*` alone, or `<scheme>://<host>(:<port>)` with scheme http or https, whose host may start
with the wildcard label `*.` (any number of labels to its left). `allowMethods`, `allowHeaders`,
`exposeHeaders`: names, or `*` alone. `maxAge`: seconds, 5 when left out. A `*` in methods or headers is
answered with the preflight's own `Access-Control-Request-Method` / `-Headers` (what Envoy's CORS filter does,
and what the specification asks for with `allowCredentials: true`). A `*` in `exposeHeaders` with
`allowCredentials: true` has no meaning for a browser (the specification allows it only without credentials):
refused by name."""

from __future__ import annotations

import re

from pydantic import Field, model_validator

from meshd.api.meta import StrictModel

_ORIGIN = re.compile(
    r"^(http|https)://(\*|(\*\.)?[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?)*)(:[0-9]{1,5})?$"
)
_TOKEN = re.compile(r"^[A-Za-z0-9!#$%&'*+\-.^_`|~]+$")
_DEFAULT_PORTS = {"http": "80", "https": "443"}


class CORSFilter(StrictModel):
    allow_origins: list[str] = Field(default_factory=list, max_length=64)
    allow_credentials: bool | None = None
    allow_methods: list[str] = Field(default_factory=list, max_length=9)
    allow_headers: list[str] = Field(default_factory=list, max_length=64)
    expose_headers: list[str] = Field(default_factory=list, max_length=64)
    max_age: int = Field(default=5, ge=1)

    @model_validator(mode="after")
    def _check(self) -> CORSFilter:
        for field, values in (
            ("allowOrigins", self.allow_origins),
            ("allowMethods", self.allow_methods),
            ("allowHeaders", self.allow_headers),
            ("exposeHeaders", self.expose_headers),
        ):
            if "*" in values and len(values) > 1:
                raise ValueError(f"{field}: '*' cannot be given alongside other values")
        if "*" in self.expose_headers and self.allow_credentials:
            raise ValueError("exposeHeaders: '*' is only allowed when allowCredentials is not true")
        for i, origin in enumerate(self.allow_origins):
            if origin != "*" and not _ORIGIN.match(origin):
                raise ValueError(f"allowOrigins[{i}]: {origin!r} is not <scheme>://<host>(:<port>) (http or https)")
        for field, values in (
            ("allowMethods", self.allow_methods),
            ("allowHeaders", self.allow_headers),
            ("exposeHeaders", self.expose_headers),
        ):
            for i, value in enumerate(values):
                if not _TOKEN.match(value):
                    raise ValueError(f"{field}[{i}]: {value!r} is not a valid name")
        return self

    def origin_patterns(self) -> list[str]:
        """Each allowed origin as a regular expression over the whole `Origin` header: `*` any; a host's `*.`
        any labels to its left; a default port (80 for http, 443 for https) matched whether written or not."""
        out = []
        for origin in self.allow_origins:
            if origin == "*":
                out.append(".*")
                continue
            scheme, _, rest = origin.partition("://")
            host, _, port = rest.partition(":")
            pattern = re.escape(scheme) + "://"
            if host == "*":
                pattern += r"[A-Za-z0-9.\-]+"
            elif host.startswith("*."):
                pattern += r"[A-Za-z0-9.\-]+\." + re.escape(host[2:])
            else:
                pattern += re.escape(host)
            default = _DEFAULT_PORTS[scheme]
            if port in ("", default):
                pattern += f"(:{default})?"
            else:
                pattern += ":" + port
            out.append(pattern)
        return out
