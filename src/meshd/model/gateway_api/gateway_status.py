"""A Gateway API Gateway's own status (pure, part of the conversion in `convert.py`): `Accepted` (its class, its
addresses, its listeners), `Programmed` (a gateway proxy pod labelled with its name exists: the one automated
deployment creates, `kube/gateway_deploy.py`, or one deployed by hand; with `spec.addresses`: the Service they
name, `addresses.py`), the listeners' conditions and attached routes, its addresses (the pods' IPs, or those it
asked for); a listener or Gateway that is not valid is also an error naming it."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from meshd.api.gateway_api import KubernetesGateway
from meshd.api.meta import GATEWAY_API_GROUP, InvalidResource
from meshd.model.gateway_api.addresses import AddressVerdict
from meshd.model.gateway_api.conditions import Condition, cond, rendered
from meshd.model.gateway_api.listeners import GATEWAY_NAME_LABEL, ListenerView

if TYPE_CHECKING:
    from meshd.model.gateway_api.convert import GatewayApiResult


def gateway_status(
    gateway: KubernetesGateway,
    views: list[ListenerView],
    verdicts: Mapping[str, tuple[bool, str, str]],
    *,
    gateway_pods: Mapping[tuple[str, str], tuple[str, ...]] | None,
    address: AddressVerdict | None,
    result: GatewayApiResult,
) -> None:
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
    if not accepted:
        conditions.append(cond("Programmed", False, "Invalid", "the Gateway is not accepted"))
    elif address is not None:  # manual deployment: the pods of the Service its addresses name
        conditions.append(cond("Programmed", address.programmed, address.reason, address.message))
    elif pods is not None and not pods:
        conditions.append(
            cond(
                "Programmed",
                False,
                "NoResources",
                f"no gateway proxy pod in {ns} is labelled "
                f"{GATEWAY_NAME_LABEL}={name} (yet: the Deployment meshd creates for it, or one deployed by hand)",
            )
        )
    else:
        conditions.append(
            cond(
                "Programmed", True, "Programmed", f"served by the gateway proxies labelled {GATEWAY_NAME_LABEL}={name}"
            )
        )
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
    if address is not None:
        if address.programmed:
            status["addresses"] = [{"type": a.type, "value": a.value} for a in gateway.spec.addresses]
    elif pods:
        status["addresses"] = [{"type": "IPAddress", "value": ip} for ip in pods]
    result.status[gateway.key] = status
