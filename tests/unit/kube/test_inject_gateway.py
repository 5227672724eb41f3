"""Injection of a user-deployed gateway (`inject.istio.io/templates: gateway`, Istio's "Installing Gateways"
example): the `istio-proxy` placeholder becomes `meshd agent --proxy-type router` (parsed by the agent's
own parser), no init container, no tlsMode label, unprivileged ports allowed, the user's ports and
resources kept; a valid Pod; injected once; an unknown template is refused naming the annotation."""

from __future__ import annotations

import argparse
import copy
from typing import Any

from meshd.agent.cli import add_agent_parser, settings_from_args
from meshd.agent.metadata import node_id
from tests.unit.kube.test_inject import answer, container, injected, validate_pod


def gateway_pod(**spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "generateName": "istio-ingressgateway-5d9f8c6b5-",
            "namespace": "shop",
            "labels": {"istio": "ingressgateway", "sidecar.istio.io/inject": "true"},
            "annotations": {"inject.istio.io/templates": "gateway"},
        },
        "spec": {
            "serviceAccountName": "istio-ingressgateway",
            "containers": [
                {
                    "name": "istio-proxy",
                    "image": "auto",
                    "ports": [{"containerPort": 8080, "name": "http2"}, {"containerPort": 8443, "name": "https"}],
                    "resources": {"limits": {"memory": "512Mi"}},
                }
            ],
            **spec,
        },
    }


def test_the_placeholder_becomes_a_router_proxy_and_the_pod_is_valid() -> None:
    pod = injected(gateway_pod())
    validate_pod(pod)
    assert [c["name"] for c in pod["spec"]["containers"]] == ["istio-proxy"]
    assert "initContainers" not in pod["spec"]  # nothing is captured
    proxy = container(pod, "istio-proxy")
    assert proxy["image"] == "registry.example/meshd:1.0"  # `auto` replaced
    assert proxy["ports"] == [{"containerPort": 8080, "name": "http2"}, {"containerPort": 8443, "name": "https"}]
    assert proxy["resources"] == {"limits": {"memory": "512Mi"}}
    assert proxy["securityContext"]["runAsUser"] == 1337
    assert pod["spec"]["securityContext"]["sysctls"] == [{"name": "net.ipv4.ip_unprivileged_port_start", "value": "0"}]
    labels = pod["metadata"]["labels"]
    assert "security.istio.io/tlsMode" not in labels and "service.istio.io/canonical-name" in labels
    assert "sidecar.istio.io/status" in pod["metadata"]["annotations"]
    parser = argparse.ArgumentParser()
    add_agent_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(proxy["args"])
    env = {"POD_NAME": "istio-ingressgateway-5d9f8c6b5-abcde", "POD_NAMESPACE": "shop", "INSTANCE_IP": "10.4.0.7",
           "SERVICE_ACCOUNT": "istio-ingressgateway"}  # fmt: skip
    settings = settings_from_args(args, env)
    assert settings.proxy_type == "router" and settings.interception_mode == "NONE"
    assert node_id(settings) == "router~10.4.0.7~istio-ingressgateway-5d9f8c6b5-abcde.shop~shop.svc.cluster.local"
    assert settings.labels["istio"] == "ingressgateway"  # what Gateway selectors match


def test_a_gateway_is_injected_once_and_an_existing_security_context_is_kept() -> None:
    pod = injected(gateway_pod(securityContext={"runAsNonRoot": True, "sysctls": [{"name": "x", "value": "1"}]}))
    assert pod["spec"]["securityContext"]["runAsNonRoot"] is True
    assert [s["name"] for s in pod["spec"]["securityContext"]["sysctls"]] == [
        "x",
        "net.ipv4.ip_unprivileged_port_start",
    ]
    again = answer(pod)
    assert again["allowed"] is True and "patch" not in again  # the status annotation says it is done


def test_a_gateway_without_placeholder_gets_the_proxy_added() -> None:
    pod = gateway_pod()
    pod["spec"]["containers"] = [{"name": "app", "image": "nginx"}]
    patched = injected(pod)
    assert [c["name"] for c in patched["spec"]["containers"]] == ["app", "istio-proxy"]
    validate_pod(patched)


def test_an_unknown_template_is_refused_naming_the_annotation() -> None:
    pod = copy.deepcopy(gateway_pod())
    pod["metadata"]["annotations"]["inject.istio.io/templates"] = "grpc-agent"
    response = answer(pod)
    assert response["allowed"] is False
    assert "metadata.annotations[inject.istio.io/templates]: 'grpc-agent'" in response["status"]["message"]
