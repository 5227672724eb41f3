"""The status each Gateway API object meshd handles should carry, and how it is written over the status
already there (pure; the leader's status writer calls these).

- Desired: `convert` over the objects meshd holds, with the Kubernetes Services (a Gateway's `Programmed` and
  `addresses`: those of the Service serving it, `service_addresses.py`), the Secrets (a missing certificate is
  a listener's InvalidCertificateRef) and the gateway proxy pods (none: the Gateway is not Programmed). An
  object meshd refused outright (its model is invalid: an unsupported field, filter or value) gets a refusal,
  whatever its last accepted version says:
  GatewayClass Accepted False InvalidParameters, Gateway Accepted False Invalid, route Accepted False
  UnsupportedValue on each parent.
  BackendTLSPolicy: Accepted False Invalid on each target (`ancestors`).
- Written: meshd's conditions get `observedGeneration` and a `lastTransitionTime` kept while their status
  does not change; a route's parents of other controllers are kept; a Gateway's addresses are never taken
  away (Istio's rule: none reported, the ones there stay).
"""

from __future__ import annotations

import datetime
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from meshd.api.gateway_api import CONTROLLER_NAMES
from meshd.api.kube import Pod, Secret, Service
from meshd.api.meta import GATEWAY_API_GROUP, KUBERNETES_GATEWAY, InvalidResource, Resource, ResourceKey
from meshd.model.derive import mesh_service
from meshd.model.gateway_api.addresses import address_targets
from meshd.model.gateway_api.backend_tls import MESH_CONTROLLER
from meshd.model.gateway_api.convert import convert, status_digest
from meshd.model.gateway_api.inputs import inputs_of, policy_ports
from meshd.model.gateway_api.listeners import GATEWAY_NAME_LABEL, class_verdicts
from meshd.model.gateway_api.service_addresses import service_facts

# kind identity -> plural, for the kinds meshd writes status on (group gateway.networking.k8s.io)
# (the route kinds meshd does not translate yet get a refusal on each parent)
STATUS_KINDS = {
    "GatewayClass": "gatewayclasses",
    KUBERNETES_GATEWAY: "gateways",
    "HTTPRoute": "httproutes",
    "GRPCRoute": "grpcroutes",
    "TCPRoute": "tcproutes",
    "TLSRoute": "tlsroutes",
    "UDPRoute": "udproutes",
    "BackendTLSPolicy": "backendtlspolicies",
}
# the version to read an object meshd holds no copy of at, where the group's preferred one may not serve it
STATUS_VERSIONS = {
    "TCPRoute": "v1alpha2",
    "TLSRoute": "v1alpha2",
    "UDPRoute": "v1alpha2",
    "GRPCRoute": "v1",
    "BackendTLSPolicy": "v1alpha3",  # served by the CRDs of Gateway API v1.1 to v1.4 alike
}
ROUTE_KINDS = ("HTTPRoute", "GRPCRoute", "TCPRoute", "TLSRoute", "UDPRoute")
REFUSED_REASONS = {
    "GatewayClass": "InvalidParameters",
    KUBERNETES_GATEWAY: "Invalid",
    **dict.fromkeys(ROUTE_KINDS, "UnsupportedValue"),
    "BackendTLSPolicy": "Invalid",
}


@dataclass(frozen=True)
class ApiStatus:
    """A desired Gateway API status: `body` (canonical JSON) from the conversion, or `refused` (the message of
    the error meshd refused the object with)."""

    body: str = ""
    refused: str = ""
    classes: tuple[str, ...] = ()  # the class names meshd serves (whether a refused Gateway is meshd's)


def desired_statuses(
    resources: Iterable[Resource], *, errors: Iterable[InvalidResource], domain_suffix: str
) -> dict[ResourceKey, ApiStatus]:
    items = list(resources)
    inputs = inputs_of(items)
    out: dict[ResourceKey, ApiStatus] = {}
    if inputs:
        pods: dict[tuple[str, str], list[str]] = {}
        for pod in items:
            if isinstance(pod, Pod) and GATEWAY_NAME_LABEL in pod.metadata.labels and pod.status.pod_ip:
                at = (pod.metadata.namespace, pod.metadata.labels[GATEWAY_NAME_LABEL])
                pods.setdefault(at, []).append(pod.status.pod_ip)
        mesh_services = {
            (s.metadata.namespace, s.metadata.name): mesh_service(s, suffix=domain_suffix)
            for s in items
            if isinstance(s, Service)
        }
        result = convert(
            inputs,
            services={key: frozenset(p.number for p in s.ports) for key, s in mesh_services.items()},
            addresses=address_targets(
                [g for g in inputs.gateways if g.spec.addresses], services=mesh_services, domain_suffix=domain_suffix
            ),
            secrets={(s.metadata.namespace, s.metadata.name) for s in items if isinstance(s, Secret)},
            gateway_pods={at: tuple(sorted(ips)) for at, ips in pods.items()},
            service_facts={
                (s.metadata.namespace, s.metadata.name): service_facts(s) for s in items if isinstance(s, Service)
            },
            domain_suffix=domain_suffix,
            service_ports=policy_ports(inputs.tls_policies, mesh_services),
        )
        out = {key: ApiStatus(body=status_digest(status)) for key, status in result.status.items()}
    classes = tuple(sorted(class_verdicts(inputs.classes)))
    for error in errors:
        if error.key is not None and error.key.kind in STATUS_KINDS and error.origin:
            out[error.key] = ApiStatus(refused=f"{error.field}: {error.message}", classes=classes)
    return out


def _rfc3339(when: datetime.datetime) -> str:
    return when.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _stamp(
    conditions: list[dict[str, Any]], previous: Any, *, generation: int, now: datetime.datetime
) -> list[dict[str, Any]]:
    before = {c.get("type"): c for c in previous or [] if isinstance(c, dict)}
    out = []
    for c in conditions:
        old = before.get(c["type"])
        keep = old is not None and old.get("status") == c["status"] and old.get("lastTransitionTime")
        when = old["lastTransitionTime"] if keep and old is not None else _rfc3339(now)
        out.append({**c, "observedGeneration": generation, "lastTransitionTime": when})
    return out


def _refusal(key: ResourceKey, message: str, obj: Mapping[str, Any]) -> dict[str, Any]:
    """The status of a refused object, from what can be read of it (its parentRefs, its class)."""
    spec = obj.get("spec") if isinstance(obj.get("spec"), dict) else {}
    assert isinstance(spec, dict)
    reason = REFUSED_REASONS[key.kind]
    refused = [{"type": "Accepted", "status": "False", "reason": reason, "message": f"refused by meshd: {message}"}]
    if key.kind in ROUTE_KINDS:
        refs = spec.get("parentRefs") if isinstance(spec.get("parentRefs"), list) else []
        parents = []
        for ref in refs or []:
            if isinstance(ref, dict) and isinstance(ref.get("name"), str):
                parent = {"group": GATEWAY_API_GROUP, "kind": "Gateway", "namespace": key.namespace, **ref}
                parents.append({"parentRef": parent, "controllerName": CONTROLLER_NAMES[0], "conditions": refused})
        return {"parents": parents}
    if key.kind == KUBERNETES_GATEWAY:
        return {"conditions": [*refused, {**refused[0], "type": "Programmed", "reason": "Invalid"}]}
    if key.kind == "BackendTLSPolicy":
        refs = spec.get("targetRefs") if isinstance(spec.get("targetRefs"), list) else []
        ancestors = []
        for ref in refs or []:
            if isinstance(ref, dict) and isinstance(ref.get("name"), str):
                ancestor = {"group": "", "kind": "Service", "namespace": key.namespace, **ref}
                ancestors.append({"ancestorRef": ancestor, "controllerName": MESH_CONTROLLER, "conditions": refused})
        return {"ancestors": ancestors[:16]}
    return {"conditions": refused}


def _owned(key: ResourceKey, desired: ApiStatus, obj: Mapping[str, Any]) -> bool:
    """Whether a refused object is meshd's to write on: a class of its controllers, a Gateway of such a class,
    a route whatever its parents."""
    spec = obj.get("spec") if isinstance(obj.get("spec"), dict) else {}
    assert isinstance(spec, dict)
    if key.kind == "GatewayClass":
        return spec.get("controllerName") in CONTROLLER_NAMES
    if key.kind == KUBERNETES_GATEWAY:
        return spec.get("gatewayClassName") in desired.classes
    return True


def render_api_status(
    key: ResourceKey,
    desired: ApiStatus,
    *,
    obj: Mapping[str, Any],
    generation: int,
    now: datetime.datetime,
) -> dict[str, Any] | None:
    """The status to write on `obj` (None: not meshd's to write)."""
    if not desired.body and not _owned(key, desired, obj):
        return None
    previous = obj.get("status") if isinstance(obj.get("status"), dict) else {}
    assert isinstance(previous, dict)
    body: dict[str, Any] = json.loads(desired.body) if desired.body else _refusal(key, desired.refused, obj)
    if key.kind == "BackendTLSPolicy":
        ours = {*CONTROLLER_NAMES, MESH_CONTROLLER}
        return _merged_list(body, previous, ours, field="ancestors", ref="ancestorRef", generation=generation, now=now)
    if key.kind not in ROUTE_KINDS:
        status = {k: v for k, v in previous.items() if k not in ("conditions", "listeners")}
        status["conditions"] = _stamp(body["conditions"], previous.get("conditions"), generation=generation, now=now)
        if "listeners" in body:
            before = {lst.get("name"): lst for lst in previous.get("listeners") or [] if isinstance(lst, dict)}
            status["listeners"] = [
                {
                    **lst,
                    "conditions": _stamp(
                        lst["conditions"],
                        (before.get(lst["name"]) or {}).get("conditions"),
                        generation=generation,
                        now=now,
                    ),
                }
                for lst in body["listeners"]
            ]
        if body.get("addresses"):
            status["addresses"] = body["addresses"]
        return status
    return _merged_list(
        body, previous, set(CONTROLLER_NAMES), field="parents", ref="parentRef", generation=generation, now=now
    )


def _merged_list(
    body: dict[str, Any],
    previous: dict[str, Any],
    ours: set[str],
    *,
    field: str,
    ref: str,
    generation: int,
    now: datetime.datetime,
) -> dict[str, Any]:
    """A route's `parents` / a policy's `ancestors`: meshd's entries (of the controllers `ours`) written, the other
    controllers' kept."""
    kept = [p for p in previous.get(field) or [] if isinstance(p, dict) and p.get("controllerName") not in ours]
    old = {
        json.dumps(p.get(ref), sort_keys=True): p
        for p in previous.get(field) or []
        if isinstance(p, dict) and p.get("controllerName") in ours
    }
    entries = []
    for entry in body[field]:
        before = old.get(json.dumps(entry[ref], sort_keys=True)) or {}
        entries.append(
            {
                **entry,
                "conditions": _stamp(entry["conditions"], before.get("conditions"), generation=generation, now=now),
            }
        )
    return {**{k: v for k, v in previous.items() if k != field}, field: [*kept, *entries]}
