"""How the RBAC rules meshd serves decide one request or connection, for `meshd explain`: Envoy's RBAC
permissions and principals evaluated three-valued against what explain knows of the call (True, False, or
unknown: the caller's identity when not given, JWT claims, filter metadata). Pure: protos in, values out."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from envoy.config.core.v3 import address_pb2
from envoy.config.rbac.v3 import rbac_pb2
from envoy.config.route.v3 import route_components_pb2
from envoy.type.matcher.v3 import string_pb2

Tri = bool | None  # True, False, or unknown


@dataclass(frozen=True)
class Call:
    """The request as the server proxy sees it."""

    host: str
    path: str
    method: str
    headers: Mapping[str, str]
    server_ip: str
    server_port: int
    client_ip: str
    client_identity: str | None  # the SPIFFE identity the client presents over mTLS; None: not known
    mtls: bool  # the client's cluster sends mutual TLS
    sni: str
    service_port: int = 0  # the port the client addressed (the Host's port on a listener shared by ports)


def evaluate(rules: rbac_pb2.RBAC, call: Call) -> tuple[str, str]:
    """(the first policy that matches, the first whose match is unknown), by name order as Envoy."""
    unknown = ""
    for name in sorted(rules.policies):
        policy = rules.policies[name]
        result = _and(_or(_permission(p, call) for p in policy.permissions),
                      _or(_principal(p, call) for p in policy.principals))  # fmt: skip
        if result is True:
            return name, unknown
        if result is None and not unknown:
            unknown = name
    return "", unknown


def _or(values: Iterable[Tri]) -> Tri:
    seen_unknown = False
    for v in values:
        if v is True:
            return True
        seen_unknown |= v is None
    return None if seen_unknown else False


def _and(*values: Tri) -> Tri:
    if any(v is False for v in values):
        return False
    return None if any(v is None for v in values) else True


def _not(value: Tri) -> Tri:
    return None if value is None else not value


def _permission(p: rbac_pb2.Permission, call: Call) -> Tri:
    which = p.WhichOneof("rule")
    nested: dict[str, Callable[[], Tri]] = {
        "any": lambda: p.any,
        "and_rules": lambda: _and(*(_permission(r, call) for r in p.and_rules.rules)),
        "or_rules": lambda: _or(_permission(r, call) for r in p.or_rules.rules),
        "not_rule": lambda: _not(_permission(p.not_rule, call)),
        "header": lambda: _header(p.header, call),
        "url_path": lambda: _string(p.url_path.path, call.path.split("?", 1)[0]),
        "destination_port": lambda: p.destination_port == call.server_port,
        "destination_ip": lambda: _in_cidr(call.server_ip, p.destination_ip),
        "requested_server_name": lambda: _string(p.requested_server_name, call.sni),
    }
    return nested[which]() if which in nested else None


def _principal(p: rbac_pb2.Principal, call: Call) -> Tri:
    which = p.WhichOneof("identifier")
    identity = call.client_identity if call.mtls else ""
    nested: dict[str, Callable[[], Tri]] = {
        "any": lambda: p.any,
        "and_ids": lambda: _and(*(_principal(i, call) for i in p.and_ids.ids)),
        "or_ids": lambda: _or(_principal(i, call) for i in p.or_ids.ids),
        "not_id": lambda: _not(_principal(p.not_id, call)),
        "authenticated": lambda: None if identity is None else bool(identity) and _string(
            p.authenticated.principal_name, identity),
        "direct_remote_ip": lambda: _in_cidr(call.client_ip, p.direct_remote_ip),
        "remote_ip": lambda: _in_cidr(call.client_ip, p.remote_ip),
        "source_ip": lambda: _in_cidr(call.client_ip, p.source_ip),
        "header": lambda: _header(p.header, call),
        "url_path": lambda: _string(p.url_path.path, call.path.split("?", 1)[0]),
    }  # fmt: skip
    return nested[which]() if which in nested else None


def _header(h: route_components_pb2.HeaderMatcher, call: Call) -> Tri:
    headers = {k.lower(): v for k, v in call.headers.items()} | {
        ":method": call.method, ":authority": call.host, ":path": call.path, "host": call.host}  # fmt: skip
    value = headers.get(h.name.lower())
    which = h.WhichOneof("header_match_specifier")
    if which == "present_match":
        result: Tri = (value is not None) == h.present_match
    elif value is None:
        result = False
    elif which == "string_match":
        result = _string(h.string_match, value)
    else:
        return None
    return _not(result) if h.invert_match else result


def _string(m: string_pb2.StringMatcher, value: str) -> bool:
    which = m.WhichOneof("match_pattern")
    subject = value.lower() if m.ignore_case else value
    pattern = getattr(m, which) if which in ("exact", "prefix", "suffix", "contains") else ""
    pattern = pattern.lower() if m.ignore_case else pattern
    if which == "exact":
        return subject == pattern
    if which == "prefix":
        return subject.startswith(pattern)
    if which == "suffix":
        return subject.endswith(pattern)
    if which == "contains":
        return pattern in subject
    if which == "safe_regex":
        return re.fullmatch(m.safe_regex.regex, value) is not None
    return False


def _in_cidr(ip: str, cidr: address_pb2.CidrRange) -> bool:
    length = cidr.prefix_len.value if cidr.HasField("prefix_len") else None
    try:
        network = ipaddress.ip_network(
            cidr.address_prefix if length is None else f"{cidr.address_prefix}/{length}", strict=False
        )
        return ipaddress.ip_address(ip) in network
    except ValueError:
        return False
