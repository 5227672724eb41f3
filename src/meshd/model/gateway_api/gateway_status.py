"""A Gateway API Gateway's own status (pure, part of the conversion in `convert.py`): `Accepted` (its class, its
addresses, its listeners), `Programmed` and `status.addresses` (as Istio reports them, `service_addresses.py`:
the Service deployed for it, or the one its `spec.addresses` name, `addresses.py`, and the gateway proxy pods
labelled with its name), the listeners' conditions and attached routes; a listener or Gateway that is not valid
is also an error naming it."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from meshd.api.gateway_api import KubernetesGateway
from meshd.api.meta import GATEWAY_API_GROUP, InvalidResource
from meshd.model.gateway_api.addresses import AddressVerdict
from meshd.model.gateway_api.conditions import Condition, cond, rendered
from meshd.model.gateway_api.listeners import GATEWAY_NAME_LABEL, ListenerView
from meshd.model.gateway_api.service_addresses import (
    Address,
    ServiceFacts,
    deployed_name,
    hostname_of,
    no_instances,
    served_by_service,
    service_missing,
)

if TYPE_CHECKING:
    from meshd.model.gateway_api.convert import GatewayApiResult


def gateway_status(
    gateway: KubernetesGateway,
    views: list[ListenerView],
    verdicts: Mapping[str, tuple[bool, str, str]],
    *,
    gateway_pods: Mapping[tuple[str, str], tuple[str, ...]] | None,
    address: AddressVerdict | None,
    services: Mapping[tuple[str, str], ServiceFacts] | None = None,
    domain_suffix: str = "cluster.local",
    result: GatewayApiResult,
) -> None:
    """`gateway_pods` and `services` ((namespace, name) -> what each Service says of its addresses) are given by
    the status writer only (None: Programmed and the addresses are not looked at)."""
    ns, name = gateway.metadata.namespace, gateway.metadata.name
    conditions: list[Condition] = []
    if not verdicts[gateway.spec.gateway_class_name][0]:
        conditions.append(
            cond("Accepted", False, "Invalid", f"GatewayClass {gateway.spec.gateway_class_name} is not accepted")
        )
    elif address is not None and not address.accepted:
        conditions.append(cond("Accepted", False, address.reason, address.message))
    elif not any(v.valid for v in views) and (address is None or address.programmed):
        conditions.append(cond("Accepted", False, "ListenersNotValid", "no listener is valid"))
    elif address is not None and not address.programmed:
        conditions.append(cond("Accepted", True, "Accepted", "handled by meshd"))
    elif not any(v.valid for v in views):
        conditions.append(cond("Accepted", False, "ListenersNotValid", "no listener is valid"))
    else:
        conditions.append(cond("Accepted", True, "Accepted", "handled by meshd"))
    accepted = conditions[0][1] == "True"
    pods = gateway_pods.get((ns, name), ()) if gateway_pods is not None else None
    programmed, addresses = _programmed(
        gateway, views, accepted=accepted, pods=pods, address=address, services=services, domain_suffix=domain_suffix
    )
    conditions.append(programmed)
    for view in views:
        if not view.valid and (address is None or address.programmed):  # (else: the Gateway's error says why)
            problems = [c for c in view.conditions if (c[0] == "Conflicted") == (c[1] == "True")]
            message = "; ".join(f"{c[0]} {c[2]}: {c[3]}" for c in problems)
            result.errors.append(InvalidResource(gateway.key, f"spec.listeners[{view.index}]", message))
    if conditions[0][1] == "False":
        result.errors.append(InvalidResource(gateway.key, "spec", f"{conditions[0][2]}: {conditions[0][3]}"))
    elif address is not None and not address.programmed:
        result.errors.append(InvalidResource(gateway.key, "spec.addresses", f"{address.reason}: {address.message}"))
    status: dict[str, Any] = {
        "conditions": rendered(conditions),
        "listeners": [
            {
                "name": v.listener.name,
                "supportedKinds": [{"group": GATEWAY_API_GROUP, "kind": k} for k in v.supported_kinds],
                "attachedRoutes": v.attached,
                "conditions": rendered(v.conditions),
            }
            for v in views
        ],
    }
    if addresses:
        status["addresses"] = addresses
    result.status[gateway.key] = status


def _programmed(
    gateway: KubernetesGateway,
    views: list[ListenerView],
    *,
    accepted: bool,
    pods: tuple[str, ...] | None,
    address: AddressVerdict | None,
    services: Mapping[tuple[str, str], ServiceFacts] | None,
    domain_suffix: str,
) -> tuple[Condition, list[Address]]:
    """Programmed, and the addresses to report (`service_addresses.py`)."""
    ns, name = gateway.metadata.namespace, gateway.metadata.name
    ports = [v.listener.port for v in views if v.valid]
    if not accepted:
        return cond("Programmed", False, "Invalid", "the Gateway is not accepted"), []
    if address is not None:  # manual deployment: the pods of the Service its addresses name
        asked = [{"type": a.type, "value": a.value} for a in gateway.spec.addresses]
        target = address.target
        facts = services.get(target[:2]) if services is not None and target is not None else None
        if target is None or facts is None:
            condition = cond("Programmed", address.programmed, address.reason, address.message)
            return condition, asked if address.programmed else []
        host = hostname_of(target[0], target[1], domain_suffix=domain_suffix)
        return served_by_service(host, facts, ports=ports, fallback=asked)
    if pods is None or services is None:
        return cond(
            "Programmed", True, "Programmed", f"served by the gateway proxies labelled {GATEWAY_NAME_LABEL}={name}"
        ), []
    host = hostname_of(ns, deployed_name(gateway), domain_suffix=domain_suffix)
    facts = services.get((ns, deployed_name(gateway)))
    if facts is None:
        if not pods:
            return service_missing(host), []
        # gateway proxies deployed by hand without the Service automated deployment creates: their IPs
        message = f"served by the gateway proxies labelled {GATEWAY_NAME_LABEL}={name} (no Service {host})"
        return cond("Programmed", True, "Programmed", message), [{"type": "IPAddress", "value": ip} for ip in pods]
    if not pods:
        return no_instances(host), []
    return served_by_service(host, facts, ports=ports, fallback=[])
