"""Kubernetes Gateway API GRPCRoute (gateway.networking.k8s.io v1), as meshd reads it.

Strict: an unknown field is refused by name, and so is every field meshd does not translate (ExtensionRef
filters, `sessionPersistence`, per-backend filters other than the header modifiers). A GRPCRoute attaches to
the HTTP and HTTPS listeners of a Gateway; its matches (`method`: service and/or method, Exact or
RegularExpression; `headers`), filters (RequestHeaderModifier, ResponseHeaderModifier, RequestMirror) and
weighted backendRefs become VirtualService http routes (`model/gateway_api/grpc.py`) on the path
`/<service>/<method>` gRPC calls are made on.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, model_validator

from meshd.api.gateway_api import Hostname, ParentReference
from meshd.api.httproute import MAX_BACKEND_WEIGHT, BackendObjectReference, HeaderFilter, HeaderMatch, RequestMirror
from meshd.api.meta import Resource, StrictModel, refused
from meshd.api.values import check_regex

# the Gateway API's patterns for an exact service (a dotted name) and method (one name)
_SERVICE = re.compile(r"^\.?[a-z_][a-z_0-9]*(\.[a-z_][a-z_0-9]*)*$", re.IGNORECASE)
_METHOD = re.compile(r"^[A-Za-z_][A-Za-z_0-9]*$")


class GRPCMethodMatch(StrictModel):
    type: Literal["Exact", "RegularExpression"] = "Exact"
    service: str | None = Field(default=None, max_length=1024)
    method: str | None = Field(default=None, max_length=1024)

    @model_validator(mode="after")
    def _check(self) -> GRPCMethodMatch:
        if not self.service and not self.method:
            raise ValueError("one of service or method must be given")
        for name, value in (("service", self.service), ("method", self.method)):
            if not value:
                continue
            if self.type == "RegularExpression":
                check_regex(value)
            elif not (_SERVICE if name == "service" else _METHOD).match(value):
                raise ValueError(f"{name}: {value!r} is not a valid gRPC {name} name")
        return self


class GRPCRouteMatch(StrictModel):
    method: GRPCMethodMatch | None = None
    headers: list[HeaderMatch] = Field(default_factory=list, max_length=16)


GRPC_FILTER_FIELDS = {
    "RequestHeaderModifier": "requestHeaderModifier",
    "ResponseHeaderModifier": "responseHeaderModifier",
    "RequestMirror": "requestMirror",
}


class GRPCRouteFilter(StrictModel):
    type: str = Field(min_length=1)
    request_header_modifier: HeaderFilter | None = None
    response_header_modifier: HeaderFilter | None = None
    request_mirror: RequestMirror | None = None
    extension_ref: dict[str, object] | None = refused("extension filters are not applied by meshd")

    @model_validator(mode="after")
    def _check(self) -> GRPCRouteFilter:
        if self.type not in GRPC_FILTER_FIELDS:
            raise ValueError(
                f"type: filter {self.type!r} is not supported by meshd on a GRPCRoute "
                f"(supported: {', '.join(GRPC_FILTER_FIELDS)})"
            )
        wanted = GRPC_FILTER_FIELDS[self.type]
        given = {
            "requestHeaderModifier": self.request_header_modifier,
            "responseHeaderModifier": self.response_header_modifier,
            "requestMirror": self.request_mirror,
        }
        for name, value in given.items():
            if (value is not None) != (name == wanted):
                raise ValueError(
                    f"{name}: " + ("required by the filter's type" if value is None else "not of its type")
                )
        return self


class GRPCBackendRef(BackendObjectReference):
    weight: int = Field(default=1, ge=0, le=MAX_BACKEND_WEIGHT)
    filters: list[GRPCRouteFilter] = Field(default_factory=list, max_length=16)

    @model_validator(mode="after")
    def _check(self) -> GRPCBackendRef:
        for i, f in enumerate(self.filters):
            if f.type not in ("RequestHeaderModifier", "ResponseHeaderModifier"):
                raise ValueError(f"filters[{i}].type: {f.type} on a backendRef is not supported by meshd yet")
        return self


class GRPCRouteRule(StrictModel):
    name: str = ""
    matches: list[GRPCRouteMatch] = Field(default_factory=list, max_length=64)
    filters: list[GRPCRouteFilter] = Field(default_factory=list, max_length=16)
    backend_refs: list[GRPCBackendRef] = Field(default_factory=list, max_length=16)
    session_persistence: dict[str, object] | None = refused("session persistence is not applied by meshd")

    @model_validator(mode="after")
    def _check(self) -> GRPCRouteRule:
        types = [f.type for f in self.filters]
        for kind in ("RequestHeaderModifier", "ResponseHeaderModifier"):
            if types.count(kind) > 1:
                raise ValueError(f"filters: {kind} may appear once per rule")
        return self


class GRPCRouteSpec(StrictModel):
    parent_refs: list[ParentReference] = Field(default_factory=list, max_length=32)
    hostnames: list[Hostname] = Field(default_factory=list, max_length=16)
    rules: list[GRPCRouteRule] = Field(default_factory=lambda: [GRPCRouteRule()], max_length=16)


class GRPCRoute(Resource):
    kind: Literal["GRPCRoute"]
    spec: GRPCRouteSpec
