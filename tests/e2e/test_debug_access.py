"""Issue 20, item 7: exposed debug endpoints (`--debug-expose`) only for authenticated, authorised callers.
Kubernetes mode against a real kube-apiserver (tests/kubereal; skipped without KUBEBUILDER_ASSETS): a
service-account token from TokenRequest, reviewed by TokenReview, and RBAC (SubjectAccessReview on the
non-resource path) decides; standalone: a --ca-token-file token of meshd's namespace."""

from __future__ import annotations

import logging
import pathlib
from typing import Any

import pytest

from meshd.kube.client import new_api_client
from meshd.settings import Settings
from meshd.wiring.debug_access import debug_authorizer
from tests.kubereal.control_plane import ControlPlane, request

pytestmark = [pytest.mark.e2e]
NS = "meshd-debug-access"
LOG = logging.getLogger("test")


def _token(plane: ControlPlane, account: str) -> str:
    body = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": {"expirationSeconds": 600}}
    status: Any = request(plane, "POST", f"/api/v1/namespaces/{NS}/serviceaccounts/{account}/token", body)["status"]
    return str(status["token"])


async def test_rbac_decides_who_reads_exposed_debug_endpoints(real_kube: ControlPlane) -> None:
    request(
        real_kube, "POST", "/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}}
    )
    for account in ("reader", "stranger"):
        request(real_kube, "POST", f"/api/v1/namespaces/{NS}/serviceaccounts",
                {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": account}})  # fmt: skip
    rbac = "/apis/rbac.authorization.k8s.io/v1"
    request(real_kube, "POST", f"{rbac}/clusterroles", {
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole", "metadata": {"name": "meshd-debug-reader"},
        "rules": [{"nonResourceURLs": ["/debug/*"], "verbs": ["get"]}]})  # fmt: skip
    request(real_kube, "POST", f"{rbac}/clusterrolebindings", {
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
        "metadata": {"name": "meshd-debug-reader"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "meshd-debug-reader"},
        "subjects": [{"kind": "ServiceAccount", "name": "reader", "namespace": NS}]})  # fmt: skip
    reader, stranger = _token(real_kube, "reader"), _token(real_kube, "stranger")

    api = await new_api_client(real_kube.kubeconfig)
    try:
        authorize = debug_authorizer(settings=Settings(), api=api, log=LOG)
        assert authorize is not None
        assert await authorize(reader, "/debug/syncz") is None
        assert await authorize(reader, "/debug/config_dump") is None
        refused = await authorize(stranger, "/debug/syncz")
        assert refused is not None and refused[0] == 403
        assert f"system:serviceaccount:{NS}:stranger may not get /debug/syncz" in refused[1]
        forged = reader.rsplit(".", 1)[0] + ".c2lnbmF0dXJl"  # the reader's claims, another signature
        unknown = await authorize(forged, "/debug/syncz")
        assert unknown is not None and unknown[0] == 401
    finally:
        await api.close()


async def test_standalone_token_file_identities_of_meshds_namespace_only(tmp_path: pathlib.Path) -> None:
    tokens = tmp_path / "tokens.yaml"
    tokens.write_text(
        "ops-token: {namespace: istio-system, serviceAccount: ops}\napp-token: {namespace: shop, serviceAccount: web}\n"
    )
    authorize = debug_authorizer(settings=Settings(namespace="istio-system", ca_token_file=tokens), api=None, log=LOG)
    assert authorize is not None
    assert await authorize("ops-token", "/debug/syncz") is None
    assert await authorize("app-token", "/debug/syncz") == (
        403,
        "only identities of namespace 'istio-system' may read /debug/syncz",
    )
    refused = await authorize("nobody", "/debug/syncz")
    assert refused is not None and refused[0] == 401
    # no token source at all: no authorizer, so the exposed endpoints stay closed to other addresses
    assert debug_authorizer(settings=Settings(), api=None, log=LOG) is None
