"""Istio networking.istio.io models: VirtualService, DestinationRule, ServiceEntry, WorkloadEntry.

Field names follow Istio's CRD schemas (camelCase on the wire). Cross-field rules that pydantic
cannot express live in validators here, so the same checks serve translation and admission.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from meshd.api.meta import ApiModel, Resource

NETWORKING_VERSIONS = (
    "networking.istio.io/v1",
    "networking.istio.io/v1beta1",
    "networking.istio.io/v1alpha3",
)


class StringMatch(ApiModel):
    exact: str | None = None
    prefix: str | None = None
    regex: str | None = None

    @model_validator(mode="after")
    def _one_of(self) -> StringMatch:
        set_fields = [f for f in ("exact", "prefix", "regex") if getattr(self, f) is not None]
        if len(set_fields) != 1:
            raise ValueError("exactly one of exact, prefix, regex must be set")
        return self


class HTTPMatchRequest(ApiModel):
    name: str = ""
    uri: StringMatch | None = None
    headers: dict[str, StringMatch] = Field(default_factory=dict)
    ignore_uri_case: bool = False


class PortSelector(ApiModel):
    number: int = Field(ge=1, le=65535)


class Destination(ApiModel):
    host: str = Field(min_length=1)
    subset: str = ""
    port: PortSelector | None = None


class HTTPRouteDestination(ApiModel):
    destination: Destination
    weight: int = Field(default=0, ge=0)


class HTTPRoute(ApiModel):
    name: str = ""
    match: list[HTTPMatchRequest] = Field(default_factory=list)
    route: list[HTTPRouteDestination] = Field(default_factory=list)

    @model_validator(mode="after")
    def _weights(self) -> HTTPRoute:
        if not self.route:
            raise ValueError("route: at least one destination is required")
        if len(self.route) > 1:
            total = sum(d.weight for d in self.route)
            if total != 100:
                raise ValueError(f"route: destination weights must add up to 100, got {total}")
        return self

    def weights(self) -> list[int]:
        """Effective weights: a single destination gets 100."""
        if len(self.route) == 1:
            return [100]
        return [d.weight for d in self.route]


class VirtualServiceSpec(ApiModel):
    hosts: list[str] = Field(min_length=1)
    gateways: list[str] = Field(default_factory=list)
    http: list[HTTPRoute] = Field(default_factory=list)
    export_to: list[str] = Field(default_factory=list)


class VirtualService(Resource):
    kind: Literal["VirtualService"]
    spec: VirtualServiceSpec


class Subset(ApiModel):
    name: str = Field(min_length=1)
    labels: dict[str, str] = Field(default_factory=dict)
    traffic_policy: dict[str, Any] | None = None


class DestinationRuleSpec(ApiModel):
    host: str = Field(min_length=1)
    subsets: list[Subset] = Field(default_factory=list)
    traffic_policy: dict[str, Any] | None = None
    export_to: list[str] = Field(default_factory=list)

    @model_validator(mode="after")
    def _unique_subsets(self) -> DestinationRuleSpec:
        seen: set[str] = set()
        for i, subset in enumerate(self.subsets):
            if subset.name in seen:
                raise ValueError(f"subsets[{i}].name: duplicate subset name {subset.name!r}")
            seen.add(subset.name)
        return self


class DestinationRule(Resource):
    kind: Literal["DestinationRule"]
    spec: DestinationRuleSpec


class WorkloadEntrySpec(ApiModel):
    address: str = ""
    ports: dict[str, int] = Field(default_factory=dict)
    labels: dict[str, str] = Field(default_factory=dict)
    service_account: str = ""
    locality: str = ""
    weight: int = Field(default=0, ge=0)


class WorkloadEntry(Resource):
    kind: Literal["WorkloadEntry"]
    spec: WorkloadEntrySpec


class ServiceEntryPort(ApiModel):
    number: int = Field(ge=1, le=65535)
    protocol: str = "TCP"
    name: str = ""
    target_port: int | None = Field(default=None, ge=1, le=65535)


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
    number: int = Field(ge=1, le=65535)
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


class SidecarSpec(ApiModel):
    workload_selector: WorkloadSelector | None = None
    egress: list[IstioEgressListener] = Field(default_factory=list)
    ingress: list[dict[str, Any]] = Field(default_factory=list)
    outbound_traffic_policy: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _one_catch_all(self) -> SidecarSpec:
        if sum(1 for e in self.egress if e.port is None) > 1:
            raise ValueError("egress: only one egress listener may omit the port (the catch-all)")
        return self


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
