"""Untrusted values in logs and in messages echoed to clients: quoted, every control character escaped
(a newline never forges a log line), truncated (a huge value never floods the log)."""

from __future__ import annotations

import json

LIMIT = 200


def quoted(value: object, limit: int = LIMIT) -> str:
    """`value` as a JSON string literal of at most `limit` characters of it, then how many were cut."""
    text = value if isinstance(value, str) else str(value)
    shown = json.dumps(text[:limit], ensure_ascii=True)
    return shown if len(text) <= limit else f"{shown}...(+{len(text) - limit} chars)"
