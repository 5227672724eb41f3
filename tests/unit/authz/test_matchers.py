"""The matcher translation, checked by what the generated Envoy matchers decide (tests/unit/authz/rbac_eval.py)
against Istio's meaning of each form, over random values where the mapping is not one-to-one."""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from meshd.api.authorization import Rule
from meshd.translate.authz import matchers as m
from meshd.translate.authz.rules import rule_policy
from tests.properties import budget
from tests.unit.authz import rbac_eval

JWT = "envoy.filters.http.jwt_authn"


def istio_string(pattern: str, value: str) -> bool:
    """Istio's string forms: `*` any non-empty value, `*x` suffix, `x*` prefix, else exact."""
    if pattern == "*":
        return value != ""
    if pattern.startswith("*"):
        return value.endswith(pattern[1:])
    if pattern.endswith("*"):
        return value.startswith(pattern[:-1])
    return value == pattern


def token(iss: str, sub: str, **claims: Any) -> dict[str, Any]:
    return {"metadata": {JWT: {"payload": {"iss": iss, "sub": sub, **claims}}}}


parts = st.text(alphabet="ab/:", max_size=6)
patterns = st.one_of(
    st.just("*"),
    st.text(alphabet="ab/:", min_size=1, max_size=6),
    st.text(alphabet="ab/:", min_size=1, max_size=6).map(lambda v: v + "*"),
    st.text(alphabet="ab/:", min_size=1, max_size=6).map(lambda v: "*" + v),
)


@budget(400)
@given(parts, parts, patterns)
def test_a_request_principal_matches_exactly_when_istio_matches_iss_slash_sub(iss: str, sub: str, pattern: str) -> None:
    """`iss/sub` is split at every slash it could be split at: issuers hold slashes (https://...)."""
    found = rbac_eval.principal(m.request_principal(pattern), token(iss, sub))
    assert found == istio_string(pattern, f"{iss}/{sub}"), (pattern, iss, sub)


def test_request_principals_need_a_verified_token() -> None:
    assert not rbac_eval.principal(m.request_principal("*"), {})
    assert rbac_eval.principal(m.request_principal("*"), token("i", "s"))
    issuer = "https://accounts.example.com/realm"
    assert rbac_eval.principal(m.request_principal(f"{issuer}/user-1"), token(issuer, "user-1"))
    assert not rbac_eval.principal(m.request_principal(f"{issuer}/user-1"), token(issuer, "user-2"))
    assert rbac_eval.principal(m.request_principal(f"{issuer}/*"), token(issuer, "anyone"))
    assert not rbac_eval.principal(m.request_principal(f"{issuer}/*"), token("https://other", "anyone"))


values = st.lists(st.text(alphabet="ab", min_size=1, max_size=3), min_size=1, max_size=3)
header_patterns = st.one_of(
    st.just("*"),
    st.text(alphabet="ab", min_size=1, max_size=3),
    st.text(alphabet="ab", min_size=1, max_size=3).map(lambda v: v + "*"),
    st.text(alphabet="ab", min_size=1, max_size=3).map(lambda v: "*" + v),
)


@budget(300)
@given(values, header_patterns)
def test_a_header_condition_matches_when_one_of_the_repeated_values_does(sent: list[str], pattern: str) -> None:
    """Envoy joins repeated headers with `,`: as Istio, the condition is about each value (a DENY on
    `x-token: bad` is not dodged by sending a second x-token header)."""
    request = {"headers": {"x-token": ",".join(sent)}}
    assert rbac_eval.principal(m.header("X-Token", pattern), request) == any(istio_string(pattern, v) for v in sent)


def test_principals_are_spiffe_identities_in_each_trust_domain_of_the_bundle() -> None:
    bundle = ("td1", "cluster.local")

    def peer(uri: str | None) -> dict[str, Any]:
        return {"principal": uri}

    exact = m.principal("cluster.local/ns/a/sa/b", bundle=bundle)
    assert rbac_eval.principal(exact, peer("spiffe://td1/ns/a/sa/b"))
    assert rbac_eval.principal(exact, peer("spiffe://cluster.local/ns/a/sa/b"))
    assert not rbac_eval.principal(exact, peer("spiffe://other/ns/a/sa/b"))
    assert not rbac_eval.principal(exact, peer(None))  # plaintext: no peer identity
    other = m.principal("other.td/ns/a/sa/b", bundle=bundle)  # not in the bundle: as written only
    assert rbac_eval.principal(other, peer("spiffe://other.td/ns/a/sa/b"))
    assert not rbac_eval.principal(other, peer("spiffe://td1/ns/a/sa/b"))
    assert rbac_eval.principal(m.principal("*/sa/b", bundle=bundle), peer("spiffe://x/ns/y/sa/b"))
    assert rbac_eval.principal(m.principal("td1/ns/a/*", bundle=bundle), peer("spiffe://cluster.local/ns/a/sa/z"))
    assert rbac_eval.principal(m.principal("*", bundle=bundle), peer("spiffe://x/ns/y/sa/z"))
    assert not rbac_eval.principal(m.principal("*", bundle=bundle), peer(None))


def test_namespaces_are_the_namespace_of_the_peer_identity() -> None:
    def peer(ns: str) -> dict[str, Any]:
        return {"principal": f"spiffe://cluster.local/ns/{ns}/sa/default"}

    assert rbac_eval.principal(m.namespace("foo"), peer("foo"))
    assert not rbac_eval.principal(m.namespace("foo"), peer("foobar"))
    assert not rbac_eval.principal(m.namespace("foo"), {"principal": "spiffe://cluster.local/ns/x/sa/foo"})
    assert rbac_eval.principal(m.namespace("foo*"), peer("foobar"))
    assert rbac_eval.principal(m.namespace("*bar"), peer("foobar"))
    assert not rbac_eval.principal(m.namespace("*bar"), peer("barfoo"))
    assert rbac_eval.principal(m.namespace("*"), peer("any"))
    assert not rbac_eval.principal(m.namespace("*"), {"principal": None})


def test_claims_nested_and_in_lists() -> None:
    claims = token("i", "s", groups=["dev", "admins"], realm={"roles": "reader"}, aud="api")
    assert rbac_eval.principal(m.claim(["groups"], "admins"), claims)
    assert not rbac_eval.principal(m.claim(["groups"], "ops"), claims)
    assert rbac_eval.principal(m.claim(["realm", "roles"], "reader"), claims)
    assert rbac_eval.principal(m.claim(["aud"], "api"), claims)
    assert rbac_eval.principal(m.claim(["groups"], "adm*"), claims)
    assert not rbac_eval.principal(m.claim(["missing"], "*"), claims)


def _request(**fields: Any) -> dict[str, Any]:
    return {"headers": {":method": fields.pop("method", "GET")}, **fields}


def _rule_matches(rule: dict[str, Any], request: dict[str, Any]) -> bool:
    return rbac_eval.policy(rule_policy(Rule.model_validate(rule), bundle=("cluster.local",)), request)


def test_path_forms_and_templates() -> None:
    def to(*paths: str) -> dict[str, Any]:
        return {"to": [{"operation": {"paths": list(paths)}}]}

    assert _rule_matches(to("/info*"), _request(path="/info/x"))
    assert _rule_matches(to("*.png"), _request(path="/a/b.png"))
    assert _rule_matches(to("/foo/{*}"), _request(path="/foo/bar"))
    assert not _rule_matches(to("/foo/{*}"), _request(path="/foo/bar/baz"))
    assert not _rule_matches(to("/foo/{*}"), _request(path="/foo/"))
    assert _rule_matches(to("/foo/{**}"), _request(path="/foo/bar/baz"))
    assert _rule_matches(to("/foo/{*}/bar/{**}"), _request(path="/foo/buzz/bar/baz"))
    assert not _rule_matches(to("/a.b/{*}"), _request(path="/axb/c"))  # literal dots stay literal


def test_a_rule_ands_its_parts_and_ors_the_values_of_one_field() -> None:
    rule = {
        "from": [{"source": {"ipBlocks": ["10.0.0.0/8"], "notIpBlocks": ["10.9.0.0/16"]}}],
        "to": [{"operation": {"methods": ["GET", "HEAD"], "notPaths": ["/private*"]}}],
        "when": [{"key": "destination.port", "values": ["8080"]}, {"key": "request.headers[x-a]", "notValues": ["no"]}],
    }
    good = _request(source_ip="10.1.2.3", path="/ok", destination_port=8080)
    assert _rule_matches(rule, good)
    assert not _rule_matches(rule, {**good, "source_ip": "10.9.0.1"})
    assert not _rule_matches(rule, {**good, "source_ip": "192.168.0.1"})
    assert not _rule_matches(rule, {**good, "path": "/private/x"})
    assert not _rule_matches(rule, {**good, "destination_port": 9090})
    assert not _rule_matches(rule, {**good, "headers": {":method": "POST"}})
    assert not _rule_matches(rule, {**good, "headers": {":method": "GET", "x-a": "no"}})
    assert _rule_matches({}, good)  # an empty rule matches everything


def test_hosts_case_insensitive_and_sni_and_destination() -> None:
    rule = {"to": [{"operation": {"hosts": ["*.Example.com"], "notHosts": ["evil.example.com"]}}]}
    assert _rule_matches(rule, {"headers": {":authority": "api.example.COM"}})
    assert not _rule_matches(rule, {"headers": {":authority": "evil.example.com"}})
    assert _rule_matches({"when": [{"key": "connection.sni", "values": ["x.*"]}]}, {"sni": "x.y"})
    assert _rule_matches(
        {"when": [{"key": "destination.ip", "values": ["10.0.0.0/24"]}]}, {"destination_ip": "10.0.0.7"}
    )
    assert _rule_matches({"when": [{"key": "remote.ip", "notValues": ["1.2.3.4"]}]}, {"remote_ip": "1.2.3.5"})
