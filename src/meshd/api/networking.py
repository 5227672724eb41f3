"""Istio networking.istio.io models: ServiceEntry, WorkloadEntry, Sidecar (VirtualService and
DestinationRule have their own modules).

Field names follow Istio's CRD schemas (camelCase on the wire). Cross-field rules that pydantic
cannot express live in validators here, so the same checks serve translation and admission.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from meshd.api.meta import ApiModel, Resource
from meshd.api.values import PortNumber

NETWORKING_VERSIONS = (
    "networking.istio.io/v1",
    "networking.istio.io/v1beta1",
    "networking.istio.io/v1alpha3",
)


class WorkloadEntrySpec(ApiModel):
    address: str = ""
    ports: dict[str, PortNumber] = Field(default_factory=dict)
    labels: dict[str, str] = Field(default_factory=dict)
    service_account: str = ""
    locality: str = ""
    weight: int = Field(default=0, ge=0, le=2**32 - 1)  # Istio's and Envoy's uint32


class WorkloadEntry(Resource):
    kind: Literal["WorkloadEntry"]
    spec: WorkloadEntrySpec


class ServiceEntryPort(ApiModel):
    number: PortNumber
    protocol: str = "TCP"
    name: str = ""
    target_port: PortNumber | None = None


class WorkloadSelector(ApiModel):
    labels: dict[str, str] = Field(default_factory=dict)


class ServiceEntrySpec(ApiModel):
    hosts: list[str] = Field(min_length=1)
    addresses: list[str] = Field(default_factory=list)
    ports: list[ServiceEntryPort] = Field(default_factory=list)
    location: Literal["MESH_EXTERNAL", "MESH_INTERNAL"] = "MESH_EXTERNAL"
    resolution: Literal["NONE", "STATIC", "DNS", "DNS_ROUND_ROBIN"] = "NONE"
    endpoints: list[WorkloadEntrySpec] = Field(default_factory=list)
    workload_selector: WorkloadSelector | None = None
    export_to: list[str] = Field(default_factory=list)

    @model_validator(mode="after")
    def _endpoints_or_selector(self) -> ServiceEntrySpec:
        if self.endpoints and self.workload_selector is not None:
            raise ValueError("only one of endpoints or workloadSelector can be set")
        if self.resolution == "STATIC" and any(not e.address for e in self.endpoints):
            raise ValueError("endpoints: STATIC resolution requires an address on every endpoint")
        return self


class ServiceEntry(Resource):
    kind: Literal["ServiceEntry"]
    spec: ServiceEntrySpec


class SidecarPort(ApiModel):
    number: PortNumber
    protocol: str = ""
    name: str = ""


class IstioEgressListener(ApiModel):
    port: SidecarPort | None = None
    bind: str = ""
    capture_mode: str = "DEFAULT"
    hosts: list[str] = Field(min_length=1)

    @model_validator(mode="after")
    def _hosts_have_namespace(self) -> IstioEgressListener:
        for i, host in enumerate(self.hosts):
            namespace, slash, name = host.partition("/")
            if not slash or not namespace or not name:
                raise ValueError(f"hosts[{i}]: {host!r} must be <namespace>/<host> (e.g. ./*, istio-system/*)")
        return self


# Sidecar / mesh `outboundTrafficPolicy.mode`: unknown destinations pass through, or are refused.
OUTBOUND_MODES = ("ALLOW_ANY", "REGISTRY_ONLY")


class SidecarSpec(ApiModel):
    workload_selector: WorkloadSelector | None = None
    egress: list[IstioEgressListener] = Field(default_factory=list)
    ingress: list[dict[str, Any]] = Field(default_factory=list)
    outbound_traffic_policy: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _one_catch_all(self) -> SidecarSpec:
        if sum(1 for e in self.egress if e.port is None) > 1:
            raise ValueError("egress: only one egress listener may omit the port (the catch-all)")
        mode = (self.outbound_traffic_policy or {}).get("mode", "ALLOW_ANY")
        if mode not in OUTBOUND_MODES:
            raise ValueError(f"outboundTrafficPolicy.mode: {mode!r} is not one of {', '.join(OUTBOUND_MODES)}")
        return self

    @property
    def outbound_mode(self) -> str | None:
        """ALLOW_ANY or REGISTRY_ONLY when the Sidecar says, else None (the mesh default applies)."""
        if not self.outbound_traffic_policy or "mode" not in self.outbound_traffic_policy:
            return None
        return str(self.outbound_traffic_policy["mode"])


class Sidecar(Resource):
    kind: Literal["Sidecar"]
    spec: SidecarSpec = Field(default_factory=SidecarSpec)


def exported_to(export_to: list[str], *, owner_namespace: str, namespace: str) -> bool:
    """Istio's exportTo: '*' everyone, '.' the owner's namespace, '~' nobody, or namespace names.
    Empty means everyone (the mesh default)."""
    if not export_to:
        return True
    for target in export_to:
        if target == "*" or target == namespace or (target == "." and namespace == owner_namespace):
            return True
    return False
