"""Gateway API objects -> the Istio Gateways and VirtualServices meshd translates, the errors meshd reports on
them (`/debug/config_errors`, logs) and the status each object should carry (pure; the World builds call it,
and so does the status writer, with the pods and Secrets it also knows of).

A route attaches to a listener of one of meshd's Gateways when its parentRef names the Gateway (and the
listener by `sectionName` / `port`, if given), the listener allows the route's namespace and kind, and their
hostnames meet (a TCPRoute has no hostnames: it takes the listener's). HTTPRoutes become http routes
(`http.py`), GRPCRoutes too (`grpc.py`), TCPRoutes and TLSRoutes tcp / tls routes (`l4.py`) of one
VirtualService per listener and hostname. A parentRef to a Service (mesh routing, GAMMA) attaches an HTTPRoute,
GRPCRoute, TCPRoute or TLSRoute to the sidecars calling that Service (`mesh.py`); a parentRef of another kind is
refused (UnsupportedValue).
"""

from __future__ import annotations

import json
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from meshd.api.destinationrule import DestinationRule
from meshd.api.gateway import Gateway
from meshd.api.gateway_api import CONTROLLER_NAMES, KubernetesGateway, ParentReference
from meshd.api.gateway_l4route import KubernetesTCPRoute
from meshd.api.grpcroute import GRPCRoute
from meshd.api.httproute import HTTPRoute
from meshd.api.meta import GATEWAY_API_GROUP, KUBERNETES_GATEWAY, InvalidResource, ResourceKey, field_path
from meshd.api.virtualservice import VirtualService
from meshd.model.gateway_api.addresses import (
    AddressTargets,
    AddressVerdict,
    address_verdict,
    linked_gateway,
)
from meshd.model.gateway_api.backend_tls import ServicePorts, backend_tls
from meshd.model.gateway_api.backends import AnyRoute, ServiceIds, backend_problem, named_services, resolved_refs
from meshd.model.gateway_api.conditions import Condition, cond, rendered
from meshd.model.gateway_api.gateway_status import gateway_status
from meshd.model.gateway_api.grants import Grants
from meshd.model.gateway_api.grpc import grpc_routes
from meshd.model.gateway_api.hostnames import intersect_hostnames
from meshd.model.gateway_api.http import Precedence, http_routes
from meshd.model.gateway_api.inputs import GatewayApiInputs
from meshd.model.gateway_api.l4 import L4Order, l4_route
from meshd.model.gateway_api.listeners import ListenerView, class_verdicts, listener_views
from meshd.model.gateway_api.mesh import MeshRoutes, is_service_parent
from meshd.model.gateway_api.service_addresses import ServiceFacts

# (namespace, Istio Gateway name, hostname) -> the routes of one VirtualService: http ones with their precedence,
# tcp / tls ones with their order
HttpEntries = dict[tuple[str, str, str], list[tuple[Precedence, dict[str, Any]]]]
L4Entries = dict[tuple[str, str, str], list[tuple[L4Order, str, dict[str, Any]]]]


@dataclass
class GatewayApiResult:
    gateways: list[Gateway] = field(default_factory=list)
    virtual_services: list[VirtualService] = field(default_factory=list)
    destination_rules: list[DestinationRule] = field(default_factory=list)  # from BackendTLSPolicies
    errors: list[InvalidResource] = field(default_factory=list)
    status: dict[ResourceKey, dict[str, Any]] = field(default_factory=dict)


def convert(
    inputs: GatewayApiInputs,
    *,
    services: ServiceIds,
    domain_suffix: str,
    secrets: Collection[tuple[str, str]] | None = None,
    gateway_pods: Mapping[tuple[str, str], tuple[str, ...]] | None = None,
    addresses: AddressTargets | None = None,
    service_facts: Mapping[tuple[str, str], ServiceFacts] | None = None,
    service_ports: ServicePorts | None = None,
) -> GatewayApiResult:
    """`secrets` / `gateway_pods` ((namespace, gateway name) -> pod IPs) / `service_facts` (the addresses of each
    Service) are given by the status writer only: a missing certificate Secret is otherwise reported by the
    gateway translation, as for an Istio Gateway.
    `addresses`: the Service each address of a Gateway's `spec.addresses` names (`addresses.py`).
    `service_ports`: port names of the Services BackendTLSPolicies target (`backend_tls.py`)."""
    result = GatewayApiResult()
    verdicts = class_verdicts(inputs.classes)
    for gc in inputs.classes:
        if gc.metadata.name in verdicts:
            ok, message, _ = verdicts[gc.metadata.name]
            reason = "Accepted" if ok else "InvalidParameters"
            conditions = [cond("Accepted", ok, reason, message or "handled by meshd")]
            result.status[gc.key] = {"conditions": rendered(conditions)}
    grants = Grants.of(inputs.grants)
    listeners: dict[tuple[str, str], tuple[KubernetesGateway, list[ListenerView]]] = {}
    linked: dict[tuple[str, str], AddressVerdict | None] = {}
    for gateway in sorted(inputs.gateways, key=lambda g: g.key):
        verdict = verdicts.get(gateway.spec.gateway_class_name)
        if verdict is None:
            continue  # another controller's
        views = listener_views(gateway, grants=grants, secrets=secrets) if verdict[0] else []
        at = (gateway.metadata.namespace, gateway.metadata.name)
        linked[at] = found = address_verdict(gateway, addresses or {})
        for view in views if found is not None else ():
            if found is not None and found.target is not None and view.istio is not None:
                view.istio = linked_gateway(view.istio, found.target)
            else:  # addresses that cannot be used: served nowhere
                view.istio = None
        listeners[at] = (gateway, views)
    per_host: HttpEntries = {}
    per_host_l4: L4Entries = {}
    mesh = MeshRoutes()
    namespace_labels = {n.metadata.name: n.labels for n in inputs.namespaces}
    reached: dict[tuple[str, str], set[tuple[str, str]]] = {}  # Service -> Gateways with a route to it
    for route in sorted(inputs.routes, key=lambda r: r.key):
        _attach_route(
            route,
            listeners,
            verdicts=verdicts,
            namespace_labels=namespace_labels,
            grants=grants,
            services=services,
            domain_suffix=domain_suffix,
            per_host=per_host,
            per_host_l4=per_host_l4,
            mesh=mesh,
            result=result,
            reached=reached,
        )
    result.virtual_services += mesh.virtual_services(domain_suffix=domain_suffix)
    if inputs.tls_policies:
        tls = backend_tls(
            inputs.tls_policies,
            services=service_ports or {},
            ca_maps=inputs.ca_maps,
            gateways_of=reached,
            domain_suffix=domain_suffix,
        )
        result.destination_rules, result.status = tls.rules, {**result.status, **tls.status}
        result.errors += tls.errors
    for gateway, views in listeners.values():
        at = (gateway.metadata.namespace, gateway.metadata.name)
        gateway_status(
            gateway,
            views,
            verdicts,
            gateway_pods=gateway_pods,
            address=linked[at],
            services=service_facts,
            domain_suffix=domain_suffix,
            result=result,
        )
        result.gateways += [v.istio for v in views if v.istio is not None]
    for key in sorted({*per_host, *per_host_l4}):
        try:
            result.virtual_services.append(_virtual_service(key, per_host.get(key, []), per_host_l4.get(key, [])))
        except ValidationError as exc:  # each route was checked alone: a bug, reported rather than raised
            owner = ResourceKey(KUBERNETES_GATEWAY, key[0], key[1].split("~", 1)[0])
            message = f"routes of hostname {key[2]!r} cannot be translated: {exc.errors()[0]['msg']}"
            result.errors.append(InvalidResource(owner, "spec.listeners", message))
    return result


def _parent_ref(ref: ParentReference, namespace: str) -> dict[str, Any]:
    out: dict[str, Any] = {
        "group": ref.group,
        "kind": ref.kind,
        "namespace": ref.namespace or namespace,
        "name": ref.name,
    }
    if ref.section_name:
        out["sectionName"] = ref.section_name
    if ref.port is not None:
        out["port"] = ref.port
    return out


def _attach_route(
    route: AnyRoute,
    listeners: Mapping[tuple[str, str], tuple[KubernetesGateway, list[ListenerView]]],
    *,
    verdicts: Mapping[str, tuple[bool, str, str]],
    namespace_labels: Mapping[str, dict[str, str]],
    grants: Grants,
    services: ServiceIds,
    domain_suffix: str,
    per_host: HttpEntries,
    per_host_l4: L4Entries,
    mesh: MeshRoutes,
    result: GatewayApiResult,
    reached: dict[tuple[str, str], set[tuple[str, str]]],
) -> None:
    ns = route.metadata.namespace
    labels = namespace_labels.get(ns) or {"kubernetes.io/metadata.name": ns}
    controllers = {key: verdicts[gw.spec.gateway_class_name][2] for key, (gw, _) in listeners.items()}
    resolved = resolved_refs(route, grants=grants, services=services)
    entries: list[tuple[Precedence, dict[str, Any]]] | None = None
    parents = []
    for i, ref in enumerate(route.spec.parent_refs):
        where = f"spec.parentRefs[{i}]"
        target = (ref.namespace or ns, ref.name)
        attach: list[tuple[ListenerView, list[str]]] = []
        if is_service_parent(ref):
            if isinstance(route, (HTTPRoute, GRPCRoute)) and entries is None:
                entries = _route_entries(
                    route, domain_suffix=domain_suffix, services=services, grants=grants, result=result
                )
            accepted = mesh.attach(
                route,
                ref,
                services=services,
                domain_suffix=domain_suffix,
                http_entries=entries or [],
                backend_problem=backend_problem(route, grants=grants, services=services),
            )
        elif ref.group != GATEWAY_API_GROUP or ref.kind != "Gateway":
            accepted = cond("Accepted", False, "UnsupportedValue", f"parent kind {ref.kind} is not supported by meshd")
        elif target not in listeners:
            accepted = cond(
                "Accepted",
                False,
                "NoMatchingParent",
                f"Gateway {target[0]}/{target[1]} does not exist or is not of a GatewayClass meshd serves",
            )
            attach = []
        else:
            accepted, attach = _listeners_for(route, ref, listeners[target][1], labels)
        controller = controllers.get(target, CONTROLLER_NAMES[0]) if not is_service_parent(ref) else CONTROLLER_NAMES[0]
        for view, hosts in attach:
            view.attached += 1
            for service in named_services([route]):
                reached.setdefault(service, set()).add(target)
            if not isinstance(route, (HTTPRoute, GRPCRoute)):
                problem = backend_problem(route, grants=grants, services=services)
                for host in hosts:
                    key = (view.gateway.metadata.namespace, view.istio_name, host)
                    found = l4_route(
                        route, port=view.listener.port, host=host, domain_suffix=domain_suffix, backend_problem=problem
                    )
                    if found is not None:
                        per_host_l4.setdefault(key, []).append(found)
                continue
            if entries is None:
                entries = _route_entries(
                    route, domain_suffix=domain_suffix, services=services, grants=grants, result=result
                )
            for host in hosts:
                key = (view.gateway.metadata.namespace, view.istio_name, host)
                per_host.setdefault(key, []).extend(entries)
        if accepted[1] == "False":
            result.errors.append(InvalidResource(route.key, where, f"{accepted[2]}: {accepted[3]}"))
        parents.append(
            {
                "parentRef": _parent_ref(ref, ns),
                "controllerName": controller,
                "conditions": rendered([accepted, resolved[0]]),
            }
        )
    if resolved[1]:
        result.errors.append(InvalidResource(route.key, resolved[1], f"{resolved[0][2]}: {resolved[0][3]}"))
    if parents:
        result.status[route.key] = {"parents": parents}


def _listeners_for(
    route: AnyRoute, ref: ParentReference, views: list[ListenerView], labels: dict[str, str]
) -> tuple[Condition, list[tuple[ListenerView, list[str]]]]:
    named = [
        v
        for v in views
        if (not ref.section_name or v.listener.name == ref.section_name)
        and (ref.port is None or v.listener.port == ref.port)
    ]
    if not named:
        return cond("Accepted", False, "NoMatchingParent", "no listener of the Gateway has this sectionName/port"), []
    allowed = [v for v in named if v.valid and _allows(v, route, labels)]
    if not allowed:
        return cond(
            "Accepted",
            False,
            "NotAllowedByListeners",
            f"no listener of the Gateway allows routes of kind {route.kind} from namespace {route.metadata.namespace}",
        ), []
    attach = []
    for view in allowed:
        if isinstance(route, KubernetesTCPRoute):  # no hostnames: one VirtualService host for the port
            attach.append((view, ["*"]))
            continue
        hosts = intersect_hostnames(route.spec.hostnames, view.listener.hostname or "")
        if hosts:
            attach.append((view, hosts))
    if not attach:
        return cond(
            "Accepted",
            False,
            "NoMatchingListenerHostname",
            "no hostname of the route matches a listener hostname of the Gateway",
        ), []
    return cond("Accepted", True, "Accepted", "attached"), attach


def _allows(view: ListenerView, route: AnyRoute, labels: dict[str, str]) -> bool:
    if route.kind not in view.supported_kinds:
        return False
    spec = view.listener.allowed_routes.namespaces
    if spec.from_ == "All":
        return True
    if spec.from_ == "Same":
        return route.metadata.namespace == view.gateway.metadata.namespace
    assert spec.selector is not None  # the model requires it with Selector
    return spec.selector.matches(labels)


def _route_entries(
    route: HTTPRoute | GRPCRoute, *, domain_suffix: str, services: ServiceIds, grants: Grants, result: GatewayApiResult
) -> list[tuple[Precedence, dict[str, Any]]]:
    problem = backend_problem(route, grants=grants, services=services)
    if isinstance(route, GRPCRoute):
        entries = grpc_routes(route, domain_suffix=domain_suffix, backend_problem=problem)
    else:
        entries = http_routes(route, domain_suffix=domain_suffix, backend_problem=problem)
    kept = []
    for precedence, entry in entries:
        try:
            VirtualService.model_validate(_vs_doc("check", "default", "*", [entry]))
        except ValidationError as exc:
            first = exc.errors()[0]
            message = f"cannot be translated: {field_path(first['loc'])}: {first['msg']}"
            result.errors.append(InvalidResource(route.key, f"spec.rules[{precedence.rule}]", message))
            continue
        kept.append((precedence, entry))
    return kept


def _vs_doc(
    name: str, namespace: str, host: str, http: list[dict[str, Any]], gateway: str = "", **l4: list[dict[str, Any]]
) -> dict[str, Any]:
    spec = {
        "hosts": [host],
        "gateways": [gateway] if gateway else [],
        "http": http,
        **{k: v for k, v in l4.items() if v},
    }
    return {
        "apiVersion": "networking.istio.io/v1",
        "kind": "VirtualService",
        "metadata": {"name": name, "namespace": namespace},
        "spec": spec,
    }


def _virtual_service(
    key: tuple[str, str, str],
    entries: list[tuple[Precedence, dict[str, Any]]],
    l4_entries: list[tuple[L4Order, str, dict[str, Any]]],
) -> VirtualService:
    namespace, gateway, host = key
    http = [entry for _, entry in sorted(entries, key=lambda e: e[0])]
    ordered = sorted(l4_entries, key=lambda e: e[0])
    tcp = [entry for _, kind, entry in ordered if kind == "tcp"]
    tls = [entry for _, kind, entry in ordered if kind == "tls"]
    doc = _vs_doc(f"{gateway}~{host}", namespace, host, http, f"{namespace}/{gateway}", tcp=tcp, tls=tls)
    return VirtualService.model_validate(doc)


def status_digest(status: Mapping[str, Any]) -> str:
    """A canonical text of a desired status: equal statuses, equal digests."""
    return json.dumps(status, sort_keys=True, separators=(",", ":"))
