"""The chart installed with real Helm (with an ingress and an egress gateway; Helm's Go SDK through
helm-python-sdk) into a real kube-apiserver
(tests/kubereal; skipped without KUBEBUILDER_ASSETS), then every object of the release dry-run applied
server-side: the API server's own validation and defaulting accept all of it. CRDs are already installed by the
fixture (from the same chart), so the release leaves them out. Its webhooks start with failurePolicy Ignore and
their Service has no endpoints: the API server never dials anything for them (--enable-aggregator-routing)."""

from __future__ import annotations

import json
import urllib.request
from typing import Any

import helm_python as helm
import yaml

from tests.kubereal.control_plane import ControlPlane
from tests.unit.deploy.chart import CHART

RELEASE, NAMESPACE = "meshd", "meshd-helm"
VALUES: dict[str, Any] = {
    "crds": {"install": False},
    # the ingress gateway and an egress gateway (Deployment + Service + ServiceAccount each)
    "gateways": {
        "ingress": {"enabled": True},
        "extra": [{"name": "istio-egressgateway", "labels": {"istio": "egressgateway"}, "serviceType": "ClusterIP",
                   "ports": [{"name": "http2", "port": 80, "targetPort": 8080}]}],
    },
}  # fmt: skip


def dry_run_apply(plane: ControlPlane, obj: dict[str, Any]) -> int:
    """Server-side apply of `obj` with dryRun=All; the HTTP status."""
    group_version = obj["apiVersion"]
    base = f"/api/{group_version}" if "/" not in group_version else f"/apis/{group_version}"
    resources = json.load(urllib.request.urlopen(
        urllib.request.Request(plane.url + base), context=plane.ssl_context(), timeout=10
    ))["resources"]  # fmt: skip
    resource = next(r for r in resources if r["kind"] == obj["kind"] and "/" not in r["name"])
    namespace = obj["metadata"].get("namespace", NAMESPACE) if resource["namespaced"] else None
    scope = f"/namespaces/{namespace}" if namespace else ""
    path = f"{base}{scope}/{resource['name']}/{obj['metadata']['name']}?dryRun=All&fieldManager=meshd-test&force=true"
    request = urllib.request.Request(plane.url + path, data=json.dumps(obj).encode(), method="PATCH")
    request.add_header("Content-Type", "application/apply-patch+yaml")
    with urllib.request.urlopen(request, context=plane.ssl_context(), timeout=10) as resp:
        return int(resp.status)


def test_helm_install_then_server_side_dry_run_of_every_object(real_kube: ControlPlane) -> None:
    config = helm.Config(kubeconfig_path=real_kube.kubeconfig, namespace=NAMESPACE)
    try:
        release = config.install(CHART, RELEASE, VALUES, namespace=NAMESPACE, create_namespace=True, timeout=60)
        objects = [d for d in yaml.safe_load_all(release["manifest"]) if d]
        kinds = {d["kind"] for d in objects}
        assert {"Deployment", "Service", "ServiceAccount", "ClusterRole", "MutatingWebhookConfiguration"} <= kinds
        deployments = {d["metadata"]["name"] for d in objects if d["kind"] == "Deployment"}
        assert deployments == {"meshd", "istio-ingressgateway", "istio-egressgateway"}
        statuses = {f"{d['kind']}/{d['metadata']['name']}": dry_run_apply(real_kube, d) for d in objects}
        assert set(statuses.values()) == {200}, statuses
    finally:
        try:
            config.uninstall(RELEASE, ignore_not_found=True, timeout=60)
        finally:
            config.close()
