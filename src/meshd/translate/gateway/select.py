"""Which Gateways apply to a gateway workload: those whose `selector` labels its pod (or WorkloadEntry)
carries, from any namespace (Istio's default), or only from the workload's own namespace when the
mesh is configured so (Istio's PILOT_SCOPE_GATEWAY_TO_NAMESPACE; meshd's `--scope-gateway-to-namespace`).
An empty selector selects every gateway workload. Oldest Gateway first: it wins a conflict.
The Istio Gateways meshd derives from a Gateway API Gateway's listeners (`LISTENER_ANNOTATION`) select the
gateway workloads of their own namespace only (or, linked to a Service by the Gateway's `addresses`, that
Service's namespace: `WORKLOADS_ANNOTATION`), whatever the setting."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from meshd.api.gateway import Gateway
from meshd.model.gateway_api.addresses import WORKLOADS_ANNOTATION
from meshd.model.gateway_api.listeners import LISTENER_ANNOTATION


def selects(gateway: Gateway, *, namespace: str, labels: Mapping[str, str], scope_to_namespace: bool) -> bool:
    annotations = gateway.metadata.annotations
    scoped = scope_to_namespace or LISTENER_ANNOTATION in annotations
    if scoped and annotations.get(WORKLOADS_ANNOTATION, gateway.metadata.namespace) != namespace:
        return False
    return all(labels.get(k) == v for k, v in gateway.spec.selector.items())


def selected_gateways(
    gateways: Iterable[Gateway], *, namespace: str, labels: Mapping[str, str], scope_to_namespace: bool
) -> tuple[Gateway, ...]:
    """The Gateways that apply to a workload of this namespace with these labels, oldest first."""
    return tuple(
        g for g in gateways if selects(g, namespace=namespace, labels=labels, scope_to_namespace=scope_to_namespace)
    )


def gateway_name(gateway: Gateway) -> str:
    """`<namespace>/<name>`: how a VirtualService's `gateways` names it once resolved."""
    return f"{gateway.metadata.namespace}/{gateway.metadata.name}"
