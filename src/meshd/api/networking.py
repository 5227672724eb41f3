"""Istio networking.istio.io models: ServiceEntry, WorkloadEntry, Sidecar (VirtualService and
DestinationRule have their own modules).

Field names follow Istio's CRD schemas (camelCase on the wire). Cross-field rules that pydantic
cannot express live in validators here, so the same checks serve translation and admission.
"""

from __future__ import annotations

import ipaddress
from typing import Literal

from pydantic import Field, model_validator

from meshd.api.destinationrule import ConnectionPoolSettings
from meshd.api.meta import Resource, StrictModel, refused
from meshd.api.sidecar_ingress import (
    OUTBOUND_MODES,
    CaptureMode,
    IstioIngressListener,
    OutboundTrafficPolicy,
    check_ingress,
)
from meshd.api.values import PortNumber

__all__ = ["OUTBOUND_MODES", "IstioIngressListener", "OutboundTrafficPolicy"]

NETWORKING_VERSIONS = (
    "networking.istio.io/v1",
    "networking.istio.io/v1beta1",
    "networking.istio.io/v1alpha3",
)


class WorkloadEntrySpec(StrictModel):
    address: str = ""
    ports: dict[str, PortNumber] = Field(default_factory=dict)
    labels: dict[str, str] = Field(default_factory=dict)
    service_account: str = ""
    locality: str = ""
    weight: int = Field(default=0, ge=0, le=2**32 - 1)  # Istio's and Envoy's uint32
    network: str | None = refused(
        "multi-network meshes are not supported: every endpoint is taken as reachable directly"
    )


class WorkloadEntry(Resource):
    kind: Literal["WorkloadEntry"]
    spec: WorkloadEntrySpec


# ServiceEntry port protocols Istio accepts (case-insensitive); UDP it accepts is not proxied by sidecars.
SE_PROTOCOLS = ("HTTP", "HTTPS", "GRPC", "GRPC-WEB", "HTTP2", "MONGO", "MYSQL", "REDIS", "TCP", "TLS")


class ServiceEntryPort(StrictModel):
    number: PortNumber
    protocol: str = "TCP"
    name: str = ""
    target_port: PortNumber | None = None

    @model_validator(mode="after")
    def _protocol(self) -> ServiceEntryPort:
        if self.protocol.upper() not in SE_PROTOCOLS:
            raise ValueError(f"protocol: {self.protocol!r} is not one of {', '.join(SE_PROTOCOLS)}")
        return self


class WorkloadSelector(StrictModel):
    labels: dict[str, str] = Field(default_factory=dict)


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _check_entry_hosts(hosts: list[str]) -> None:
    for i, host in enumerate(hosts):
        if not host:
            raise ValueError(f"hosts[{i}]: a host cannot be empty")
        if host == "*":
            raise ValueError(f"hosts[{i}]: '*' is not a host (a wildcard needs a domain: *.example.com)")
        if "/" in host:
            raise ValueError(f"hosts[{i}]: {host!r} must be a host name, not <namespace>/<host>")
        if "*" in host and (not host.startswith("*.") or "*" in host[1:]):
            raise ValueError(f"hosts[{i}]: {host!r}: a wildcard is only allowed as the whole leftmost label")


class ServiceEntrySpec(StrictModel):
    hosts: list[str] = Field(min_length=1)
    addresses: list[str] = Field(default_factory=list)
    ports: list[ServiceEntryPort] = Field(default_factory=list)
    location: Literal["MESH_EXTERNAL", "MESH_INTERNAL"] = "MESH_EXTERNAL"
    resolution: Literal["NONE", "STATIC", "DNS", "DNS_ROUND_ROBIN", "DYNAMIC_DNS"] = "NONE"
    endpoints: list[WorkloadEntrySpec] = Field(default_factory=list)
    workload_selector: WorkloadSelector | None = None
    export_to: list[str] = Field(default_factory=list)
    subject_alt_names: list[str] = Field(default_factory=list)

    @model_validator(mode="after")
    def _check(self) -> ServiceEntrySpec:
        """Istio's ServiceEntry validation (its CRD rules and istioctl's), naming the field."""
        _check_entry_hosts(self.hosts)
        resolution = self.resolution
        if resolution == "DYNAMIC_DNS":
            raise ValueError(
                "resolution: DYNAMIC_DNS is not supported by meshd; for wildcard hosts use NONE (captured "
                "proxies forward to the address the application resolved)"
            )
        for i, address in enumerate(self.addresses):
            try:
                ipaddress.ip_network(address, strict=False)
            except ValueError:
                raise ValueError(f"addresses[{i}]: {address!r} is not an IP address or CIDR range") from None
            if "/" in address and resolution not in ("NONE", "STATIC"):
                raise ValueError(f"addresses[{i}]: CIDR addresses are allowed only for NONE and STATIC resolution")
        numbers = [p.number for p in self.ports]
        for i, number in enumerate(numbers):
            if number in numbers[:i]:
                raise ValueError(f"ports[{i}].number: port {number} is listed twice")
        if self.endpoints and self.workload_selector is not None:
            raise ValueError("only one of endpoints or workloadSelector can be set")
        if resolution == "NONE" and (self.endpoints or self.workload_selector is not None):
            field = "endpoints" if self.endpoints else "workloadSelector"
            raise ValueError(f"{field}: NONE resolution forwards to the original destination and cannot have endpoints")
        if resolution == "STATIC":
            for i, endpoint in enumerate(self.endpoints):
                if not endpoint.address:
                    raise ValueError("endpoints: STATIC resolution requires an address on every endpoint")
                if not _is_ip(endpoint.address):
                    raise ValueError(
                        f"endpoints[{i}].address: {endpoint.address!r}: STATIC resolution needs IP addresses"
                    )
        if resolution == "DNS_ROUND_ROBIN" and len(self.endpoints) > 1:
            raise ValueError("endpoints: DNS_ROUND_ROBIN resolution cannot have more than one endpoint")
        if resolution in ("DNS", "DNS_ROUND_ROBIN") and not self.endpoints and self.workload_selector is None:
            for i, host in enumerate(self.hosts):
                if host.startswith("*"):
                    raise ValueError(
                        f"hosts[{i}]: {host!r}: a wildcard host cannot be resolved by DNS without endpoints"
                    )
        return self


class ServiceEntry(Resource):
    kind: Literal["ServiceEntry"]
    spec: ServiceEntrySpec


class SidecarPort(StrictModel):
    number: PortNumber
    protocol: str = ""
    name: str = ""
    target_port: int | None = refused("an egress listener's port has no target port (Istio ignores it too)")


class IstioEgressListener(StrictModel):
    port: SidecarPort | None = None
    bind: str | None = refused("egress listeners are not bound to other addresses by meshd")
    capture_mode: CaptureMode | None = refused("egress listeners follow the proxy's capture mode in meshd")
    hosts: list[str] = Field(min_length=1)

    @model_validator(mode="after")
    def _hosts_have_namespace(self) -> IstioEgressListener:
        for i, host in enumerate(self.hosts):
            namespace, slash, name = host.partition("/")
            if not slash or not namespace or not name:
                raise ValueError(f"hosts[{i}]: {host!r} must be <namespace>/<host> (e.g. ./*, istio-system/*)")
        return self


class SidecarSpec(StrictModel):
    workload_selector: WorkloadSelector | None = None
    egress: list[IstioEgressListener] = Field(default_factory=list)
    ingress: list[IstioIngressListener] = Field(default_factory=list)
    outbound_traffic_policy: OutboundTrafficPolicy | None = None
    inbound_connection_pool: ConnectionPoolSettings | None = None

    @model_validator(mode="after")
    def _one_catch_all(self) -> SidecarSpec:
        if sum(1 for e in self.egress if e.port is None) > 1:
            raise ValueError("egress: only one egress listener may omit the port (the catch-all)")
        check_ingress(self.ingress)
        return self

    @property
    def outbound_mode(self) -> str | None:
        """ALLOW_ANY or REGISTRY_ONLY when the Sidecar says, else None (the mesh default applies)."""
        policy = self.outbound_traffic_policy
        return policy.mode if policy is not None and "mode" in policy.model_fields_set else None


class Sidecar(Resource):
    kind: Literal["Sidecar"]
    spec: SidecarSpec = Field(default_factory=SidecarSpec)


def export_class(export_to: list[str], *, owner_namespace: str) -> tuple[str, ...]:
    """The namespaces a resource is exported to, as a class: ("*",) everyone, else the sorted namespace names
    ('.' as the owner's). Resources of one class are seen by exactly the same namespaces."""
    if not export_to or "*" in export_to:
        return ("*",)
    return tuple(sorted({owner_namespace if t == "." else t for t in export_to if t != "~"}))


def export_tier(export_to: list[str], *, owner_namespace: str, namespace: str) -> int:
    """Istio's order among the mesh VirtualServices of one host a proxy of `namespace` sees: one exported to that
    namespace alone first (0), then one exported to it by name among others (1), then public ones (2)."""
    found = export_class(export_to, owner_namespace=owner_namespace)
    if found == ("*",):
        return 2
    return 0 if found == (namespace,) else 1


def exported_to(export_to: list[str], *, owner_namespace: str, namespace: str) -> bool:
    """Istio's exportTo: '*' everyone, '.' the owner's namespace, '~' nobody, or namespace names.
    Empty means everyone (the mesh default)."""
    if not export_to:
        return True
    for target in export_to:
        if target == "*" or target == namespace or (target == "." and namespace == owner_namespace):
            return True
    return False
