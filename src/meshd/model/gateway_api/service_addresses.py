"""A Gateway's addresses as Istio reports them: those of the Service serving it (pure; the status writer's part
of `gateway_status.py`).

The Service: for an automatically deployed Gateway the one deployed for it (`<gateway>-<class>`,
`kube/gateway_deploy.py`), for a Gateway with `spec.addresses` the one they name (`addresses.py`).
- Its external addresses (a LoadBalancer's `status.loadBalancer.ingress` IPs and hostnames, its
  `spec.externalIPs`): `status.addresses`, each `IPAddress` or `Hostname` by its form; `Programmed: True`.
- A LoadBalancer with none yet: `Programmed: False, AddressNotAssigned` ("address pending for hostname"), no
  address reported.
- Otherwise (ClusterIP, NodePort): its name, `NAME.NS.svc.<domain>`, as a `Hostname`; `Programmed: True`.
- No gateway proxy pod yet (automated deployment): `Programmed: False, AddressNotAssigned` ("no instances
  found"); the Service missing: `Programmed: False, AddressNotUsable` ("not found"), unless gateway proxy pods
  labelled with the Gateway's name serve it anyway (deployed by hand, `--no-gateway-deploy`): their IPs then.
Istio never takes an address away once reported: `status.py` keeps the previous ones when none is reported.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass

from meshd.api.gateway_api import KubernetesGateway
from meshd.api.kube import Service
from meshd.model.gateway_api.conditions import Condition, cond

Address = dict[str, str]  # {"type": ..., "value": ...}


@dataclass(frozen=True)
class ServiceFacts:
    """What a Service says of where it is reached."""

    type: str
    external: tuple[str, ...]  # load balancer ingress IPs / hostnames, then spec.externalIPs


def service_facts(service: Service) -> ServiceFacts:
    external: list[str] = []
    if service.spec.type == "LoadBalancer":
        for ingress in service.status.load_balancer.ingress:
            value = ingress.ip or ingress.hostname
            if value and value not in external:
                external.append(value)
    external += [ip for ip in service.spec.external_ips if ip not in external]
    return ServiceFacts(service.spec.type, tuple(external))


def deployed_name(gateway: KubernetesGateway) -> str:
    """The name of what automated deployment creates for a Gateway (Istio's rule)."""
    return f"{gateway.metadata.name}-{gateway.spec.gateway_class_name}"


def hostname_of(namespace: str, name: str, *, domain_suffix: str) -> str:
    return f"{name}.{namespace}.svc.{domain_suffix}"


def _typed(value: str) -> Address:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return {"type": "Hostname", "value": value}
    return {"type": "IPAddress", "value": value}


def _joined(items: Sequence[str]) -> str:
    if len(items) <= 2:
        return " and ".join(items)
    return ", ".join(items[:-1]) + ", and " + items[-1]


def served_by_service(
    host: str, facts: ServiceFacts, *, ports: Sequence[int], fallback: Sequence[Address]
) -> tuple[Condition, list[Address]]:
    """Programmed and the addresses of a Gateway served by the Service `host` (`fallback`: the addresses of a
    ClusterIP / NodePort Service, by default its name)."""
    assigned = _joined([f"{host}:{port}" for port in sorted(set(ports))] or [host])
    if facts.external:
        return cond("Programmed", True, "Programmed", f"Resource programmed, assigned to service(s) {assigned}"), [
            _typed(v) for v in facts.external
        ]
    if facts.type == "LoadBalancer":
        message = (
            f"Assigned to service(s) {assigned}, but failed to assign to all requested addresses: "
            f'address pending for hostname "{host}"'
        )
        return cond("Programmed", False, "AddressNotAssigned", message), []
    addresses = list(fallback) or [{"type": "Hostname", "value": host}]
    return cond("Programmed", True, "Programmed", f"Resource programmed, assigned to service(s) {assigned}"), addresses


def service_missing(host: str) -> Condition:
    message = f'Failed to assign to any requested addresses: hostname "{host}" not found'
    return cond("Programmed", False, "AddressNotUsable", message)


def no_instances(host: str) -> Condition:
    return cond(
        "Programmed",
        False,
        "AddressNotAssigned",
        f'Failed to assign to any requested addresses: no instances found for hostname "{host}"',
    )
