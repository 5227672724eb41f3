"""Mesh routing (GAMMA): an HTTPRoute, GRPCRoute, TCPRoute or TLSRoute whose parentRef is a Service (`group: ""`
/`core`, `kind: Service`) routes what sidecars send to that Service, converted into a mesh-bound VirtualService
(`gateways: [mesh]`, hosts the Service's FQDN) that the sidecar translation uses as any other.

- A producer route (in the Service's namespace) applies to every client that sees the Service: its
  VirtualService is exported everywhere (`exportTo: ["*"]`). A consumer route (another namespace) applies only
  to clients of its own namespace: its VirtualService lives there, exported to it alone (`exportTo: ["."]`).
- Every route of one (namespace, Service) is merged into one VirtualService, ordered by the Gateway API's
  precedence (`http.py`; tcp: the older route first); it carries the creationTimestamp of its oldest route.
- A GRPCRoute's rules become http routes on `/<service>/<method>` as for a Gateway (`grpc.py`).
- A TLSRoute becomes a tls route matching the SNI of the Service's name (`<name>.<namespace>.svc.<domain>`: Istio
  matches a mesh TLSRoute by its parent Service's hosts, istio/istio#48865), passed through to its backends; its
  own `hostnames` are refused for a Service parent (UnsupportedValue) rather than left unused.
- A TCPRoute or HTTPRoute rule left without a usable backend: as for a Gateway (`l4.py`, `http.py`), except that
  a TCPRoute or TLSRoute without one adds no route (the Service's own routing stays; `ResolvedRefs: False` says
  why).
- `port` narrows the route to that Service port (a `port` match on each route); `sectionName` is refused.
- Precedence over VirtualServices for the same host is the one between mesh VirtualServices
  (`translate/scope.py`): one private to the client's namespace first, then one exported to it by name, then
  public ones, each group oldest first. A consumer route therefore wins for its namespace; a producer route and
  a public VirtualService: the older wins.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from meshd.api.gateway_api import ParentReference
from meshd.api.gateway_l4route import KubernetesTCPRoute, KubernetesTLSRoute
from meshd.api.grpcroute import GRPCRoute
from meshd.api.httproute import HTTPRoute
from meshd.api.virtualservice import VirtualService
from meshd.model.gateway_api.conditions import Condition, cond
from meshd.model.gateway_api.http import BackendCheck, Precedence
from meshd.model.gateway_api.l4 import L4Order, l4_route

MESH_ROUTE_KINDS = ("HTTPRoute", "GRPCRoute", "TCPRoute", "TLSRoute")
# (VirtualService namespace, Service namespace, Service name)
MeshKey = tuple[str, str, str]


def is_service_parent(ref: ParentReference) -> bool:
    return ref.group in ("", "core") and ref.kind == "Service"


@dataclass
class MeshRoutes:
    """The mesh routes of every (namespace, Service), gathered route by route."""

    http: dict[MeshKey, list[tuple[Precedence, dict[str, Any]]]] = field(default_factory=dict)
    tcp: dict[MeshKey, list[tuple[L4Order, dict[str, Any]]]] = field(default_factory=dict)
    tls: dict[MeshKey, list[tuple[L4Order, dict[str, Any]]]] = field(default_factory=dict)
    created: dict[MeshKey, str] = field(default_factory=dict)

    def attach(
        self,
        route: HTTPRoute | GRPCRoute | KubernetesTCPRoute | KubernetesTLSRoute,
        ref: ParentReference,
        *,
        services: Mapping[tuple[str, str], frozenset[int]],
        domain_suffix: str,
        http_entries: list[tuple[Precedence, dict[str, Any]]],
        backend_problem: BackendCheck,
    ) -> Condition:
        """Attach `route` to the Service `ref` names; its Accepted condition for that parent."""
        ns = route.metadata.namespace
        target = (ref.namespace or ns, ref.name)
        if route.kind not in MESH_ROUTE_KINDS:
            return cond(
                "Accepted", False, "UnsupportedValue", f"a {route.kind} with a Service parent is not supported by meshd"
            )
        if ref.section_name:
            return cond(
                "Accepted",
                False,
                "UnsupportedValue",
                "sectionName on a Service parent is not supported by meshd (name the Service port with `port`)",
            )
        if isinstance(route, KubernetesTLSRoute) and route.spec.hostnames:
            return cond(
                "Accepted",
                False,
                "UnsupportedValue",
                "hostnames on a TLSRoute with a Service parent are not supported by meshd (the SNI it matches is the "
                "Service's name, as Istio's)",
            )
        if target not in services:
            return cond("Accepted", False, "NoMatchingParent", f"Service {target[0]}/{target[1]} does not exist")
        if ref.port is not None and ref.port not in services[target]:
            return cond(
                "Accepted", False, "NoMatchingParent", f"Service {target[0]}/{target[1]} has no port {ref.port}"
            )
        key = (ns, *target)
        created = route.metadata.creation_timestamp or "~"
        self.created[key] = min(self.created.get(key, created), created)
        if isinstance(route, (HTTPRoute, GRPCRoute)):
            found = []
            for precedence, entry in http_entries:
                if ref.port is not None:
                    entry = {**entry, "match": [{**m, "port": ref.port} for m in entry["match"]]}
                found.append((precedence, entry))
            self.http.setdefault(key, []).extend(found)
        else:
            host = service_host(*target, domain_suffix=domain_suffix)
            found_l4 = l4_route(
                route, port=ref.port or 0, host=host, domain_suffix=domain_suffix, backend_problem=backend_problem
            )
            if found_l4 is not None:
                order, kind, entry = found_l4
                if kind == "tls":  # by the Service's name; on every port unless one is named
                    match = {"sniHosts": [host], **({"port": ref.port} if ref.port is not None else {})}
                    self.tls.setdefault(key, []).append((order, {**entry, "match": [match]}))
                else:
                    if ref.port is None:
                        entry = {k: v for k, v in entry.items() if k != "match"}
                    self.tcp.setdefault(key, []).append((order, entry))
        return cond("Accepted", True, "Accepted", f"routes what sidecars send to Service {target[0]}/{target[1]}")

    def virtual_services(self, *, domain_suffix: str) -> list[VirtualService]:
        out = []
        for key in sorted({*self.http, *self.tcp, *self.tls}):
            namespace, svc_ns, svc_name = key
            http = [entry for _, entry in sorted(self.http.get(key, []), key=lambda e: e[0])]
            tcp = [entry for _, entry in sorted(self.tcp.get(key, []), key=lambda e: e[0])]
            tls = [entry for _, entry in sorted(self.tls.get(key, []), key=lambda e: e[0])]
            if not http and not tcp and not tls:
                continue
            spec: dict[str, Any] = {
                "hosts": [service_host(svc_ns, svc_name, domain_suffix=domain_suffix)],
                "gateways": ["mesh"],
                "exportTo": ["*"] if namespace == svc_ns else ["."],
                "http": http,
            }
            if tcp:
                spec["tcp"] = tcp
            if tls:
                spec["tls"] = tls
            created = self.created[key]
            meta: dict[str, Any] = {"name": mesh_vs_name(svc_ns, svc_name), "namespace": namespace}
            if created != "~":
                meta["creationTimestamp"] = created
            doc = {"apiVersion": "networking.istio.io/v1", "kind": "VirtualService", "metadata": meta, "spec": spec}
            out.append(VirtualService.model_validate(doc))
        return out


def service_host(namespace: str, name: str, *, domain_suffix: str) -> str:
    return f"{name}.{namespace}.svc.{domain_suffix}"


def mesh_vs_name(namespace: str, name: str) -> str:
    """The name of the VirtualService meshd derives from the mesh routes of a Service (in the routes' namespace)."""
    return f"gamma~{namespace}~{name}"
