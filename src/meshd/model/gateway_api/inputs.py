"""The Gateway API objects a conversion reads, gathered from the store's resources in a canonical order (equal
sets, equal inputs: the conversion is run again only when they change), and the Service port names
BackendTLSPolicies' `sectionName`s refer to."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from meshd.api.backendtls import BackendTLSPolicy
from meshd.api.gateway_api import GatewayClass, KubernetesGateway, ReferenceGrant
from meshd.api.gateway_l4route import KubernetesTCPRoute, KubernetesTLSRoute
from meshd.api.grpcroute import GRPCRoute
from meshd.api.httproute import HTTPRoute
from meshd.api.kube import ConfigMap, Namespace
from meshd.api.meta import KUBERNETES_GATEWAY
from meshd.model.gateway_api.backend_tls import ServicePorts
from meshd.model.gateway_api.backends import AnyRoute


@dataclass(frozen=True)
class GatewayApiInputs:
    classes: tuple[GatewayClass, ...] = ()
    gateways: tuple[KubernetesGateway, ...] = ()
    routes: tuple[AnyRoute, ...] = ()
    grants: tuple[ReferenceGrant, ...] = ()
    namespaces: tuple[Namespace, ...] = ()  # their labels: allowedRoutes selectors
    tls_policies: tuple[BackendTLSPolicy, ...] = ()
    ca_maps: frozenset[tuple[str, str]] = frozenset()  # the ConfigMaps with a usable ca.crt (BackendTLSPolicies)

    def __bool__(self) -> bool:
        # (grants, namespaces and ConfigMaps alone: nothing)
        return bool(self.gateways or self.routes or self.classes or self.tls_policies)


# the kinds the conversion reads (Namespaces: for their labels)
GATEWAY_API_KINDS = (
    "GatewayClass",
    KUBERNETES_GATEWAY,
    "HTTPRoute",
    "GRPCRoute",
    "TCPRoute",
    "TLSRoute",
    "ReferenceGrant",
    "Namespace",
    "BackendTLSPolicy",
    "ConfigMap",
)


def inputs_of(resources: Iterable[Any]) -> GatewayApiInputs:
    """The Gateway API objects among `resources`, each kind in key order (equal sets, equal inputs)."""
    items = sorted((r for r in resources if isinstance(r, _KINDS)), key=lambda r: r.key)
    return GatewayApiInputs(
        classes=tuple(r for r in items if isinstance(r, GatewayClass)),
        gateways=tuple(r for r in items if isinstance(r, KubernetesGateway)),
        routes=tuple(r for r in items if isinstance(r, (HTTPRoute, GRPCRoute, KubernetesTCPRoute, KubernetesTLSRoute))),
        grants=tuple(r for r in items if isinstance(r, ReferenceGrant)),
        namespaces=tuple(r for r in items if isinstance(r, Namespace)),
        tls_policies=tuple(r for r in items if isinstance(r, BackendTLSPolicy)),
        ca_maps=frozenset(
            (r.metadata.namespace, r.metadata.name) for r in items if isinstance(r, ConfigMap) and "ca.crt" in r.data
        ),
    )


_KINDS = (
    GatewayClass,
    KubernetesGateway,
    HTTPRoute,
    GRPCRoute,
    KubernetesTCPRoute,
    KubernetesTLSRoute,
    ReferenceGrant,
    Namespace,
    BackendTLSPolicy,
    ConfigMap,
)


def policy_ports(policies: Iterable[BackendTLSPolicy], services: Mapping[tuple[str, str], Any]) -> ServicePorts:
    """Port name -> number of the Services `policies` target (`services`: (namespace, name) -> MeshService)."""
    out: dict[tuple[str, str], dict[str, int]] = {}
    for policy in policies:
        for ref in policy.spec.target_refs:
            at = (policy.metadata.namespace, ref.name)
            if at in services:
                out[at] = {p.name: p.number for p in services[at].ports if p.name}
    return out
