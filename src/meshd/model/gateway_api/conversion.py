"""The Gateway API conversion as the World builds run it: `convert` again only when its inputs change, so the
result's Istio Gateways and VirtualServices keep their identity, which the caches compare."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from meshd.model.gateway_api.addresses import AddressTargets, address_targets
from meshd.model.gateway_api.backend_tls import ServicePorts
from meshd.model.gateway_api.backends import ServiceIds, named_services
from meshd.model.gateway_api.convert import GatewayApiResult, convert
from meshd.model.gateway_api.inputs import GATEWAY_API_KINDS, GatewayApiInputs, inputs_of, policy_ports

__all__ = ["GATEWAY_API_KINDS", "GatewayApiConversion"]


class GatewayApiConversion:
    """`convert` for the World builds, run again only when its inputs change (the result's Istio Gateways and
    VirtualServices keep their identity, which the caches compare)."""

    def __init__(self, *, domain_suffix: str) -> None:
        self._suffix = domain_suffix
        self._last: tuple[GatewayApiInputs, ServiceIds, AddressTargets, ServicePorts, GatewayApiResult] | None = None

    def run(self, resources: Iterable[Any], *, services: Mapping[tuple[str, str], Any]) -> GatewayApiResult:
        """`services`: (namespace, name) -> the MeshService (only those routes name are looked at: the cost does
        not grow with the mesh)."""
        inputs = inputs_of(resources)
        if not inputs:
            return GatewayApiResult()
        named = {
            s: frozenset(port.number for port in services[s].ports)
            for s in named_services(inputs.routes)
            if s in services
        }
        linked = address_targets(
            [g for g in inputs.gateways if g.spec.addresses], services=services, domain_suffix=self._suffix
        )
        ports = policy_ports(inputs.tls_policies, services)
        if self._last is not None and self._last[:4] == (inputs, named, linked, ports):
            return self._last[4]
        result = convert(inputs, services=named, domain_suffix=self._suffix, addresses=linked, service_ports=ports)
        self._last = (inputs, named, linked, ports, result)
        return result
