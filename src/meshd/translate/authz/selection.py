"""Which AuthorizationPolicies apply to a workload, as Istio decides it.

- a policy in the root namespace applies to every workload of the mesh its selector matches (no selector,
  or an empty one: all of them);
- a policy in the workload's namespace applies when its selector matches (none or empty: all of them);
- a policy with `targetRef`/`targetRefs` never applies by selector. Istio attaches those to gateways and
  waypoints, which this release does not serve; so that such a policy never lets through what it meant
  to stop, it fails closed on the workloads its targets stand for (`unattached`): a Gateway's pods
  (label `gateway.networking.k8s.io/gateway-name`), a GatewayClass's (`...gateway-class-name`, root
  namespace only, as Istio), a Service's or ServiceEntry's endpoints.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass

from meshd.api.authorization import AuthorizationPolicy, TargetRef
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


def _selects(policy: AuthorizationPolicy, labels: Mapping[str, str]) -> bool:
    if policy.spec.targets:
        return False
    selector = policy.spec.selector
    return selector is None or all(labels.get(k) == v for k, v in selector.match_labels.items())


def applied(
    world: World, *, namespace: str, labels: Mapping[str, str], root_namespace: str
) -> tuple[AuthorizationPolicy, ...]:
    """The policies applying by scope and selector to a workload with these labels in this namespace."""
    found = [p for p in world.authorization_policies.get(root_namespace, ()) if _selects(p, labels)]
    if namespace != root_namespace:
        found += [p for p in world.authorization_policies.get(namespace, ()) if _selects(p, labels)]
    return tuple(found)


def target_problem(policy: AuthorizationPolicy, target: TargetRef, *, root_namespace: str) -> str:
    """Why a target cannot be attached, and what fails closed instead."""
    if target.namespace and target.namespace != policy.metadata.namespace:
        return "targets in another namespace are not supported (as Istio): the policy selects nothing"
    if target.kind == "GatewayClass" and policy.metadata.namespace != root_namespace:
        return "a GatewayClass can be targeted only from the root namespace (as Istio): the policy selects nothing"
    what = {
        "Gateway": f"gateway {target.name} (its pods: label {GATEWAY_NAME_LABEL}={target.name})",
        "GatewayClass": f"gateway class {target.name} (pods labelled {GATEWAY_CLASS_LABEL}={target.name})",
    }.get(target.kind, f"{target.kind} {target.name} (its endpoints)")
    attach = "gateways" if target.kind.startswith("Gateway") else "waypoints"
    return (
        f"meshd does not attach authorization policies to {attach} yet: the policy fails closed on the workloads "
        f"of {what}, where a DENY or CUSTOM policy denies every request and an ALLOW policy allows nothing"
    )


def _target_addresses(world: World, policy: AuthorizationPolicy, target: TargetRef, root: str) -> Iterator[str]:
    namespace = policy.metadata.namespace
    if target.namespace and target.namespace != namespace:
        return
    if target.kind == "Gateway":
        for address, workload in world.workloads.items():
            if workload.namespace == namespace and dict(workload.labels).get(GATEWAY_NAME_LABEL) == target.name:
                yield address
    elif target.kind == "GatewayClass":
        if namespace != root:
            return
        for address, workload in world.workloads.items():
            if dict(workload.labels).get(GATEWAY_CLASS_LABEL) == target.name:
                yield address
    else:  # Service, ServiceEntry: the endpoints of the services of that name in the namespace
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
