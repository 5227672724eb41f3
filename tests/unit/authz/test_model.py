"""The AuthorizationPolicy model: Istio's validation with named fields, refused specs kept (fail closed)
with what can be read of their scope, the webhook's strict parse, and the mesh config's authorization
parts; the errors the World checks report."""

from __future__ import annotations

from typing import Any

import pytest

from meshd.api.authorization import AuthorizationPolicy
from meshd.api.meshconfig import InvalidMeshConfig, parse_mesh_policy
from meshd.api.meta import InvalidResource
from meshd.api.parse import parse_resource
from meshd.kube.admission import validate_object
from meshd.model.world import build_world
from meshd.translate.authz.checks import authorization_errors


def doc(spec: Any, **annotations: str) -> dict[str, Any]:
    return {
        "apiVersion": "security.istio.io/v1beta1",
        "kind": "AuthorizationPolicy",
        "metadata": {"name": "p", "namespace": "foo", "annotations": annotations},
        "spec": spec,
    }


GATEWAY = {"kind": "Gateway", "group": "gateway.networking.k8s.io", "name": "g"}
REFUSED = [
    ({"rules": [{"to": [{"operation": {"notpaths": ["/x"]}}]}]}, "to[0].operation.notpaths", "unknown field"),
    ({"rules": [{"from": [{"source": {"ipBlocks": ["10.0.0.0/33"]}}]}]}, "from[0].source.ipBlocks", "not an IP"),
    ({"rules": [{"to": [{"operation": {"ports": ["http"]}}]}]}, "spec.rules[0].to[0].operation.ports", "not a port"),
    ({"rules": [{"to": [{"operation": {"paths": ["/a/{**}/b/{*}"]}}]}]}, "operation.paths", "{**} must be the last"),
    ({"rules": [{"to": [{"operation": {"paths": ["/a/x{*}"]}}]}]}, "operation.paths", "must hold nothing else"),
    ({"rules": [{"from": [{"source": {}}]}]}, "spec.rules[0].from[0].source", "must not be empty"),
    ({"rules": [{"to": [{}]}]}, "spec.rules[0].to[0].operation", "must not be empty"),
    ({"rules": [{"when": [{"key": "request.headers[x]"}]}]}, "when[0].values", "values or notValues"),
    ({"rules": [{"when": [{"key": "source.color", "values": ["x"]}]}]}, "when[0].key", "not a supported attribute"),
    ({"rules": [{"when": [{"key": "destination.port", "values": ["99999"]}]}]}, "when[0].values[0]", "not a port"),
    ({"rules": [{"from": [{"source": {"principals": [""]}}]}]}, "source.principals", "empty string"),
    ({"action": "CUSTOM"}, "spec.provider", "needs provider.name"),
    ({"action": "DENY", "provider": {"name": "x"}}, "spec.provider", "only be used with the CUSTOM"),
    ({"selector": {"matchLabels": {"a": "b"}}, "targetRefs": [GATEWAY]}, "spec.selector", "only one of selector"),
    ({"targetRefs": [{"kind": "Deployment", "group": "apps", "name": "d"}]}, "spec.targetRefs[0].kind", "not a kind"),
    ({"action": "REJECT"}, "spec.action", "Input should be"),
]  # fmt: skip


@pytest.mark.parametrize(("spec", "field", "message"), REFUSED)
def test_invalid_specs_are_refused_with_field_and_kept_to_fail_closed(spec: Any, field: str, message: str) -> None:
    found = parse_resource(doc(spec))
    assert isinstance(found, AuthorizationPolicy) and found.refusal is not None
    assert field in found.refusal.field and message in found.refusal.message
    with pytest.raises(InvalidResource) as raised:  # the webhook's strict parse refuses it with the same words
        parse_resource(doc(spec), fail_closed=False)
    assert str(raised.value) == str(found.refusal)
    error = validate_object(doc(spec), namespace="foo")
    assert error is not None and str(error) == str(found.refusal)


def test_a_refused_policy_keeps_its_scope_and_action() -> None:
    found = parse_resource(doc({"selector": {"matchLabels": {"app": "a"}}, "action": "DENY", "rules": [{"bad": 1}]}))
    assert isinstance(found, AuthorizationPolicy)
    assert (
        found.action == "DENY" and found.spec.selector is not None and found.spec.selector.match_labels == {"app": "a"}
    )
    assert found.spec.rules == []
    unreadable = parse_resource(doc({"action": ["DENY"]}))
    assert isinstance(unreadable, AuthorizationPolicy) and unreadable.action is None
    bad_selector = parse_resource(doc({"selector": {"matchLabels": "app=a"}}))
    assert isinstance(bad_selector, AuthorizationPolicy) and bad_selector.spec.selector is None  # namespace-wide


def test_dry_run_annotation_is_a_boolean() -> None:
    assert parse_resource(doc({}, **{"istio.io/dry-run": "true"})).dry_run  # type: ignore[attr-defined]
    assert not parse_resource(doc({}, **{"istio.io/dry-run": "False"})).dry_run  # type: ignore[attr-defined]
    found = parse_resource(doc({}, **{"istio.io/dry-run": "maybe"}))
    assert isinstance(found, AuthorizationPolicy) and found.refusal is not None
    assert found.refusal.field == "metadata.annotations" and not found.dry_run


def test_every_field_of_istio_parses() -> None:
    spec = {
        "action": "ALLOW",
        "selector": {"matchLabels": {"app": "x"}},
        "rules": [
            {
                "from": [{"source": {
                    "principals": ["a"], "notPrincipals": ["b"],
                    "requestPrincipals": ["c/d"], "notRequestPrincipals": ["e/*"],
                    "namespaces": ["n"], "notNamespaces": ["m"], "ipBlocks": ["1.2.3.4"], "notIpBlocks": ["1.2.3.0/24"],
                    "remoteIpBlocks": ["::1"], "notRemoteIpBlocks": ["fd00::/8"]}}],
                "to": [{"operation": {
                    "hosts": ["h"], "notHosts": ["i"], "ports": ["80"], "notPorts": ["81"], "methods": ["GET"],
                    "notMethods": ["PUT"], "paths": ["/a", "/b/{*}", "/c/{**}"], "notPaths": ["/d*"]}}],
                "when": [{"key": k, "values": [v]} for k, v in (
                    ("request.headers[User-Agent]", "x"), ("source.ip", "10.0.0.1"), ("remote.ip", "10.0.0.0/8"),
                    ("source.namespace", "n"), ("source.principal", "p"), ("request.auth.principal", "a/b"),
                    ("request.auth.audiences", "aud"), ("request.auth.presenter", "azp"),
                    ("request.auth.claims[iss]", "i"), ("request.auth.claims[a][b]", "c"),
                    ("destination.ip", "10.0.0.2"),
                    ("destination.port", "80"), ("connection.sni", "s"),
                    ("experimental.envoy.filters.network.mysql_proxy[db.table]", "[update]"))],
            }
        ],
    }  # fmt: skip
    found = parse_resource(doc(spec))
    assert isinstance(found, AuthorizationPolicy) and found.refusal is None
    for version in ("security.istio.io/v1", "security.istio.io/v1beta1"):
        assert parse_resource({**doc({}), "apiVersion": version}).refusal is None  # type: ignore[attr-defined]


def test_mesh_config_errors_name_the_field() -> None:
    bad = [
        ({"extensionProviders": [{"name": "a", "envoyExtAuthzHttp": {"service": "s", "port": 0}}]}, "port"),
        (
            {"extensionProviders": [{"name": "a", "envoyExtAuthzHttp": {"service": "s", "port": 1, "x": 1}}]},
            "unknown field",
        ),
        (
            {
                "extensionProviders": [
                    {"name": "a", "envoyExtAuthzGrpc": {"service": "s", "port": 1, "statusOnError": "999"}}
                ]
            },
            "status",
        ),
        ({"extensionProviders": [{"name": "a", "zipkin": {}}, {"name": "a", "zipkin": {}}]}, "already the name"),
        ({"pathNormalization": {"normalization": "STRICT"}}, "pathNormalization.normalization"),
    ]
    for raw, expected in bad:
        with pytest.raises(InvalidMeshConfig, match=expected):
            parse_mesh_policy(raw)
    assert parse_mesh_policy({"pathNormalization": {"normalization": "DEFAULT"}}).path_normalization == "BASE"


def test_the_world_checks_report_each_untranslatable_policy_once() -> None:
    mesh = parse_mesh_policy({"extensionProviders": [{"name": "z", "zipkin": {"service": "z", "port": 1}}]})
    policies = [
        doc({"action": "CUSTOM", "provider": {"name": "z"}, "rules": [{}]}),
        {**doc({"action": "CUSTOM", "provider": {"name": "nope"}}), "metadata": {"name": "q", "namespace": "foo"}},
        {**doc({"targetRef": {"kind": "Service", "name": "s"}}), "metadata": {"name": "r", "namespace": "foo"}},
        {**doc({"rules": [{"x": 1}]}), "metadata": {"name": "s", "namespace": "foo"}},
    ]
    world = build_world([parse_resource(d) for d in policies], domain_suffix="cluster.local")
    errors = authorization_errors(world, mesh=mesh, root_namespace="istio-system")
    assert [(str(e.key), e.field) for e in errors] == [
        ("AuthorizationPolicy foo/p", "spec.provider.name"),
        ("AuthorizationPolicy foo/q", "spec.provider.name"),
        ("AuthorizationPolicy foo/r", "spec.targetRef"),
        ("AuthorizationPolicy foo/s", "spec.rules[0].x"),
    ]
    assert "zipkin provider, not envoyExtAuthzHttp" in errors[0].message
