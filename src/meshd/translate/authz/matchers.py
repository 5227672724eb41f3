"""One value of an AuthorizationPolicy -> Envoy RBAC matchers, with Istio's string forms:
`abc` exact, `abc*` prefix, `*abc` suffix, `*` presence (any non-empty value).

- principals (`source.principal`): the peer certificate's SPIFFE URI, `spiffe://<trust domain>/ns/<ns>/sa/<sa>`,
  written without the scheme; a principal in the mesh's trust domain or one of its aliases matches in
  each of them. Only an mTLS peer has one (`authenticated`): a plaintext connection matches none.
- namespaces (`source.namespace`): the `/ns/<ns>/` part of the peer's SPIFFE URI.
- request principals (`iss/sub`), `request.auth.*`: the verified JWT's payload, which the jwt_authn filter
  (before RBAC) writes to dynamic metadata `envoy.filters.http.jwt_authn`, key `payload`: `iss/sub` is split
  at each `/` it could be split at (an issuer holds slashes), so the match is exactly Istio's string match
  on `<iss>/<sub>`; audiences and claims match a string value or a list value containing the string.
- headers (`request.headers[...]`): Envoy joins repeated headers with `,`; as Istio, a value matches when it
  is one of the joined values (exact, prefix or suffix of one of them).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence

from envoy.config.core.v3 import address_pb2
from envoy.config.rbac.v3 import rbac_pb2
from envoy.config.route.v3 import route_components_pb2
from envoy.type.matcher.v3 import metadata_pb2, path_pb2, regex_pb2, string_pb2, value_pb2
from google.protobuf import wrappers_pb2

from meshd.api.authorization import is_path_template, template_regex

JWT_FILTER = "envoy.filters.http.jwt_authn"
JWT_PAYLOAD = "payload"
SPIFFE = "spiffe://"
_RE2_SPECIAL = frozenset("\\.^$|?*+()[]{}")


def re2_escape(text: str) -> str:
    return "".join(f"\\{c}" if c in _RE2_SPECIAL else c for c in text)


def regex(pattern: str) -> string_pb2.StringMatcher:
    return string_pb2.StringMatcher(safe_regex=regex_pb2.RegexMatcher(regex=pattern))


def string(value: str, *, ignore_case: bool = False) -> string_pb2.StringMatcher:
    """Istio's forms: `*` presence, `*x` suffix, `x*` prefix, else exact."""
    if value == "*":
        return regex(".+")
    if value.startswith("*"):
        return string_pb2.StringMatcher(suffix=value[1:], ignore_case=ignore_case)
    if value.endswith("*"):
        return string_pb2.StringMatcher(prefix=value[:-1], ignore_case=ignore_case)
    return string_pb2.StringMatcher(exact=value, ignore_case=ignore_case)


# -- combinators ---------------------------------------------------------------------------------------

ANY_PRINCIPAL = rbac_pb2.Principal(any=True)
ANY_PERMISSION = rbac_pb2.Permission(any=True)


def any_of(ids: Sequence[rbac_pb2.Principal]) -> rbac_pb2.Principal:
    return ids[0] if len(ids) == 1 else rbac_pb2.Principal(or_ids=rbac_pb2.Principal.Set(ids=ids))


def all_of(ids: Sequence[rbac_pb2.Principal]) -> rbac_pb2.Principal:
    if not ids:
        return ANY_PRINCIPAL
    return ids[0] if len(ids) == 1 else rbac_pb2.Principal(and_ids=rbac_pb2.Principal.Set(ids=ids))


def none_of(ids: Sequence[rbac_pb2.Principal]) -> rbac_pb2.Principal:
    return rbac_pb2.Principal(not_id=any_of(ids))


def any_rule(rules: Sequence[rbac_pb2.Permission]) -> rbac_pb2.Permission:
    return rules[0] if len(rules) == 1 else rbac_pb2.Permission(or_rules=rbac_pb2.Permission.Set(rules=rules))


def all_rules(rules: Sequence[rbac_pb2.Permission]) -> rbac_pb2.Permission:
    if not rules:
        return ANY_PERMISSION
    return rules[0] if len(rules) == 1 else rbac_pb2.Permission(and_rules=rbac_pb2.Permission.Set(rules=rules))


def no_rule(rules: Sequence[rbac_pb2.Permission]) -> rbac_pb2.Permission:
    return rbac_pb2.Permission(not_rule=any_rule(rules))


NEVER_PRINCIPAL = rbac_pb2.Principal(not_id=ANY_PRINCIPAL)


# -- peer identity (mTLS) ------------------------------------------------------------------------------


def _authenticated(matcher: string_pb2.StringMatcher) -> rbac_pb2.Principal:
    return rbac_pb2.Principal(authenticated=rbac_pb2.Principal.Authenticated(principal_name=matcher))


def trust_domains(value: str, bundle: Sequence[str]) -> list[str]:
    """A principal as written (`<td>/ns/<ns>/sa/<sa>`) in each trust domain of the bundle (the mesh's and
    its aliases) when its own is one of them; else as it is."""
    domain, sep, rest = value.partition("/")
    if sep and domain in bundle:
        return [f"{d}/{rest}" for d in bundle]
    return [value]


def principal(value: str, *, bundle: Sequence[str]) -> rbac_pb2.Principal:
    """`source.principal` / `principals`: the peer certificate's SPIFFE URI."""
    if value == "*":
        return _authenticated(regex(".+"))
    if value.startswith("*"):
        return _authenticated(string_pb2.StringMatcher(suffix=value[1:]))
    if value.endswith("*"):
        forms = trust_domains(value[:-1], bundle)
        return any_of([_authenticated(string_pb2.StringMatcher(prefix=SPIFFE + f)) for f in forms])
    return any_of([_authenticated(string_pb2.StringMatcher(exact=SPIFFE + f)) for f in trust_domains(value, bundle)])


def namespace(value: str) -> rbac_pb2.Principal:
    """`source.namespace` / `namespaces`: the namespace part of the peer's SPIFFE URI."""
    if value == "*":
        part = "[^/]+"
    elif value.startswith("*"):
        part = "[^/]*" + re2_escape(value[1:])
    elif value.endswith("*"):
        part = re2_escape(value[:-1]) + "[^/]*"
    else:  # no regex: a namespace is up to 63 characters, too long for a small RE2 program
        return all_of(
            [
                _authenticated(string_pb2.StringMatcher(prefix=SPIFFE)),
                _authenticated(string_pb2.StringMatcher(contains=f"/ns/{value}/sa/")),
            ]
        )
    return _authenticated(regex(f"spiffe://[^/]*/ns/{part}/sa/.*"))


# -- addresses and ports -------------------------------------------------------------------------------


def cidr(value: str) -> address_pb2.CidrRange:
    network = ipaddress.ip_network(value, strict=False)
    return address_pb2.CidrRange(
        address_prefix=str(network.network_address), prefix_len=wrappers_pb2.UInt32Value(value=network.prefixlen)
    )


def source_ip(value: str) -> rbac_pb2.Principal:
    """`ipBlocks` / `source.ip`: the connection's peer address."""
    return rbac_pb2.Principal(direct_remote_ip=cidr(value))


def remote_ip(value: str) -> rbac_pb2.Principal:
    """`remoteIpBlocks` / `remote.ip`: the client address after X-Forwarded-For / PROXY protocol processing."""
    return rbac_pb2.Principal(remote_ip=cidr(value))


def destination_ip(value: str) -> rbac_pb2.Permission:
    return rbac_pb2.Permission(destination_ip=cidr(value))


def destination_port(value: str) -> rbac_pb2.Permission:
    return rbac_pb2.Permission(destination_port=int(value))


def sni(value: str) -> rbac_pb2.Permission:
    return rbac_pb2.Permission(requested_server_name=string(value))


# -- HTTP ----------------------------------------------------------------------------------------------


def _joined_value_forms(value: str) -> list[string_pb2.StringMatcher]:
    """The matchers for one of Envoy's comma-joined header values matching Istio's form of `value`."""
    if value.startswith("*") and value != "*":
        return [string_pb2.StringMatcher(suffix=value[1:]), string_pb2.StringMatcher(contains=f"{value[1:]},")]
    if value.endswith("*") and value != "*":
        return [string_pb2.StringMatcher(prefix=value[:-1]), string_pb2.StringMatcher(contains=f",{value[:-1]}")]
    return [
        string_pb2.StringMatcher(exact=value),
        string_pb2.StringMatcher(prefix=f"{value},"),
        string_pb2.StringMatcher(suffix=f",{value}"),
        string_pb2.StringMatcher(contains=f",{value},"),
    ]


def header(name: str, value: str) -> rbac_pb2.Principal:
    """`request.headers[<name>]`: a request header (names compare case-insensitively: Envoy lower-cases them)."""
    name = name.lower()
    if value == "*":
        return rbac_pb2.Principal(header=route_components_pb2.HeaderMatcher(name=name, present_match=True))
    return any_of(
        [
            rbac_pb2.Principal(header=route_components_pb2.HeaderMatcher(name=name, string_match=m))
            for m in _joined_value_forms(value)
        ]
    )


def host(value: str) -> rbac_pb2.Permission:
    """`hosts`: the request's authority, case-insensitively (as Istio: the port, if sent, is part of it)."""
    if value == "*":
        matcher = route_components_pb2.HeaderMatcher(name=":authority", present_match=True)
    else:
        matcher = route_components_pb2.HeaderMatcher(name=":authority", string_match=string(value, ignore_case=True))
    return rbac_pb2.Permission(header=matcher)


def method(value: str) -> rbac_pb2.Permission:
    if value == "*":
        return rbac_pb2.Permission(header=route_components_pb2.HeaderMatcher(name=":method", present_match=True))
    return rbac_pb2.Permission(header=route_components_pb2.HeaderMatcher(name=":method", string_match=string(value)))


def path(value: str) -> rbac_pb2.Permission:
    """`paths`: the (normalised) path without the query. A path template (`{*}` one segment, `{**}` the
    rest) becomes a regex: Envoy 1.40 aborts on an RBAC `uri_template` permission."""
    matcher = regex(template_regex(value)) if is_path_template(value) else string(value)
    return rbac_pb2.Permission(url_path=path_pb2.PathMatcher(path=matcher))


# -- JWT (dynamic metadata of the jwt_authn filter) ----------------------------------------------------


def _payload(keys: Iterable[str], value: value_pb2.ValueMatcher) -> rbac_pb2.Principal:
    segments = [metadata_pb2.MetadataMatcher.PathSegment(key=k) for k in (JWT_PAYLOAD, *keys)]
    return rbac_pb2.Principal(metadata=metadata_pb2.MetadataMatcher(filter=JWT_FILTER, path=segments, value=value))


def _text(keys: Sequence[str], matcher: string_pb2.StringMatcher) -> rbac_pb2.Principal:
    return _payload(keys, value_pb2.ValueMatcher(string_match=matcher))


def _present(keys: Sequence[str]) -> rbac_pb2.Principal:
    return _payload(keys, value_pb2.ValueMatcher(present_match=True))


TOKEN_PRESENT = _present(())


def claim(keys: Sequence[str], value: str) -> rbac_pb2.Principal:
    """A claim (nested: a path of keys) whose string value, or one of whose list items, matches `value`."""
    matcher = string(value)
    in_list = value_pb2.ValueMatcher(
        list_match=value_pb2.ListMatcher(one_of=value_pb2.ValueMatcher(string_match=matcher))
    )
    return any_of([_text(keys, matcher), _payload(keys, in_list)])


def _slashes(text: str) -> list[int]:
    return [i for i, c in enumerate(text) if c == "/"]


def request_principal(value: str) -> rbac_pb2.Principal:
    """`<iss>/<sub>` matched as Istio matches that string, against the payload's `iss` and `sub`."""
    iss, sub = ("iss",), ("sub",)
    if value == "*":
        return TOKEN_PRESENT
    options: list[rbac_pb2.Principal] = []
    if value.startswith("*"):  # "<iss>/<sub>" ends with S: sub ends with S, or S = <end of iss>/<sub>
        tail = value[1:]
        options.append(_text(sub, string_pb2.StringMatcher(suffix=tail)))
        for i in _slashes(tail):
            end = [_text(iss, string_pb2.StringMatcher(suffix=tail[:i]))] if tail[:i] else [_present(iss)]
            options.append(all_of([*end, _text(sub, string_pb2.StringMatcher(exact=tail[i + 1 :]))]))
    elif value.endswith("*"):  # starts with P: iss starts with P, or P = <iss>/<start of sub>
        head = value[:-1]
        options.append(_text(iss, string_pb2.StringMatcher(prefix=head)))
        for i in _slashes(head):
            start = [_text(sub, string_pb2.StringMatcher(prefix=head[i + 1 :]))] if head[i + 1 :] else [_present(sub)]
            options.append(all_of([_text(iss, string_pb2.StringMatcher(exact=head[:i])), *start]))
    else:  # exactly X: X = <iss>/<sub> for one of its slashes
        for i in _slashes(value):
            options.append(
                all_of(
                    [
                        _text(iss, string_pb2.StringMatcher(exact=value[:i])),
                        _text(sub, string_pb2.StringMatcher(exact=value[i + 1 :])),
                    ]
                )
            )
    return any_of(options) if options else NEVER_PRINCIPAL


def filter_metadata(filter_name: str, key: str, value: str) -> rbac_pb2.Principal:
    """`experimental.envoy.filters.<filter>[<key>]`: a filter's dynamic metadata; `[v]` matches a list
    containing v, anything else the string value."""
    if value.startswith("[") and value.endswith("]") and len(value) > 2:
        matcher = value_pb2.ValueMatcher(
            list_match=value_pb2.ListMatcher(one_of=value_pb2.ValueMatcher(string_match=string(value[1:-1])))
        )
    else:
        matcher = value_pb2.ValueMatcher(string_match=string(value))
    path_ = [metadata_pb2.MetadataMatcher.PathSegment(key=key)]
    return rbac_pb2.Principal(metadata=metadata_pb2.MetadataMatcher(filter=filter_name, path=path_, value=matcher))
