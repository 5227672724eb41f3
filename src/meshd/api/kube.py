"""Kubernetes core objects meshd reads: Service, EndpointSlice, Pod (the fields that matter)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from meshd.api.meta import ApiModel, Resource


class ServicePortSpec(ApiModel):
    name: str = ""
    port: int = Field(ge=1, le=65535)
    target_port: int | str | None = None
    protocol: str = "TCP"
    app_protocol: str | None = None


class ServiceSpec(ApiModel):
    ports: list[ServicePortSpec] = Field(default_factory=list)
    selector: dict[str, str] | None = None
    cluster_ip: str | None = Field(default=None, alias="clusterIP")
    type: str = "ClusterIP"
    external_name: str | None = None


class Service(Resource):
    kind: Literal["Service"]
    spec: ServiceSpec = Field(default_factory=ServiceSpec)


class EndpointConditions(ApiModel):
    ready: bool | None = None
    serving: bool | None = None
    terminating: bool | None = None


class ObjectReference(ApiModel):
    kind: str = ""
    name: str = ""
    namespace: str | None = None


class SliceEndpoint(ApiModel):
    addresses: list[str] = Field(min_length=1)
    conditions: EndpointConditions = Field(default_factory=EndpointConditions)
    target_ref: ObjectReference | None = None
    node_name: str | None = None
    zone: str | None = None


class SlicePort(ApiModel):
    name: str = ""
    port: int | None = Field(default=None, ge=1, le=65535)
    protocol: str = "TCP"
    app_protocol: str | None = None


class EndpointSlice(Resource):
    kind: Literal["EndpointSlice"]
    address_type: str = "IPv4"
    endpoints: list[SliceEndpoint] = Field(default_factory=list)
    ports: list[SlicePort] = Field(default_factory=list)

    @property
    def service_name(self) -> str | None:
        return self.metadata.labels.get("kubernetes.io/service-name")


class PodSpec(ApiModel):
    service_account_name: str = "default"
    node_name: str | None = None


class PodStatus(ApiModel):
    pod_ip: str | None = Field(default=None, alias="podIP")
    phase: str | None = None


class Pod(Resource):
    kind: Literal["Pod"]
    spec: PodSpec = Field(default_factory=PodSpec)
    status: PodStatus = Field(default_factory=PodStatus)
