"""Which AuthorizationPolicies apply to a workload, as Istio decides it.

- a policy in the root namespace applies to every workload of the mesh its selector matches (no selector,
  or an empty one: all of them);
- a policy in the workload's namespace applies when its selector matches (none or empty: all of them);
- a policy with `targetRef`/`targetRefs` never applies by selector. A target `Gateway`
  (gateway.networking.k8s.io) attaches it, as written, to the gateway workloads of the policy's namespace
  labelled `gateway.networking.k8s.io/gateway-name: <name>`, a `GatewayClass` (from the root namespace
  only) to those labelled `gateway.networking.k8s.io/gateway-class-name: <name>`, as Istio matches them.
  Istio attaches Service and ServiceEntry targets to waypoints, which this release does not serve; so
  that such a policy never lets through what it meant to stop, it fails closed on the Service's or
  ServiceEntry's endpoints (`unattached`). A target in another namespace selects nothing (as Istio).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Protocol

from meshd.api.authorization import AuthorizationPolicy
from meshd.model.world import World

GATEWAY_NAME_LABEL = "gateway.networking.k8s.io/gateway-name"
GATEWAY_CLASS_LABEL = "gateway.networking.k8s.io/gateway-class-name"


@dataclass(frozen=True, eq=False)
class Selected:
    """The policies of one workload: applied as written, and unattached (failing closed)."""

    policies: tuple[AuthorizationPolicy, ...] = ()
    unattached: tuple[AuthorizationPolicy, ...] = ()

    @property
    def identity(self) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """Equal for the same policy objects (a translation is shared by the workloads that have it)."""
        return tuple(map(id, self.policies)), tuple(map(id, self.unattached))

    def __bool__(self) -> bool:
        return bool(self.policies or self.unattached)


NOTHING = Selected()


GATEWAY_KINDS = frozenset({"Gateway", "GatewayClass"})


class Target(Protocol):
    """A targetRef of an AuthorizationPolicy or RequestAuthentication."""

    kind: str
    name: str
    namespace: str


def targets_workload(
    target: Target, *, policy_namespace: str, namespace: str, labels: Mapping[str, str], root_namespace: str
) -> bool:
    """Whether a Gateway or GatewayClass target stands for the gateway workload with these labels in this
    namespace (Istio: the workload's gateway-name / gateway-class-name label)."""
    if target.namespace and target.namespace != policy_namespace:
        return False
    if target.kind == "Gateway":
        return namespace == policy_namespace and labels.get(GATEWAY_NAME_LABEL) == target.name
    if target.kind == "GatewayClass":
        return policy_namespace == root_namespace and labels.get(GATEWAY_CLASS_LABEL) == target.name
    return False


def _selects(policy: AuthorizationPolicy, namespace: str, labels: Mapping[str, str], root: str) -> bool:
    targets = policy.spec.targets
    if targets:
        at = policy.metadata.namespace
        return any(
            targets_workload(t, policy_namespace=at, namespace=namespace, labels=labels, root_namespace=root)
            for t in targets
        )
    selector = policy.spec.selector
    return selector is None or all(labels.get(k) == v for k, v in selector.match_labels.items())


def applied(
    world: World, *, namespace: str, labels: Mapping[str, str], root_namespace: str
) -> tuple[AuthorizationPolicy, ...]:
    """The policies applying by scope and selector (or a Gateway/GatewayClass target) to a workload with
    these labels in this namespace."""
    root = root_namespace
    found = [p for p in world.authorization_policies.get(root, ()) if _selects(p, namespace, labels, root)]
    if namespace != root:
        found += [p for p in world.authorization_policies.get(namespace, ()) if _selects(p, namespace, labels, root)]
    return tuple(found)


def target_problem(target: Target, *, policy_namespace: str, root_namespace: str) -> str | None:
    """Why a target cannot be attached, and what fails closed instead (None: it attaches)."""
    if target.namespace and target.namespace != policy_namespace:
        return "targets in another namespace are not supported (as Istio): the policy selects nothing"
    if target.kind == "GatewayClass" and policy_namespace != root_namespace:
        return "a GatewayClass can be targeted only from the root namespace (as Istio): the policy selects nothing"
    if target.kind in GATEWAY_KINDS:
        return None
    return (
        f"meshd does not attach authorization policies to waypoints yet: the policy fails closed on the "
        f"endpoints of {target.kind} {target.name}, where a DENY or CUSTOM policy denies every request and an "
        "ALLOW policy allows nothing"
    )


def _target_addresses(world: World, policy: AuthorizationPolicy, target: Target, root: str) -> Iterator[str]:
    namespace = policy.metadata.namespace
    if (target.namespace and target.namespace != namespace) or target.kind in GATEWAY_KINDS:
        return  # (gateways: attached by their labels, `applied`)
    # Service, ServiceEntry: the endpoints of the services of that name in the namespace
    for service in world.by_namespace.get(namespace, ()):
        if service.name == target.name:
            for port in service.ports:
                for endpoint in world.endpoints.get((service.hostname, port.number), ()):
                    yield endpoint.address


def unattached_index(world: World, *, root_namespace: str) -> dict[str, tuple[AuthorizationPolicy, ...]]:
    """Address -> the targetRef policies failing closed on the workload there."""
    index: dict[str, dict[int, AuthorizationPolicy]] = {}
    for policies in world.authorization_policies.values():
        for policy in policies:
            for target in policy.spec.targets:
                for address in _target_addresses(world, policy, target, root_namespace):
                    index.setdefault(address, {})[id(policy)] = policy
    return {address: tuple(found.values()) for address, found in index.items()}
