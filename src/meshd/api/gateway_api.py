"""Kubernetes Gateway API (gateway.networking.k8s.io) GatewayClass, Gateway and ReferenceGrant, as meshd reads
them (the standard channel of Gateway API v1.2).

Strict: an unknown field is refused by name. Fields of the standard channel that meshd does not translate
are read so that they can be refused where the specification says to (a listener protocol meshd does not
serve is a listener condition `UnsupportedProtocol`; `addresses` link the Gateway to an existing Service's pods,
`model/gateway_api/addresses.py`);
`infrastructure.parametersRef` and TLS `options` are refused here, by name. A Gateway API Gateway's identity is
`KubernetesGateway` (`api.meta.kind_identity`): it never collides with an Istio Gateway of the same name.
"""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import AfterValidator, Field, model_validator

from meshd.api.meta import GATEWAY_API_GROUP, Resource, StrictModel, refused
from meshd.api.values import PortNumber

GATEWAY_API_VERSIONS = (f"{GATEWAY_API_GROUP}/v1", f"{GATEWAY_API_GROUP}/v1beta1")
REFERENCE_GRANT_VERSIONS = (f"{GATEWAY_API_GROUP}/v1beta1", f"{GATEWAY_API_GROUP}/v1alpha2")
# The controllers meshd implements: Istio's (class `istio`, as istiod) and its own (class `meshd`).
CONTROLLER_NAMES = ("istio.io/gateway-controller", "meshd.io/gateway-controller")
# GatewayClasses meshd serves even when no GatewayClass object names them (istiod creates `istio` itself).
BUILTIN_CLASSES = {"istio": CONTROLLER_NAMES[0], "meshd": CONTROLLER_NAMES[1]}


_HOSTNAME = re.compile(r"^(\*\.)?[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")


def check_hostname(value: str, *, wildcard: bool = True) -> str:
    """A Gateway API hostname: lowercase RFC 1123 DNS name, `*.` first where a wildcard is allowed, no IP."""
    if len(value) > 253 or not _HOSTNAME.match(value) or (not wildcard and value.startswith("*")):
        kind = "a hostname (RFC 1123, optionally starting with *.)" if wildcard else "a hostname (RFC 1123)"
        raise ValueError(f"{value[:300]!r} is not {kind}")
    if all(part.isdigit() for part in value.split(".")):
        raise ValueError(f"{value!r} is an IP address, not a hostname")
    return value


def _precise(value: str) -> str:
    return check_hostname(value, wildcard=False)


Hostname = Annotated[str, AfterValidator(check_hostname)]
PreciseHostname = Annotated[str, AfterValidator(_precise)]


class KubeLabelSelectorRequirement(StrictModel):
    key: str = Field(min_length=1)
    operator: Literal["In", "NotIn", "Exists", "DoesNotExist"]
    values: list[str] = Field(default_factory=list)


class KubeLabelSelector(StrictModel):
    match_labels: dict[str, str] = Field(default_factory=dict)
    match_expressions: list[KubeLabelSelectorRequirement] = Field(default_factory=list)

    def matches(self, labels: dict[str, str]) -> bool:
        if any(labels.get(k) != v for k, v in self.match_labels.items()):
            return False
        for req in self.match_expressions:
            present, value = req.key in labels, labels.get(req.key)
            ok = {
                "In": present and value in req.values,
                "NotIn": not present or value not in req.values,
                "Exists": present,
                "DoesNotExist": not present,
            }[req.operator]
            if not ok:
                return False
        return True


class ParametersReference(StrictModel):
    group: str
    kind: str
    name: str = Field(min_length=1)
    namespace: str = ""


class GatewayClassSpec(StrictModel):
    controller_name: str = Field(min_length=1)
    parameters_ref: ParametersReference | None = None  # the class is not Accepted (InvalidParameters)
    description: str = ""


class GatewayClass(Resource):
    kind: Literal["GatewayClass"]
    spec: GatewayClassSpec


class SecretObjectReference(StrictModel):
    group: str = ""
    kind: str = "Secret"
    name: str = Field(min_length=1)
    namespace: str = ""


class GatewayTLSConfig(StrictModel):
    mode: Literal["Terminate", "Passthrough"] = "Terminate"
    certificate_refs: list[SecretObjectReference] = Field(default_factory=list, max_length=64)
    options: dict[str, str] | None = refused("TLS options are not applied by meshd (the listener keeps its defaults)")


class RouteNamespaces(StrictModel):
    from_: Literal["All", "Same", "Selector"] = Field(default="Same", alias="from")
    selector: KubeLabelSelector | None = None

    @model_validator(mode="after")
    def _check(self) -> RouteNamespaces:
        if self.from_ == "Selector" and self.selector is None:
            raise ValueError("selector: required when from is Selector")
        return self


class RouteGroupKind(StrictModel):
    group: str = GATEWAY_API_GROUP
    kind: str = Field(min_length=1)


class AllowedRoutes(StrictModel):
    namespaces: RouteNamespaces = Field(default_factory=RouteNamespaces)
    kinds: list[RouteGroupKind] = Field(default_factory=list, max_length=8)


class Listener(StrictModel):
    name: str = Field(min_length=1, max_length=253)
    hostname: Hostname | None = None
    port: PortNumber
    protocol: str = Field(min_length=1)
    tls: GatewayTLSConfig | None = None
    allowed_routes: AllowedRoutes = Field(default_factory=AllowedRoutes)


class GatewayAddress(StrictModel):
    type: str = "IPAddress"
    value: str = Field(min_length=1)


_LABEL_NAME = re.compile(
    r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$"
)
_LABEL_VALUE = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?$")


class GatewayInfrastructure(StrictModel):
    """What goes on the objects meshd deploys for the Gateway (`kube/gateway_deploy.py`)."""

    labels: dict[str, str] = Field(default_factory=dict, max_length=8)
    annotations: dict[str, str] = Field(default_factory=dict, max_length=8)
    parameters_ref: dict[str, object] | None = refused(
        "no parameters are applied to what meshd deploys: use infrastructure.labels/annotations"
    )

    @model_validator(mode="after")
    def _check(self) -> GatewayInfrastructure:
        for key, value in self.labels.items():
            if not _LABEL_NAME.match(key) or not _LABEL_VALUE.match(value):
                raise ValueError(f"labels: {key[:100]!r}: {value[:100]!r} is not a valid Kubernetes label")
        for key in self.annotations:
            if not _LABEL_NAME.match(key):
                raise ValueError(f"annotations: {key[:100]!r} is not a valid Kubernetes annotation name")
        return self


class KubernetesGatewaySpec(StrictModel):
    gateway_class_name: str = Field(min_length=1)
    listeners: list[Listener] = Field(min_length=1, max_length=64)
    addresses: list[GatewayAddress] = Field(default_factory=list)
    infrastructure: GatewayInfrastructure | None = None

    @model_validator(mode="after")
    def _check(self) -> KubernetesGatewaySpec:
        names = [listener.name for listener in self.listeners]
        for i, name in enumerate(names):
            if name in names[:i]:
                raise ValueError(f"listeners[{i}].name: {name!r} is already the name of a listener")
        return self


class KubernetesGateway(Resource):
    """gateway.networking.k8s.io Gateway (identity kind `KubernetesGateway`)."""

    kind: Literal["Gateway"]
    spec: KubernetesGatewaySpec


class ReferenceGrantFrom(StrictModel):
    group: str
    kind: str = Field(min_length=1)
    namespace: str = Field(min_length=1)


class ReferenceGrantTo(StrictModel):
    group: str
    kind: str = Field(min_length=1)
    name: str = ""


class ReferenceGrantSpec(StrictModel):
    from_: list[ReferenceGrantFrom] = Field(alias="from", min_length=1, max_length=16)
    to: list[ReferenceGrantTo] = Field(min_length=1, max_length=16)


class ReferenceGrant(Resource):
    kind: Literal["ReferenceGrant"]
    spec: ReferenceGrantSpec


class ParentReference(StrictModel):
    group: str = GATEWAY_API_GROUP
    kind: str = "Gateway"
    namespace: str = ""
    name: str = Field(min_length=1)
    section_name: str = ""
    port: PortNumber | None = None
