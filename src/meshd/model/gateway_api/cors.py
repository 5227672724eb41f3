"""An HTTPRoute rule's CORS filter as the VirtualService route's `corsPolicy` (what Envoy's CORS filter does
for it): origins as regular expressions over the whole `Origin` (`api/httproute_cors.py`), the method and header
lists as given, `maxAge` in seconds (5 when left out), `allowCredentials`."""

from __future__ import annotations

from typing import Any

from meshd.api.httproute_cors import CORSFilter


def cors_policy(cors: CORSFilter) -> dict[str, Any]:
    out: dict[str, Any] = {
        "allowOrigins": [{"regex": pattern} for pattern in cors.origin_patterns()],
        "maxAge": f"{cors.max_age}s",
    }
    for field, values in (
        ("allowMethods", cors.allow_methods),
        ("allowHeaders", cors.allow_headers),
        ("exposeHeaders", cors.expose_headers),
    ):
        if values:
            out[field] = list(values)
    if cors.allow_credentials is not None:
        out["allowCredentials"] = cors.allow_credentials
    return out
