"""Automated deployment of Gateway API Gateways (pure): for each Gateway of a class meshd's controllers own,
the ServiceAccount, Service and Deployment that run its gateway proxy, as Istio's automated deployment does.

- Names: `<gateway name>-<gateway class name>` (Istio's rule), in the Gateway's namespace; a name longer than
  a DNS label (63) is refused, naming the Gateway.
- Every object is owned by its Gateway (`ownerReferences`: Kubernetes' garbage collector deletes them with
  it) and labelled `gateway.istio.io/managed: <controller>` and `gateway.networking.k8s.io/gateway-name`.
- The Deployment runs `meshd agent --proxy-type router` (the container the gateway injection template
  makes, `kube/inject_template.py`), with the gateway-name label on its pods: the label the Istio Gateways
  derived from the Gateway select (`model/gateway_api/listeners.py`). Its pods may bind ports below 1024.
- The Service (type `LoadBalancer`, or the Gateway's `networking.istio.io/service-type` annotation) has a
  port per distinct listener port (`<protocol>-<port>`, so meshd's protocol selection reads it) plus
  Istio's `status-port` 15021.
- `spec.infrastructure.labels` / `.annotations` go on every object and on the pods.
- A Gateway with `spec.addresses` is deployed by hand (Istio's manual deployment): nothing is generated.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

from meshd.api.gateway_api import GatewayClass, KubernetesGateway
from meshd.kube.inject_gateway import UNPRIVILEGED_PORTS
from meshd.kube.inject_options import SidecarOptions
from meshd.kube.inject_template import STATUS_PORT, InjectionConfig, proxy_container, volumes
from meshd.model.gateway_api.listeners import GATEWAY_NAME_LABEL, class_verdicts
from meshd.model.gateway_api.service_addresses import deployed_name

MANAGED_LABEL = "gateway.istio.io/managed"
SERVICE_TYPE_ANNOTATION = "networking.istio.io/service-type"
SERVICE_TYPES = ("ClusterIP", "NodePort", "LoadBalancer")
NO_INJECTION = {"sidecar.istio.io/inject": "false"}  # the pod already has its proxy: the injector leaves it
MAX_NAME = 63
KINDS = ("ServiceAccount", "Service", "Deployment")


@dataclass(frozen=True)
class GatewayDeployment:
    """The objects one Gateway needs, ready to apply (each a complete manifest)."""

    namespace: str
    gateway: str
    uid: str
    name: str  # of each generated object
    objects: tuple[dict[str, Any], ...]


@dataclass(frozen=True)
class DeployRefusal:
    """A Gateway meshd would deploy but cannot: reported by name, nothing applied for it."""

    namespace: str
    gateway: str
    reason: str


def managed_value(controller: str) -> str:
    """The `gateway.istio.io/managed` label value for a controller (`istio.io/gateway-controller` →
    `istio.io-gateway-controller`, Istio's own value)."""
    return controller.replace("/", "-")


def plan(
    gateways: Collection[KubernetesGateway], classes: Collection[GatewayClass], *, config: InjectionConfig
) -> tuple[list[GatewayDeployment], list[DeployRefusal]]:
    """What to deploy for every Gateway of an accepted class of meshd's that asks for automated deployment."""
    verdicts = class_verdicts(classes)
    deployments: list[GatewayDeployment] = []
    refusals: list[DeployRefusal] = []
    for gw in sorted(gateways, key=lambda g: (g.metadata.namespace, g.metadata.name)):
        verdict = verdicts.get(gw.spec.gateway_class_name)
        if verdict is None or not verdict[0] or gw.spec.addresses:
            continue  # not meshd's, its class refused (status says why), or deployed by hand
        name = deployed_name(gw)
        ns = gw.metadata.namespace
        if len(name) > MAX_NAME:
            refusals.append(DeployRefusal(ns, gw.metadata.name, f"{name!r} is longer than {MAX_NAME} characters"))
            continue
        service_type = gw.metadata.annotations.get(SERVICE_TYPE_ANNOTATION, "LoadBalancer")
        if service_type not in SERVICE_TYPES:
            refusals.append(
                DeployRefusal(
                    ns,
                    gw.metadata.name,
                    f"metadata.annotations[{SERVICE_TYPE_ANNOTATION}]: {service_type!r} is not one of "
                    f"{', '.join(SERVICE_TYPES)}",
                )
            )
            continue
        objects = render(gw, name=name, controller=verdict[2], service_type=service_type, config=config)
        deployments.append(GatewayDeployment(ns, gw.metadata.name, gw.metadata.uid, name, objects))
    return deployments, refusals


def render(
    gw: KubernetesGateway, *, name: str, controller: str, service_type: str, config: InjectionConfig
) -> tuple[dict[str, Any], ...]:
    """The ServiceAccount, Service and Deployment of one Gateway."""
    ns = gw.metadata.namespace
    infra = gw.spec.infrastructure
    extra_labels = dict(infra.labels) if infra is not None else {}
    extra_annotations = dict(infra.annotations) if infra is not None else {}
    selector = {GATEWAY_NAME_LABEL: gw.metadata.name}
    labels = {**extra_labels, MANAGED_LABEL: managed_value(controller), **selector}
    meta = {
        "name": name,
        "namespace": ns,
        "labels": labels,
        "annotations": extra_annotations,
        "ownerReferences": [
            {"apiVersion": gw.api_version, "kind": "Gateway", "name": gw.metadata.name, "uid": gw.metadata.uid}
        ],
    }
    ports = sorted({listener.port: listener.protocol for listener in reversed(gw.spec.listeners)}.items())
    service_ports = [{"name": "status-port", "port": STATUS_PORT, "protocol": "TCP", "appProtocol": "tcp"}] + [
        {"name": f"{protocol.lower()}-{port}", "port": port, "targetPort": port, "protocol": "TCP"}
        for port, protocol in ports
    ]
    pod_labels = {**extra_labels, **NO_INJECTION, "service.istio.io/canonical-name": name, **selector}
    proxy = proxy_container(config, SidecarOptions(), labels=pod_labels, ports=[p for p, _ in ports], router=True)
    proxy["ports"] = [*proxy["ports"], *({"containerPort": p, "protocol": "TCP"} for p, _ in ports)]
    service_account = {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": meta}
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": meta,
        "spec": {"type": service_type, "selector": selector, "ports": service_ports},
    }
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": meta,
        "spec": {
            "selector": {"matchLabels": selector},
            "template": {
                "metadata": {"labels": pod_labels, "annotations": extra_annotations},
                "spec": {
                    "serviceAccountName": name,
                    "securityContext": {"sysctls": [UNPRIVILEGED_PORTS]},
                    "containers": [proxy],
                    "volumes": volumes(config),
                },
            },
        },
    }
    return service_account, service, deployment
