"""A small evaluator of the Envoy RBAC matchers meshd generates, for unit tests: decides a Principal or a
Permission against a request described as a dict, the way Envoy's RBAC engine does for the matcher kinds
used (and raises on any other kind, so a test never passes by ignoring what it does not understand).

request = {
    "principal": SPIFFE URI of the mTLS peer or None (plaintext),
    "source_ip": "10.0.0.1", "remote_ip": ..., "destination_ip": ..., "destination_port": 8080, "sni": "...",
    "headers": {"name": "joined,values"} (lower-case names; ":method", ":authority" included),
    "path": "/a/b" (without query),
    "metadata": {"envoy.filters.http.jwt_authn": {"payload": {...}}, ...},
}
"""

from __future__ import annotations

import ipaddress
from typing import Any

import re2
from envoy.config.rbac.v3 import rbac_pb2
from envoy.type.matcher.v3 import string_pb2, value_pb2

Request = dict[str, Any]


def string_matches(matcher: string_pb2.StringMatcher, value: str | None) -> bool:
    if value is None:
        return False
    kind = matcher.WhichOneof("match_pattern")
    text, pattern = (value.lower(), None) if matcher.ignore_case else (value, None)
    del pattern
    if kind == "exact":
        return text == (matcher.exact.lower() if matcher.ignore_case else matcher.exact)
    if kind == "prefix":
        return text.startswith(matcher.prefix.lower() if matcher.ignore_case else matcher.prefix)
    if kind == "suffix":
        return text.endswith(matcher.suffix.lower() if matcher.ignore_case else matcher.suffix)
    if kind == "contains":
        return (matcher.contains.lower() if matcher.ignore_case else matcher.contains) in text
    if kind == "safe_regex":
        return re2.fullmatch(matcher.safe_regex.regex, value) is not None
    raise AssertionError(f"string matcher {kind} not understood")


def _in_cidr(address: str | None, cidr: Any) -> bool:
    if address is None:
        return False
    network = ipaddress.ip_network(f"{cidr.address_prefix}/{cidr.prefix_len.value}", strict=False)
    return ipaddress.ip_address(address) in network


def value_matches(matcher: value_pb2.ValueMatcher, value: Any) -> bool:
    kind = matcher.WhichOneof("match_pattern")
    if kind == "present_match":
        return value is not None
    if kind == "string_match":
        return isinstance(value, str) and string_matches(matcher.string_match, value)
    if kind == "list_match":
        return isinstance(value, list) and any(value_matches(matcher.list_match.one_of, v) for v in value)
    raise AssertionError(f"value matcher {kind} not understood")


def _metadata(matcher: Any, request: Request) -> bool:
    value: Any = request.get("metadata", {}).get(matcher.filter)
    for segment in matcher.path:
        value = value.get(segment.key) if isinstance(value, dict) else None
    return value_matches(matcher.value, value)


def _header(matcher: Any, request: Request) -> bool:
    value = request.get("headers", {}).get(matcher.name)
    kind = matcher.WhichOneof("header_match_specifier")
    if kind == "present_match":
        found = value is not None
    elif kind == "string_match":
        found = string_matches(matcher.string_match, value)
    else:
        raise AssertionError(f"header matcher {kind} not understood")
    return found != matcher.invert_match


def principal(p: rbac_pb2.Principal, request: Request) -> bool:
    kind = p.WhichOneof("identifier")
    if kind == "any":
        return True
    if kind == "and_ids":
        return all(principal(i, request) for i in p.and_ids.ids)
    if kind == "or_ids":
        return any(principal(i, request) for i in p.or_ids.ids)
    if kind == "not_id":
        return not principal(p.not_id, request)
    if kind == "authenticated":
        return string_matches(p.authenticated.principal_name, request.get("principal"))
    if kind == "direct_remote_ip":
        return _in_cidr(request.get("source_ip"), p.direct_remote_ip)
    if kind == "remote_ip":
        return _in_cidr(request.get("remote_ip", request.get("source_ip")), p.remote_ip)
    if kind == "header":
        return _header(p.header, request)
    if kind == "metadata":
        return _metadata(p.metadata, request)
    raise AssertionError(f"principal {kind} not understood")


def permission(p: rbac_pb2.Permission, request: Request) -> bool:
    kind = p.WhichOneof("rule")
    if kind == "any":
        return True
    if kind == "and_rules":
        return all(permission(r, request) for r in p.and_rules.rules)
    if kind == "or_rules":
        return any(permission(r, request) for r in p.or_rules.rules)
    if kind == "not_rule":
        return not permission(p.not_rule, request)
    if kind == "header":
        return _header(p.header, request)
    if kind == "url_path":
        return string_matches(p.url_path.path, request.get("path"))
    if kind == "destination_port":
        return bool(request.get("destination_port") == p.destination_port)
    if kind == "destination_ip":
        return _in_cidr(request.get("destination_ip"), p.destination_ip)
    if kind == "requested_server_name":
        return string_matches(p.requested_server_name, request.get("sni"))
    raise AssertionError(f"permission {kind} not understood")


def policy(p: rbac_pb2.Policy, request: Request) -> bool:
    """Envoy: a policy matches when any permission and any principal match."""
    return any(permission(x, request) for x in p.permissions) and any(principal(x, request) for x in p.principals)
