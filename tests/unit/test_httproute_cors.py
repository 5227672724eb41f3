"""The HTTPRoute CORS filter (GEP-1767): which origins its patterns admit, and what is refused by name."""

from __future__ import annotations

import re
from typing import Any

import pytest
from pydantic import ValidationError

from meshd.api.httproute_cors import CORSFilter
from meshd.model.gateway_api.cors import cors_policy


def _admits(cors: CORSFilter, origin: str) -> bool:
    return any(re.fullmatch(p, origin) for p in cors.origin_patterns())


def test_origins_match_as_the_specification_says() -> None:
    cors = CORSFilter(allow_origins=["https://*.example.com", "http://app.test:8080", "https://plain.test"])
    for origin in ("https://a.example.com", "https://a.b.example.com", "http://app.test:8080", "https://plain.test",
                   "https://plain.test:443"):  # fmt: skip
        assert _admits(cors, origin), origin
    for origin in ("https://example.com", "http://a.example.com", "https://a.example.com.evil.test", "http://app.test",
                   "https://plain.test:8443", "https://plainXtest"):  # fmt: skip
        assert not _admits(cors, origin), origin
    assert _admits(CORSFilter(allow_origins=["*"]), "http://anything.test:1")


def test_the_policy_carries_the_lists_max_age_and_credentials() -> None:
    policy = cors_policy(CORSFilter(allow_origins=["*"], allow_methods=["GET"], allow_credentials=False))
    assert policy == {
        "allowOrigins": [{"regex": ".*"}],
        "maxAge": "5s",
        "allowMethods": ["GET"],
        "allowCredentials": False,
    }


@pytest.mark.parametrize(
    ("spec", "words"),
    [
        ({"allowOrigins": ["*", "https://a.test"]}, "allowOrigins: '*' cannot be given alongside"),
        ({"allowMethods": ["*", "GET"]}, "allowMethods: '*' cannot be given alongside"),
        ({"allowOrigins": ["ftp://a.test"]}, "allowOrigins[0]: 'ftp://a.test' is not"),
        ({"allowOrigins": ["https://a.*.test"]}, "allowOrigins[0]"),
        ({"allowHeaders": ["x y"]}, "allowHeaders[0]: 'x y' is not a valid name"),
        ({"exposeHeaders": ["*"], "allowCredentials": True}, "exposeHeaders: '*' is only allowed"),
        ({"maxAge": 0}, "maxAge"),
    ],
)
def test_invalid_filters_are_refused_naming_the_field(spec: dict[str, Any], words: str) -> None:
    with pytest.raises(ValidationError, match=re.escape(words)):
        CORSFilter.model_validate(spec)
