"""What status an Istio object should carry, from the errors meshd holds against it (pure).

Istio's shape (`istio.meta.v1alpha1.IstioStatus`): `validationMessages` as `istioctl analyze`
messages (`type: {code, name}`, `level`, plus the text meshd logs as `description`), `conditions`
and `observedGeneration`. meshd owns three things in it: the validation messages, the
`Reconciled` condition (True: accepted and served; False: rejected) and `observedGeneration`;
every other condition another controller wrote is kept as it is.
"""

from __future__ import annotations

import datetime
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from meshd.api.meta import InvalidResource, ResourceKey

# kind -> (API group, plural) for every Istio kind meshd may write status on
ISTIO_KINDS: dict[str, tuple[str, str]] = {
    "VirtualService": ("networking.istio.io", "virtualservices"),
    "DestinationRule": ("networking.istio.io", "destinationrules"),
    "ServiceEntry": ("networking.istio.io", "serviceentries"),
    "WorkloadEntry": ("networking.istio.io", "workloadentries"),
    "Sidecar": ("networking.istio.io", "sidecars"),
    "Gateway": ("networking.istio.io", "gateways"),
    "PeerAuthentication": ("security.istio.io", "peerauthentications"),
    "AuthorizationPolicy": ("security.istio.io", "authorizationpolicies"),
    "RequestAuthentication": ("security.istio.io", "requestauthentications"),
    "Telemetry": ("telemetry.istio.io", "telemetries"),
    "EnvoyFilter": ("networking.istio.io", "envoyfilters"),
    "WasmPlugin": ("extensions.istio.io", "wasmplugins"),
    "ProxyConfig": ("networking.istio.io", "proxyconfigs"),
    "WorkloadGroup": ("networking.istio.io", "workloadgroups"),
}

# kinds whose versions are not their group's preferred one: written at this version when meshd holds no
# copy of the object (a refused kind is never in the store)
KIND_VERSIONS = {"EnvoyFilter": "v1alpha3", "ProxyConfig": "v1beta1", "WasmPlugin": "v1alpha1"}

CONDITION = "Reconciled"

# Istio analysis message types (istio.io/latest/docs/reference/config/analysis/)
SCHEMA_VALIDATION_ERROR = ("IST0106", "SchemaValidationError")
REFERENCED_RESOURCE_NOT_FOUND = ("IST0101", "ReferencedResourceNotFound")
# a resource ignored because another one already covers the same thing, by kind
CONFLICTS = {
    "VirtualService": ("IST0109", "ConflictingMeshGatewayVirtualServiceHosts"),
    "Sidecar": ("IST0111", "MultipleSidecarsWithoutWorkloadSelectors"),
}

_REFERENCE = re.compile(
    r"does not exist|is not a port of|not defined|no DestinationRule|not exported|missing|no Secret"
)
_CONFLICT = re.compile(r"\balready\b|also defined in|\bignored$")
# a value that is wrong in itself, whatever words its explanation uses (RE2 says "missing )")
_SCHEMA = re.compile(r"^invalid RE2 regex|regex program")


@dataclass(frozen=True, order=True)
class Message:
    code: str
    name: str
    description: str
    level: str = "ERROR"  # or WARNING: the resource is served, not to every proxy

    def render(self) -> dict[str, Any]:
        return {
            "type": {"code": self.code, "name": self.name},
            "level": self.level,
            "description": self.description,
            "documentationUrl": f"https://istio.io/latest/docs/reference/config/analysis/{self.code.lower()}/",
        }


def message_for(error: InvalidResource) -> Message:
    """The analysis message for one error; the description is the field and message meshd logs."""
    code, name = SCHEMA_VALIDATION_ERROR
    kind = error.key.kind if error.key else ""
    if _CONFLICT.search(error.message) and kind in CONFLICTS:
        code, name = CONFLICTS[kind]
    elif _REFERENCE.search(error.message) and not _SCHEMA.search(error.message):
        code, name = REFERENCED_RESOURCE_NOT_FOUND
    level = "WARNING" if error.severity == "warning" else "ERROR"
    return Message(code, name, f"{error.field}: {error.message}", level)


def desired_messages(
    *, objects: Iterable[ResourceKey], errors: Iterable[InvalidResource]
) -> dict[ResourceKey, tuple[Message, ...]]:
    """Every Istio object meshd holds or rejected -> its messages (empty: accepted)."""
    out: dict[ResourceKey, set[Message]] = {key: set() for key in objects if key.kind in ISTIO_KINDS}
    for error in errors:
        if error.key is not None and error.key.kind in ISTIO_KINDS:
            out.setdefault(error.key, set()).add(message_for(error))
    return {key: tuple(sorted(messages)) for key, messages in out.items()}


def _rfc3339(when: datetime.datetime) -> str:
    return when.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def render_status(
    messages: tuple[Message, ...],
    *,
    generation: int,
    previous: Mapping[str, Any] | None,
    now: datetime.datetime,
) -> dict[str, Any]:
    """The status to write: `previous` with meshd's parts replaced. The condition's
    lastTransitionTime is kept when its status does not change, so an unchanged verdict renders
    to exactly the status already there (and nothing is written)."""
    previous = dict(previous or {})
    accepted = not messages
    state = "True" if accepted else "False"
    others: list[Any] = []
    transition = _rfc3339(now)
    for condition in previous.get("conditions") or []:
        if isinstance(condition, dict) and condition.get("type") == CONDITION:
            if condition.get("status") == state and condition.get("lastTransitionTime"):
                transition = condition["lastTransitionTime"]
        else:
            others.append(condition)
    if accepted:
        reason, text = "Accepted", "accepted by meshd and served to proxies"
    else:
        reason = "Rejected"
        text = messages[0].description + (f" (and {len(messages) - 1} more)" if len(messages) > 1 else "")
    ours = {
        "type": CONDITION,
        "status": state,
        "reason": reason,
        "message": text,
        "observedGeneration": generation,
        "lastTransitionTime": transition,
    }
    status: dict[str, Any] = {k: v for k, v in previous.items() if k not in ("validationMessages", "conditions")}
    status["conditions"] = [*others, ours]
    if messages:
        status["validationMessages"] = [m.render() for m in messages]
    status["observedGeneration"] = generation
    return status
