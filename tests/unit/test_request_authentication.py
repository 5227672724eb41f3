"""RequestAuthentication: validation naming resource and field (the same through the admission webhook),
scope (mesh, namespace, selector; rules combined), key sources, and the filter's shape (Istio's
requirement: any provider or a missing token; the payload in metadata `payload`)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from meshd.api.jwks import NO_KEYS_JWKS
from meshd.api.meta import InvalidResource
from meshd.api.parse import parse_resource
from meshd.api.request_authentication import (
    KeySource,
    RequestAuthentication,
    key_source,
    refused_request_authentication,
)
from meshd.kube.admission import validate_object
from meshd.model.derive import oldest_first_by_namespace
from meshd.translate.jwt_authn import check_policies, jwt_authn_filter, workload_providers
from tests.jwt_tokens import SigningKey, jwks

KEY = SigningKey("k1")
ROOT = "istio-system"


def _ra(spec: dict[str, Any], *, name: str = "ra", ns: str = "foo", version: str = "v1", **meta: str) -> dict[str, Any]:
    return {
        "apiVersion": f"security.istio.io/{version}",
        "kind": "RequestAuthentication",
        "metadata": {"name": name, "namespace": ns, **meta},
        "spec": spec,
    }


def _rule(**fields: Any) -> dict[str, Any]:
    return {"issuer": "https://issuer.example", "jwksUri": "https://issuer.example/jwks", **fields}


def test_every_field_parses_in_both_versions() -> None:
    spec = {
        "selector": {"matchLabels": {"app": "web"}},
        "jwtRules": [
            _rule(
                audiences=["a", "b"],
                fromHeaders=[{"name": "x-jwt", "prefix": "Bearer "}, {"name": "x-raw"}],
                fromParams=["token"],
                fromCookies=["session"],
                outputPayloadToHeader="x-payload",
                outputClaimToHeaders=[{"header": "x-sub", "claim": "sub"}, {"header": "x-g", "claim": "a.b"}],
                forwardOriginalToken=True,
                timeout="2s",
            ),
            {"issuer": "inline", "jwks": jwks(KEY), "jwks_uri": "https://alt.example/k"},  # altName jwks_uri
        ],
    }
    for version in ("v1", "v1beta1"):
        ra = parse_resource(_ra(spec, version=version))
        assert isinstance(ra, RequestAuthentication)
        rule = ra.spec.jwt_rules[0]
        assert rule.from_headers[0].prefix == "Bearer " and rule.output_claim_to_headers[1].claim == "a.b"
        assert rule.timeout == "2s" and rule.forward_original_token
        assert ra.spec.jwt_rules[1].jwks_uri == "https://alt.example/k"


_BAD_JWKS_EXPONENT = json.dumps({"keys": [{**KEY.jwk, "e": "EQ"}]})  # e = 17


@pytest.mark.parametrize(
    ("spec", "field", "message"),
    [
        ({"jwtRules": [_rule(bogus=1)]}, "spec.jwtRules[0].bogus", "unknown field"),
        ({"bogus": 1}, "spec.bogus", "unknown field"),
        ({"selector": {"matchLabels": {}, "other": 1}}, "spec.selector.other", "unknown field"),
        ({"jwtRules": [{"jwksUri": "https://x/k"}]}, "spec.jwtRules[0].issuer", "Field required"),
        ({"jwtRules": [_rule(issuer="")]}, "spec.jwtRules[0].issuer", "at least 1 character"),
        ({"jwtRules": [_rule(audiences=[""])]}, "spec.jwtRules[0].audiences[0]", "non-empty"),
        ({"jwtRules": [_rule(jwksUri="ftp://x/k")]}, "spec.jwtRules[0].jwksUri", "http:// or https://"),
        ({"jwtRules": [_rule(jwksUri="https:///k")]}, "spec.jwtRules[0].jwksUri", "has no host"),
        ({"jwtRules": [_rule(jwksUri="https://u:p@x/k")]}, "spec.jwtRules[0].jwksUri", "credentials"),
        ({"jwtRules": [_rule(jwksUri="https://x:99999/k")]}, "spec.jwtRules[0].jwksUri", "not a URL"),
        ({"jwtRules": [_rule(jwksUri="https://x/" + "a" * 2048)]}, "spec.jwtRules[0].jwksUri", "2048"),
        ({"jwtRules": [_rule(jwks="not json")]}, "spec.jwtRules[0].jwks", "not JSON"),
        ({"jwtRules": [_rule(jwks='{"keys": []}')]}, "spec.jwtRules[0].jwks", "no key Envoy can verify"),
        ({"jwtRules": [_rule(jwks=_BAD_JWKS_EXPONENT)]}, "spec.jwtRules[0].jwks", "exponent 17"),
        (
            {"jwtRules": [_rule(jwks=json.dumps({"keys": [KEY.jwk, {"kty": "EC", "x": "AA", "y": "AA"}]}))]},
            "spec.jwtRules[0].jwks",
            "keys[1]: the point (x, y) is not on curve P-256 (Envoy would refuse the whole key set)",
        ),
        ({"jwtRules": [_rule(fromHeaders=[{"name": "bad header"}])]}, "spec.jwtRules[0].fromHeaders[0].name", "valid"),
        ({"jwtRules": [_rule(fromHeaders=[{"prefix": "x"}])]}, "spec.jwtRules[0].fromHeaders[0].name", "required"),
        (
            {"jwtRules": [_rule(fromHeaders=[{"name": "a", "prefix": "x\n"}])]},
            "spec.jwtRules[0].fromHeaders[0].prefix",
            "control",
        ),
        ({"jwtRules": [_rule(fromParams=[""])]}, "spec.jwtRules[0].fromParams[0]", "non-empty"),
        ({"jwtRules": [_rule(fromCookies=["a=b"])]}, "spec.jwtRules[0].fromCookies[0]", "cookie name"),
        ({"jwtRules": [_rule(outputPayloadToHeader="a b")]}, "spec.jwtRules[0].outputPayloadToHeader", "header name"),
        (
            {"jwtRules": [_rule(outputPayloadToHeader="Host")]},
            "spec.jwtRules[0].outputPayloadToHeader",
            "cannot be set",
        ),
        (
            {"jwtRules": [_rule(outputClaimToHeaders=[{"header": "x.y", "claim": "sub"}])]},
            "spec.jwtRules[0].outputClaimToHeaders[0].header",
            "must match",
        ),
        (
            {"jwtRules": [_rule(outputClaimToHeaders=[{"header": "x-a", "claim": ""}])]},
            "spec.jwtRules[0].outputClaimToHeaders[0].claim",
            "at least 1",
        ),
        (
            {
                "jwtRules": [
                    _rule(outputClaimToHeaders=[{"header": "x-a", "claim": "a"}, {"header": "X-A", "claim": "b"}])
                ]
            },
            "spec.jwtRules[0].outputClaimToHeaders[1].header",
            "set twice",
        ),
        ({"jwtRules": [_rule(timeout="soon")]}, "spec.jwtRules[0].timeout", "not a duration"),
        (
            {"jwtRules": [_rule(spaceDelimitedClaims=["scope"])]},
            "spec.jwtRules[0].spaceDelimitedClaims",
            "not supported",
        ),
        ({"jwtRules": [_rule(presence="REQUIRED")]}, "spec.jwtRules[0].presence", "not supported"),
        ({"jwtRules": [_rule(failureMode="STRICT")]}, "spec.jwtRules[0].failureMode", "not supported"),
        (
            {"jwtRules": [_rule(failedStatusInMetadata=True)]},
            "spec.jwtRules[0].failedStatusInMetadata",
            "not supported",
        ),
        (
            {"targetRefs": [{"group": "networking.istio.io", "kind": "ServiceEntry", "name": "se"}]},
            "spec.targetRefs[0].kind",
            "targeting a ServiceEntry to its waypoint, which meshd does not serve",
        ),
        (
            {"targetRef": {"group": "", "kind": "Service", "name": "web"}},
            "spec.targetRef.kind",
            "Service to its waypoint",
        ),
        (
            {"targetRef": {"group": "apps", "kind": "Deployment", "name": "web"}},
            "spec.targetRef.kind",
            "apps/Deployment",
        ),
        (
            {"targetRef": {"kind": "Service", "name": "a"}, "targetRefs": [{"kind": "Service", "name": "b"}]},
            "spec.targetRef",
            "only one of targetRef or targetRefs",
        ),
        (
            {"selector": {"matchLabels": {"a": "b"}}, "targetRefs": [{"kind": "Service", "name": "b"}]},
            "spec.targetRefs[0]",
            "only one of targetRefs or selector",
        ),
        ({"targetRefs": [{"kind": "Bad Kind", "name": "b"}]}, "spec.targetRefs[0].kind", "not a kind name"),
        ({"jwtRules": "nope"}, "spec.jwtRules", "valid list"),
    ],
)
def test_invalid_fields_are_named(spec: dict[str, Any], field: str, message: str) -> None:
    with pytest.raises(InvalidResource) as caught:
        parse_resource(_ra(spec), fail_closed=False)
    assert (str(caught.value.key), caught.value.field) == ("RequestAuthentication foo/ra", field), caught.value
    assert message in caught.value.message, caught.value.message
    # the admission webhook refuses it with the very same text
    denied = validate_object(_ra(spec), namespace="foo")
    assert denied is not None and str(denied) == str(caught.value)
    # read from a file or the cluster, it is kept to fail closed with that error (one for a Gateway is refused)
    if "targetRef" in spec or "targetRefs" in spec:
        with pytest.raises(InvalidResource):
            parse_resource(_ra(spec))
    else:
        kept = parse_resource(_ra(spec))
        assert isinstance(kept, RequestAuthentication) and kept.refusal == caught.value


def test_unsupported_api_version_is_refused() -> None:
    with pytest.raises(InvalidResource, match="apiVersion"):
        parse_resource(_ra({}, version="v1alpha1"))
    with pytest.raises(InvalidResource, match=r"metadata\.name"):  # no identity: nothing to keep
        parse_resource({**_ra({"jwtRules": [{"issuer": ""}]}), "metadata": {"name": "", "namespace": "foo"}})


def test_key_sources() -> None:
    def rule(**fields: Any) -> Any:
        ra = parse_resource(_ra({"jwtRules": [{"issuer": "https://accounts.example/", **fields}]}))
        assert isinstance(ra, RequestAuthentication)
        return ra.spec.jwt_rules[0]

    assert key_source(rule(jwksUri="https://k.example/keys")) == KeySource("https://k.example/keys")
    assert key_source(rule(jwks=jwks(KEY), jwksUri="https://k.example/keys")) is None  # inline keys win
    assert key_source(rule()) == KeySource("https://accounts.example/.well-known/openid-configuration", discovery=True)
    not_a_url = parse_resource(_ra({"jwtRules": [{"issuer": "someone@example.com"}]}))
    assert isinstance(not_a_url, RequestAuthentication)
    assert key_source(not_a_url.spec.jwt_rules[0]) is None


def _policies(*docs: dict[str, Any]) -> Any:
    resources = [parse_resource(d) for d in docs]
    return oldest_first_by_namespace(r for r in resources if isinstance(r, RequestAuthentication))


def test_scope_mesh_namespace_selector_combined_in_order() -> None:
    policies = _policies(
        _ra({"jwtRules": [{"issuer": "mesh"}]}, name="mesh", ns=ROOT),
        _ra({"selector": {"matchLabels": {"app": "x"}}, "jwtRules": [{"issuer": "root-workload"}]}, name="rw", ns=ROOT),
        _ra({"jwtRules": [{"issuer": "ns-new"}]}, name="b", creationTimestamp="2024-02-01T00:00:00Z"),
        _ra({"jwtRules": [{"issuer": "ns-old"}]}, name="a", creationTimestamp="2024-01-01T00:00:00Z"),
        _ra(
            {"selector": {"matchLabels": {"app": "web"}}, "jwtRules": [{"issuer": "web"}, {"issuer": "web2"}]}, name="w"
        ),
        _ra({"selector": {"matchLabels": {"app": "other"}}, "jwtRules": [{"issuer": "other"}]}, name="o"),
        _ra({"jwtRules": [{"issuer": "elsewhere"}]}, name="e", ns="bar"),
    )

    def issuers(ns: str, labels: dict[str, str]) -> list[str]:
        providers = workload_providers(policies, {}, namespace=ns, labels=labels, root_namespace=ROOT)
        return [p.issuer for p in providers]

    assert issuers("foo", {"app": "web"}) == ["mesh", "ns-old", "ns-new", "web", "web2"]
    assert issuers("foo", {"app": "db"}) == ["mesh", "ns-old", "ns-new"]
    assert issuers("bar", {"app": "web"}) == ["mesh", "elsewhere"]
    assert issuers("quiet", {}) == ["mesh"]
    assert issuers(ROOT, {"app": "x"}) == ["mesh", "root-workload"]  # selector in the root ns: its workloads only
    assert issuers("foo", {"app": "x"}) == ["mesh", "ns-old", "ns-new"]


def test_keys_inline_fetched_or_the_placeholder() -> None:
    policies = _policies(
        _ra(
            {"jwtRules": [{"issuer": "i", "jwks": jwks(KEY)}, _rule(), {"issuer": "x@y"}, _rule(jwksUri="https://o/k")]}
        )
    )
    fetched = {"https://issuer.example/jwks": '{"keys":["fetched"]}'}
    providers = workload_providers(policies, fetched, namespace="foo", labels={}, root_namespace=ROOT)
    assert json.loads(providers[0].keys)["keys"][0]["kid"] == "k1"  # normalised inline keys
    assert providers[1].keys == '{"keys":["fetched"]}'
    assert providers[2].keys == NO_KEYS_JWKS and providers[3].keys == NO_KEYS_JWKS  # nothing held: fail closed
    errors = list(check_policies(policies))
    assert [(e.field, e.severity) for e in errors] == [("spec.jwtRules[2].jwksUri", "error")]
    assert "every token of this rule is rejected" in errors[0].message


def test_filter_requires_any_provider_or_a_missing_token() -> None:
    policies = _policies(_ra({"jwtRules": [{"issuer": "a", "jwks": jwks(KEY)}, {"issuer": "b", "jwks": jwks(KEY)}]}))
    providers = workload_providers(policies, {}, namespace="foo", labels={}, root_namespace=ROOT)
    http_filter = jwt_authn_filter(providers)
    assert http_filter.name == "envoy.filters.http.jwt_authn"
    from envoy.extensions.filters.http.jwt_authn.v3 import config_pb2

    config = config_pb2.JwtAuthentication()
    http_filter.typed_config.Unpack(config)
    assert sorted(config.providers) == ["origins-0", "origins-1"]
    assert {p.payload_in_metadata for p in config.providers.values()} == {"payload"}
    assert config.bypass_cors_preflight
    (rule,) = config.rules
    assert rule.match.prefix == "/"
    requirements = rule.requires.requires_any.requirements
    assert [r.provider_name for r in requirements[:2]] == ["origins-0", "origins-1"]
    assert requirements[2].HasField("allow_missing")


def _refused(spec: Any, **meta: Any) -> RequestAuthentication | None:
    doc = _ra(spec, **meta)
    try:
        parse_resource(doc, fail_closed=False)
    except InvalidResource as error:
        return refused_request_authentication(doc, error)
    raise AssertionError("the document is valid")


def test_a_refused_policy_keeps_its_scope_and_token_locations() -> None:
    refused = _refused(
        {
            "selector": {"matchLabels": {"app": "web"}},
            "jwtRules": [
                {
                    "issuer": "i",
                    "jwks": "not json",
                    "fromHeaders": [{"name": "x-token", "prefix": "T "}, {"name": "a b"}],
                },
                {"fromParams": ["tok", ""], "fromCookies": ["session", 7]},
                "not a rule",
            ],
        }
    )
    assert refused is not None and refused.refusal is not None
    assert refused.refusal.field == "spec.jwtRules[0].fromHeaders[1].name"
    assert refused.spec.selector is not None and refused.spec.selector.match_labels == {"app": "web"}
    assert refused.spec.jwt_rules == []
    where = refused.refused_locations
    assert where.headers == (("Authorization", "Bearer "), ("x-token", "T "))  # Envoy's default, then readable ones
    assert where.params == ("access_token", "tok") and where.cookies == ("session",)
    # an unreadable selector: the whole namespace fails closed; a policy for a Gateway changes no sidecar
    wide = _refused({"selector": {"matchLabels": "app"}, "jwtRules": [{"issuer": "i"}]})
    assert wide is not None and wide.spec.selector is None
    assert _refused({"targetRefs": [{"kind": "Gateway", "name": "gw"}]}) is None
    assert refused_request_authentication({"metadata": {"name": 7}}, InvalidResource(None, "x", "y")) is None


def test_a_refused_policy_fails_closed_on_its_workloads() -> None:
    refused = _refused({"selector": {"matchLabels": {"app": "web"}}, "jwtRules": [{"issuer": ""}]})
    assert refused is not None
    good = parse_resource(_ra({"jwtRules": [{"issuer": "fine", "jwks": jwks(KEY)}]}, name="good"))
    assert isinstance(good, RequestAuthentication)
    policies = oldest_first_by_namespace([refused, good])
    web = workload_providers(policies, {}, namespace="foo", labels={"app": "web"}, root_namespace=ROOT)
    assert [p.issuer for p in web] == ["fine", "meshd: refused RequestAuthentication foo/ra"]  # namespace first
    assert web[1].keys == NO_KEYS_JWKS and web[1].from_headers == (("Authorization", "Bearer "),)
    other = workload_providers(policies, {}, namespace="foo", labels={"app": "db"}, root_namespace=ROOT)
    assert [p.issuer for p in other] == ["fine"]
    assert list(check_policies(policies)) == [refused.refusal]
