"""Who called: the caller's SPIFFE identity as its sidecar's mTLS certificate told the app's sidecar,
read from the `x-forwarded-client-cert` header (Envoy's XFCC: comma-separated elements of
`;`-separated `Key=value` pairs, values double-quoted when they hold `,;=` or quotes)."""

from __future__ import annotations

XFCC_HEADER = "x-forwarded-client-cert"


def _split(text: str, separator: str) -> list[str]:
    parts, current, quoted, escaped = [], [], False, False
    for char in text:
        if escaped:
            current.append(char)
            escaped = False
        elif char == "\\" and quoted:
            current.append(char)
            escaped = True
        elif char == '"':
            quoted = not quoted
            current.append(char)
        elif char == separator and not quoted:
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    parts.append("".join(current))
    return parts


def xfcc_elements(header: str) -> list[dict[str, str]]:
    """Each element (one per mTLS hop, oldest first) as {key: value}; keys lower-cased, quotes removed."""
    elements = []
    for element in _split(header, ","):
        pairs: dict[str, str] = {}
        for pair in _split(element, ";"):
            key, sep, value = pair.strip().partition("=")
            if sep:
                value = value.strip()
                if len(value) >= 2 and value[0] == value[-1] == '"':
                    value = value[1:-1].replace('\\"', '"')
                pairs.setdefault(key.lower(), value)
        if pairs:
            elements.append(pairs)
    return elements


def peer_identity(header: str | None) -> str | None:
    """The immediate caller's identity: the URI of the last element (the one its sidecar appended)."""
    if not header:
        return None
    elements = xfcc_elements(header)
    return elements[-1].get("uri") if elements else None
