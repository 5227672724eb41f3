"""meshd's RBAC is least privilege: exactly these rules, nothing more (no `*`, no extra verb)."""

from __future__ import annotations

from typing import Any

import pytest

from tests.unit.deploy.chart import NAMESPACE, of_kind, one, render

READ = ("get", "list", "watch")
ISTIO_NETWORKING = ("virtualservices", "destinationrules", "gateways", "serviceentries", "workloadentries", "sidecars")
ISTIO_SECURITY = ("peerauthentications", "authorizationpolicies", "requestauthentications")


def grants(rules: list[dict[str, Any]]) -> set[tuple[str, str, str, str]]:
    """(apiGroup, resource, verb, resourceName or '') for every permission the rules give."""
    out = set()
    for rule in rules:
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                for verb in rule["verbs"]:
                    for name in rule.get("resourceNames") or [""]:
                        out.add((group, resource, verb, name))
    return out


UNSUPPORTED = (
    ("networking.istio.io", "envoyfilters"),
    ("networking.istio.io", "proxyconfigs"),
    ("networking.istio.io", "workloadgroups"),
    ("telemetry.istio.io", "telemetries"),
    ("extensions.istio.io", "wasmplugins"),
)
# Kubernetes Gateway API: read; status written on the kinds meshd handles or refuses (not ReferenceGrant: no
# status of meshd's)
GATEWAY_API_READ = ("gatewayclasses", "gateways", "httproutes", "referencegrants", "grpcroutes", "tcproutes",
                    "tlsroutes", "udproutes", "backendtlspolicies")  # fmt: skip
GATEWAY_API_STATUS = (
    "gatewayclasses", "gateways", "httproutes", "grpcroutes", "tcproutes", "tlsroutes", "udproutes",
    "backendtlspolicies",
)  # fmt: skip
EXPECTED_CLUSTER = (
    {("", r, v, "") for r in ("services", "pods", "namespaces", "nodes", "secrets", "configmaps") for v in READ}
    | {("discovery.k8s.io", "endpointslices", v, "") for v in READ}
    | {("networking.istio.io", r, v, "") for r in ISTIO_NETWORKING for v in READ}
    | {("security.istio.io", r, v, "") for r in ISTIO_SECURITY for v in READ}
    | {("networking.istio.io", f"{r}/status", v, "") for r in ISTIO_NETWORKING for v in ("update", "patch")}
    | {("security.istio.io", f"{r}/status", v, "") for r in ISTIO_SECURITY for v in ("update", "patch")}
    | {("apiextensions.k8s.io", "customresourcedefinitions", v, "") for v in READ}
    | {("gateway.networking.k8s.io", r, v, "") for r in GATEWAY_API_READ for v in READ}
    | {("gateway.networking.k8s.io", f"{r}/status", v, "") for r in GATEWAY_API_STATUS for v in ("update", "patch")}
    # Istio kinds meshd does not translate yet: read, and status written saying so
    | {(g, r, v, "") for g, r in UNSUPPORTED for v in READ}
    | {(g, f"{r}/status", v, "") for g, r in UNSUPPORTED for v in ("update", "patch")}
    | {("", "configmaps", "create", ""), ("", "configmaps", "update", "istio-ca-root-cert")}
    | {("authentication.k8s.io", "tokenreviews", "create", "")}
    # Gateway API automated deployment (kube/gateway_deployer.py): server-side apply, orphans listed and deleted
    | {
        (g, r, v, "")
        for g, r in (("", "services"), ("", "serviceaccounts"), ("apps", "deployments"))
        for v in ("get", "list", "create", "patch", "delete")
    }
    | {("authorization.k8s.io", "subjectaccessreviews", "create", "")}
    | {
        ("admissionregistration.k8s.io", "mutatingwebhookconfigurations", v, "meshd-sidecar-injector")
        for v in ("get", "patch")
    }
    | {
        ("admissionregistration.k8s.io", "validatingwebhookconfigurations", v, "meshd-validator")
        for v in ("get", "patch")
    }
)
EXPECTED_NAMESPACED = {
    ("coordination.k8s.io", "leases", "create", ""),
    ("coordination.k8s.io", "leases", "get", ""),
    ("coordination.k8s.io", "leases", "update", ""),
    ("", "secrets", "create", ""),
    ("", "secrets", "get", "istio-ca-secret"),
    ("", "secrets", "update", "istio-ca-secret"),
}


@pytest.fixture(scope="module")
def docs() -> list[dict[str, Any]]:
    return render({})


def test_cluster_role_is_exactly_least_privilege(docs: list[dict[str, Any]]) -> None:
    assert grants(one(docs, "ClusterRole")["rules"]) == EXPECTED_CLUSTER


def test_namespaced_role_is_exactly_least_privilege(docs: list[dict[str, Any]]) -> None:
    role = one(docs, "Role")
    assert role["metadata"]["namespace"] == NAMESPACE
    assert grants(role["rules"]) == EXPECTED_NAMESPACED


def test_no_wildcards(docs: list[dict[str, Any]]) -> None:
    for role in of_kind(docs, "ClusterRole") + of_kind(docs, "Role"):
        for rule in role["rules"]:
            for field in ("apiGroups", "resources", "verbs", "resourceNames"):
                assert "*" not in rule.get(field, []), (role["kind"], rule)


def test_bindings_give_the_roles_to_meshd(docs: list[dict[str, Any]]) -> None:
    account = one(docs, "ServiceAccount")["metadata"]
    subject = {"kind": "ServiceAccount", "name": account["name"], "namespace": account["namespace"]}
    for binding_kind, role_kind in (("ClusterRoleBinding", "ClusterRole"), ("RoleBinding", "Role")):
        binding = one(docs, binding_kind)
        assert binding["subjects"] == [subject]
        assert binding["roleRef"] == {
            "apiGroup": "rbac.authorization.k8s.io",
            "kind": role_kind,
            "name": one(docs, role_kind)["metadata"]["name"],
        }


def test_webhook_names_follow_values() -> None:
    rules = one(render({"webhooks": {"injectorName": "inj", "validatorName": "val"}}), "ClusterRole")["rules"]
    names = {(r, n) for _, r, _, n in grants(rules) if r.endswith("webhookconfigurations")}
    assert names == {("mutatingwebhookconfigurations", "inj"), ("validatingwebhookconfigurations", "val")}


def test_the_grant_check_catches_a_wildcard() -> None:
    assert grants([{"apiGroups": [""], "resources": ["secrets"], "verbs": ["*"]}]) != EXPECTED_NAMESPACED
