"""Kubernetes Gateway API TCPRoute and TLSRoute (gateway.networking.k8s.io v1alpha2), as meshd reads them.

Strict: an unknown field is refused by name. A TCPRoute attaches to TCP listeners and to TLS listeners that
terminate TLS; a TLSRoute to TLS listeners that pass TLS through, matching the client's SNI against its
`hostnames`. Their backendRefs (Services, with weights) become VirtualService tcp / tls routes
(`model/gateway_api/l4.py`). meshd takes one rule per route, as the connection has nothing else to match on.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from meshd.api.gateway_api import Hostname, ParentReference
from meshd.api.httproute import MAX_BACKEND_WEIGHT, BackendObjectReference
from meshd.api.meta import GATEWAY_API_GROUP, Resource, StrictModel

L4_ROUTE_VERSIONS = (f"{GATEWAY_API_GROUP}/v1alpha2",)


class L4BackendRef(BackendObjectReference):
    weight: int = Field(default=1, ge=0, le=MAX_BACKEND_WEIGHT)


class L4RouteRule(StrictModel):
    name: str = ""
    backend_refs: list[L4BackendRef] = Field(min_length=1, max_length=16)


class TCPRouteSpec(StrictModel):
    parent_refs: list[ParentReference] = Field(default_factory=list, max_length=32)
    rules: list[L4RouteRule] = Field(min_length=1, max_length=1)


class KubernetesTCPRoute(Resource):
    kind: Literal["TCPRoute"]
    spec: TCPRouteSpec


class TLSRouteSpec(StrictModel):
    parent_refs: list[ParentReference] = Field(default_factory=list, max_length=32)
    hostnames: list[Hostname] = Field(default_factory=list, max_length=16)
    rules: list[L4RouteRule] = Field(min_length=1, max_length=1)


class KubernetesTLSRoute(Resource):
    kind: Literal["TLSRoute"]
    spec: TLSRouteSpec
