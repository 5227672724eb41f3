"""Kubernetes core objects meshd reads: Service, EndpointSlice, Pod, Secret, Namespace (the fields that matter)."""

from __future__ import annotations

import base64
import binascii
from typing import Literal

from pydantic import Field, PrivateAttr, model_validator

from meshd.api import pem
from meshd.api.meta import ApiModel, Resource
from meshd.api.values import PortNumber


class ServicePortSpec(ApiModel):
    name: str = ""
    port: PortNumber
    target_port: PortNumber | str | None = None
    protocol: str = "TCP"
    app_protocol: str | None = None


class ServiceSpec(ApiModel):
    ports: list[ServicePortSpec] = Field(default_factory=list)
    selector: dict[str, str] | None = None
    cluster_ip: str | None = Field(default=None, alias="clusterIP")
    type: str = "ClusterIP"
    external_name: str | None = None
    external_ips: list[str] = Field(default_factory=list, alias="externalIPs")


class LoadBalancerIngress(ApiModel):
    ip: str | None = None
    hostname: str | None = None


class LoadBalancerStatus(ApiModel):
    ingress: list[LoadBalancerIngress] = Field(default_factory=list)


class ServiceStatus(ApiModel):
    """What the cloud's load balancer controller wrote: the Gateway API status of a Gateway served by the
    Service reports it (`model/gateway_api/service_addresses.py`)."""

    load_balancer: LoadBalancerStatus = Field(default_factory=LoadBalancerStatus)


class Service(Resource):
    kind: Literal["Service"]
    spec: ServiceSpec = Field(default_factory=ServiceSpec)
    status: ServiceStatus = Field(default_factory=ServiceStatus)


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
    hostname: str | None = None
    node_name: str | None = None
    zone: str | None = None


class SlicePort(ApiModel):
    name: str = ""
    port: PortNumber | None = None
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


class Namespace(Resource):
    """A Namespace: its labels (a Gateway API listener's `allowedRoutes.namespaces.selector` reads them)."""

    kind: Literal["Namespace"]

    @property
    def labels(self) -> dict[str, str]:
        """Its labels, with the `kubernetes.io/metadata.name` label Kubernetes gives every namespace."""
        return {"kubernetes.io/metadata.name": self.metadata.name, **self.metadata.labels}


class Pod(Resource):
    kind: Literal["Pod"]
    spec: PodSpec = Field(default_factory=PodSpec)
    status: PodStatus = Field(default_factory=PodStatus)


# Secret keys Istio reads for credentialName: the generic (Opaque) names first, then the
# kubernetes.io/tls names.
CERT_KEYS = (("cert", "key"), ("tls.crt", "tls.key"))
CA_KEYS = (("cacert", "crl"), ("ca.crt", "ca.crl"))


class Secret(Resource):
    """A v1 Secret. `data` is base64 (as the API server stores it), `stringData` plain text and wins
    on equal keys. The TLS keys Istio reads are checked as PEM (a key must match its certificate);
    other keys are kept unchecked."""

    kind: Literal["Secret"]
    type: str = "Opaque"
    data: dict[str, str] = Field(default_factory=dict)
    string_data: dict[str, str] = Field(default_factory=dict)
    _values: dict[str, bytes] = PrivateAttr(default_factory=dict)

    @model_validator(mode="after")
    def _decode(self) -> Secret:
        values: dict[str, bytes] = {}
        for key, text in self.data.items():
            try:
                values[key] = base64.b64decode(text, validate=True)
            except binascii.Error:
                raise ValueError(f"data.{key}: not valid base64") from None
        values.update((k, v.encode()) for k, v in self.string_data.items())
        if self.type == "kubernetes.io/tls" and not ("tls.crt" in values and "tls.key" in values):
            raise ValueError("data: a kubernetes.io/tls Secret needs tls.crt and tls.key")
        for cert_key, key_key in CERT_KEYS:
            if (cert_key in values) != (key_key in values):
                missing = key_key if cert_key in values else cert_key
                raise ValueError(f"data.{missing}: {cert_key} and {key_key} go together")
            if cert_key in values:
                pem.check_key_pair(
                    values[cert_key], values[key_key], cert_field=f"data.{cert_key}", key_field=f"data.{key_key}"
                )
        for ca_key, crl_key in CA_KEYS:
            if ca_key in values:
                pem.certificates(values[ca_key], what=f"data.{ca_key}")
            if crl_key in values:
                pem.check_crl(values[crl_key], what=f"data.{crl_key}")
        self._values = values
        return self

    def key_cert(self) -> tuple[bytes, bytes] | None:
        """(certificate chain, private key), as Istio picks them: `cert`/`key`, else `tls.crt`/`tls.key`."""
        for cert_key, key_key in CERT_KEYS:
            if cert_key in self._values:
                return self._values[cert_key], self._values[key_key]
        return None

    def ca(self) -> tuple[bytes, bytes | None] | None:
        """(CA certificates, CRL or None): `cacert`/`crl`, else `ca.crt`/`ca.crl`."""
        for ca_key, crl_key in CA_KEYS:
            if ca_key in self._values:
                return self._values[ca_key], self._values.get(crl_key)
        return None
