"""What meshd deploys for a Gateway API Gateway (kube/gateway_deploy.py): names, ownership, ports, the proxy."""

from __future__ import annotations

from typing import Any

import pytest

from meshd.api.gateway_api import GatewayClass, KubernetesGateway
from meshd.api.meta import InvalidResource
from meshd.api.parse import parse_resource
from meshd.kube.gateway_deploy import plan
from meshd.kube.inject_template import InjectionConfig

CONFIG = InjectionConfig(image="meshd:test", xds_address="istiod.meshd.svc:15012", xds_server_name="istiod.meshd.svc")
GW = "gateway.networking.k8s.io/v1"
LISTENERS = [
    {"name": "http", "port": 80, "protocol": "HTTP"},
    {"name": "other", "port": 80, "protocol": "HTTP", "hostname": "a.example.com"},
    {"name": "https", "port": 443, "protocol": "HTTPS", "tls": {"certificateRefs": [{"name": "cert"}]}},
]
NAME_LABEL = "gateway.networking.k8s.io/gateway-name"


def gateway(name: str = "web", *, cls: str = "istio", **spec: Any) -> KubernetesGateway:
    doc = {
        "apiVersion": GW,
        "kind": "Gateway",
        "metadata": {"name": name, "namespace": "infra", "uid": f"uid-{name}", **spec.pop("metadata", {})},
        "spec": {
            "gatewayClassName": cls,
            "listeners": spec.pop("listeners", LISTENERS),
            **spec,
        },
    }
    resource = parse_resource(doc, origin="test")
    assert isinstance(resource, KubernetesGateway)
    return resource


def gateway_class(name: str, controller: str) -> GatewayClass:
    doc = {"apiVersion": GW, "kind": "GatewayClass", "metadata": {"name": name}, "spec": {"controllerName": controller}}
    resource = parse_resource(doc, origin="test")
    assert isinstance(resource, GatewayClass)
    return resource


def by_kind(objects: tuple[dict[str, Any], ...]) -> dict[str, dict[str, Any]]:
    return {o["kind"]: o for o in objects}


def test_a_gateway_of_class_istio_gets_a_service_account_service_and_deployment_it_owns() -> None:
    deployments, refusals = plan([gateway()], [], config=CONFIG)
    assert refusals == []
    [deployment] = deployments
    objects = by_kind(deployment.objects)
    assert set(objects) == {"ServiceAccount", "Service", "Deployment"}
    for obj in objects.values():
        meta = obj["metadata"]
        assert (meta["name"], meta["namespace"]) == ("web-istio", "infra")
        assert meta["ownerReferences"] == [{"apiVersion": GW, "kind": "Gateway", "name": "web", "uid": "uid-web"}]
        assert meta["labels"]["gateway.networking.k8s.io/gateway-name"] == "web"
        assert meta["labels"]["gateway.istio.io/managed"] == "istio.io-gateway-controller"
    service = objects["Service"]["spec"]
    assert service["type"] == "LoadBalancer"
    assert service["selector"] == {"gateway.networking.k8s.io/gateway-name": "web"}
    # one port per distinct listener port (the first listener's protocol names it), and the status port
    ports = [(p["name"], p["port"]) for p in service["ports"]]
    assert ports == [("status-port", 15021), ("http-80", 80), ("https-443", 443)]
    pod = objects["Deployment"]["spec"]["template"]
    assert objects["Deployment"]["spec"]["selector"] == {"matchLabels": {NAME_LABEL: "web"}}
    assert pod["metadata"]["labels"]["gateway.networking.k8s.io/gateway-name"] == "web"
    assert pod["metadata"]["labels"]["sidecar.istio.io/inject"] == "false"
    assert pod["spec"]["serviceAccountName"] == "web-istio"
    [proxy] = pod["spec"]["containers"]
    args = proxy["args"]
    assert proxy["image"] == "meshd:test" and args[0] == "agent"
    assert args[args.index("--proxy-type") + 1] == "router"
    assert args[args.index("--xds-address") + 1] == "istiod.meshd.svc:15012"
    assert "gateway.networking.k8s.io/gateway-name=web" in args[args.index("--labels") + 1].split(",")
    assert {p["containerPort"] for p in proxy["ports"]} >= {80, 443}
    assert pod["spec"]["securityContext"]["sysctls"] == [{"name": "net.ipv4.ip_unprivileged_port_start", "value": "0"}]


def test_service_type_annotation_and_infrastructure_labels_and_annotations() -> None:
    gw = gateway(
        metadata={"annotations": {"networking.istio.io/service-type": "ClusterIP"}},
        infrastructure={"labels": {"team": "edge"}, "annotations": {"example.com/owner": "edge-team"}},
    )
    [deployment], _ = plan([gw], [], config=CONFIG)
    objects = by_kind(deployment.objects)
    assert objects["Service"]["spec"]["type"] == "ClusterIP"
    for obj in objects.values():
        assert obj["metadata"]["labels"]["team"] == "edge"
        assert obj["metadata"]["annotations"] == {"example.com/owner": "edge-team"}
    template = objects["Deployment"]["spec"]["template"]["metadata"]
    assert template["labels"]["team"] == "edge" and template["annotations"] == {"example.com/owner": "edge-team"}


def test_what_is_not_deployed() -> None:
    foreign = gateway("foreign", cls="other")
    manual = gateway("manual", addresses=[{"type": "Hostname", "value": "gw.infra.svc.cluster.local"}])
    own_class = gateway("mine", cls="edge")
    classes = [gateway_class("other", "example.com/controller"), gateway_class("edge", "meshd.io/gateway-controller")]
    deployments, refusals = plan([foreign, manual, own_class], classes, config=CONFIG)
    assert [(d.gateway, d.name) for d in deployments] == [("mine", "mine-edge")]
    assert by_kind(deployments[0].objects)["Service"]["metadata"]["labels"]["gateway.istio.io/managed"] == (
        "meshd.io-gateway-controller"
    )
    assert refusals == []


def test_refusals_name_the_gateway_and_why() -> None:
    long_name = gateway("g" * 60)
    bad_type = gateway("bad", metadata={"annotations": {"networking.istio.io/service-type": "External"}})
    deployments, refusals = plan([long_name, bad_type], [], config=CONFIG)
    assert deployments == []
    reasons = {r.gateway: r.reason for r in refusals}
    assert "longer than 63" in reasons["g" * 60]
    assert "networking.istio.io/service-type" in reasons["bad"] and "'External'" in reasons["bad"]


@pytest.mark.parametrize(
    ("infrastructure", "message"),
    [
        ({"parametersRef": {"group": "", "kind": "ConfigMap", "name": "x"}}, "parametersRef"),
        ({"labels": {"bad key!": "x"}}, "is not a valid Kubernetes label"),
        ({"labels": {f"k{i}": "v" for i in range(9)}}, "labels"),
        ({"color": "blue"}, "color"),
    ],
)
def test_bad_infrastructure_is_refused_by_field(infrastructure: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidResource) as error:
        gateway(infrastructure=infrastructure)
    assert "infrastructure" in str(error.value) and message in str(error.value)
