"""The chart's gateways: an ingress gateway (and extra ones, e.g. egress) as Deployment + Service +
ServiceAccount running `meshd agent --proxy-type router`, rendered by real Helm, valid Kubernetes, the
agent's args parsed by meshd's own parser, the Service mapping Gateway ports to the proxy's unprivileged
targetPorts."""

from __future__ import annotations

from typing import Any

import kubernetes_validate
import pytest

from meshd.agent.cli import add_agent_parser, settings_from_args
from tests.unit.deploy.chart import NAMESPACE, lint, of_kind, render

VALUES: dict[str, Any] = {
    "gateways": {
        "ingress": {"enabled": True},
        "extra": [
            {
                "name": "istio-egressgateway",
                "labels": {"istio": "egressgateway"},
                "serviceType": "ClusterIP",
                "ports": [{"name": "http2", "port": 80, "targetPort": 8080}],
                "resources": {"requests": {"cpu": "50m"}},
            },
            {"name": "disabled-gateway", "enabled": False, "labels": {"istio": "off"}, "ports": []},
        ],
    }
}


@pytest.fixture(scope="module")
def docs() -> list[dict[str, Any]]:
    return render(VALUES)


def named(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    return next(d for d in of_kind(docs, kind) if d["metadata"]["name"] == name)


def test_no_gateway_by_default() -> None:
    assert [d["metadata"]["name"] for d in of_kind(render({}), "Deployment")] == ["meshd"]


def test_lint_and_kubernetes_schemas(docs: list[dict[str, Any]]) -> None:
    report = lint(VALUES)
    assert report["errors"] == [] and [m for m in report["messages"] if m["severity"] >= 2] == []
    for doc in docs:
        kubernetes_validate.validate(doc, kubernetes_validate.latest_version(), strict=True)


def test_ingress_and_extra_gateways_are_rendered(docs: list[dict[str, Any]]) -> None:
    assert sorted(d["metadata"]["name"] for d in of_kind(docs, "Deployment")) == [
        "istio-egressgateway",
        "istio-ingressgateway",
        "meshd",
    ]
    service = named(docs, "Service", "istio-ingressgateway")
    assert service["spec"]["type"] == "LoadBalancer"
    assert {p["port"]: p["targetPort"] for p in service["spec"]["ports"]} == {15021: 15021, 80: 8080, 443: 8443}
    assert service["spec"]["selector"] == {"istio": "ingressgateway", "app": "istio-ingressgateway"}
    egress = named(docs, "Service", "istio-egressgateway")
    assert egress["spec"]["type"] == "ClusterIP" and egress["spec"]["selector"] == {"istio": "egressgateway"}
    assert named(docs, "ServiceAccount", "istio-egressgateway-service-account")["metadata"]["namespace"] == NAMESPACE


def test_gateway_pod_runs_meshd_agent_as_a_router(docs: list[dict[str, Any]]) -> None:
    deployment = named(docs, "Deployment", "istio-ingressgateway")
    pod = deployment["spec"]["template"]
    assert pod["metadata"]["labels"] == {"istio": "ingressgateway", "app": "istio-ingressgateway"}
    assert pod["metadata"]["annotations"]["sidecar.istio.io/inject"] == "false"
    spec = pod["spec"]
    assert spec["serviceAccountName"] == "istio-ingressgateway-service-account"
    assert spec["securityContext"]["runAsUser"] == 1337 and spec["securityContext"]["runAsNonRoot"] is True
    (container,) = spec["containers"]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert {p["containerPort"] for p in container["ports"]} == {8080, 8443, 15021, 15090}  # unprivileged
    assert container["readinessProbe"]["httpGet"] == {"path": "/healthz/ready", "port": 15021}
    token = next(v for v in spec["volumes"] if v["name"] == "istio-token")
    assert token["projected"]["sources"][0]["serviceAccountToken"]["audience"] == "istio-ca"
    # the args are `meshd agent` flags (its own parser), the identity from the downward API
    import argparse

    parser = argparse.ArgumentParser()
    add_agent_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(container["args"])
    env = {"POD_NAME": "istio-ingressgateway-abc", "POD_NAMESPACE": NAMESPACE, "INSTANCE_IP": "10.1.2.3",
           "SERVICE_ACCOUNT": "istio-ingressgateway-service-account"}  # fmt: skip
    settings = settings_from_args(args, env)
    assert settings.proxy_type == "router" and settings.interception_mode == "NONE"
    assert settings.labels == {"app": "istio-ingressgateway", "istio": "ingressgateway"}
    assert settings.xds_address == f"meshd.{NAMESPACE}.svc:15012"
    assert settings.xds_server_name == f"meshd.{NAMESPACE}.svc"  # a SAN of meshd's serving certificate
    assert settings.namespace == NAMESPACE and settings.service_account == "istio-ingressgateway-service-account"
    from meshd.agent.metadata import node_id

    assert node_id(settings).startswith(f"router~10.1.2.3~istio-ingressgateway-abc.{NAMESPACE}~")
    assert named(docs, "Deployment", "istio-egressgateway")["spec"]["template"]["spec"]["containers"][0][
        "resources"
    ] == {"requests": {"cpu": "50m"}}
