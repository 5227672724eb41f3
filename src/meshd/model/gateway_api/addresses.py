"""A Gateway API Gateway with `spec.addresses`: Istio's manual deployment. Each address names an existing
Kubernetes Service, by its FQDN (`type: Hostname`, e.g. `istio-ingressgateway.istio-system.svc.cluster.local`)
or its cluster IP (`type: IPAddress`); the Gateway's listeners are then served by that Service's existing gateway
pods (the pods its selector picks, in its namespace), not by pods labelled with the Gateway's name, and meshd
deploys nothing for it (`kube/gateway_deploy.py`).

- An address of another type: the Gateway is `Accepted: False, UnsupportedAddress`.
- An address naming no Service (or a Service without a selector), or addresses naming different Services: the
  Gateway is `Programmed: False, AddressNotUsable` and its listeners are served nowhere.
- Linked: each listener's Istio Gateway selects the Service's pods (`selector`, and `WORKLOADS_ANNOTATION` for
  the namespace `translate/gateway/select.py` takes them from); `Programmed` and `status.addresses` those of
  that Service, as Istio reports them (`service_addresses.py`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from meshd.api.gateway import Gateway
from meshd.api.gateway_api import KubernetesGateway
from meshd.model.services import MeshService

ADDRESS_TYPES = ("IPAddress", "Hostname")
# On an Istio Gateway derived from a Gateway API listener: the namespace of the pods it selects, when not the
# Gateway's own (a Gateway linked to a Service by its addresses)
WORKLOADS_ANNOTATION = "internal.meshd.io/gateway-api-workloads"
Target = tuple[str, str, tuple[tuple[str, str], ...]]  # the Service's namespace, name, selector
AddressTargets = Mapping[str, Target]  # address value -> the Service it names


@dataclass(frozen=True)
class AddressVerdict:
    accepted: bool
    programmed: bool
    reason: str
    message: str
    target: Target | None = None


def address_targets(
    gateways: Iterable[KubernetesGateway], *, services: Mapping[tuple[str, str], MeshService], domain_suffix: str
) -> dict[str, Target]:
    """The Service each address of these Gateways names (only the addresses that name one)."""
    by_host = {f"{ns}/{name}": (ns, name) for ns, name in services}
    by_ip: dict[str, tuple[str, str]] | None = None
    out: dict[str, Target] = {}
    for gateway in gateways:
        for address in gateway.spec.addresses:
            found: tuple[str, str] | None = None
            if address.type == "Hostname":
                parts = address.value.rstrip(".").split(".")
                if len(parts) >= 3 and parts[2] == "svc" and ".".join(parts[3:]) in ("", domain_suffix):
                    found = by_host.get(f"{parts[1]}/{parts[0]}")
            elif address.type == "IPAddress":
                if by_ip is None:  # (looked at only when a Gateway names an address: the cost stays with them)
                    by_ip = {a: key for key, s in sorted(services.items()) for a in s.addresses}
                found = by_ip.get(address.value)
            if found is not None:
                out[address.value] = (*found, services[found].selector)
    return out


def address_verdict(gateway: KubernetesGateway, targets: AddressTargets) -> AddressVerdict | None:
    """None when the Gateway names no address."""
    addresses = gateway.spec.addresses
    if not addresses:
        return None
    other = [a.type for a in addresses if a.type not in ADDRESS_TYPES]
    if other:
        return AddressVerdict(
            False, False, "UnsupportedAddress", f"address type {other[0]} is not supported (IPAddress, Hostname)"
        )
    found = {a.value: targets.get(a.value) for a in addresses}
    missing = [value for value, target in found.items() if target is None or not target[2]]
    if missing:
        message = f"address {missing[0]} names no Service with a selector (the gateway pods serving this Gateway)"
        return AddressVerdict(True, False, "AddressNotUsable", message)
    services = {t for t in found.values() if t is not None}
    if len(services) > 1:
        return AddressVerdict(True, False, "AddressNotUsable", "the addresses name different Services")
    (target,) = services
    message = f"served by the pods of Service {target[0]}/{target[1]} (selector {dict(target[2])})"
    return AddressVerdict(True, True, "Programmed", message, target)


def linked_gateway(istio: Gateway, target: Target) -> Gateway:
    """The Istio Gateway of a listener, selecting the pods of the Service the Gateway's addresses name."""
    doc = istio.model_dump(by_alias=True, exclude_defaults=True)
    doc["metadata"].setdefault("annotations", {})[WORKLOADS_ANNOTATION] = target[0]
    doc["spec"]["selector"] = dict(target[2])
    return Gateway.model_validate(doc)
