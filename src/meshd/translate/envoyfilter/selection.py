"""Which EnvoyFilters apply to a proxy, in the order Istio applies them.

- one in the root namespace without a selector applies to every proxy of the mesh; with a
  `workloadSelector`, to the proxies of any namespace whose workload labels it matches;
- one in the proxy's namespace applies when its selector matches (none: every proxy of the namespace);
- `targetRefs` attach to the pods of a Gateway API Gateway (label `gateway.networking.k8s.io/gateway-name`,
  same namespace) or GatewayClass (`...gateway-class-name`, from the root namespace only).
Order: the root namespace's first, then the namespace's; within each, those without a selector before the
workload-specific ones; then `priority`, creation time and name (the World keeps each namespace sorted so).
"""

from __future__ import annotations

from collections.abc import Mapping

from meshd.api.envoyfilter import EnvoyFilter
from meshd.model.world import World
from meshd.translate.authz.selection import targets_workload


def _selects(found: EnvoyFilter, *, namespace: str, labels: Mapping[str, str], root: str) -> bool:
    spec = found.spec
    if spec.target_refs:
        own = found.metadata.namespace
        return any(
            targets_workload(ref, policy_namespace=own, namespace=namespace, labels=labels, root_namespace=root)
            for ref in spec.target_refs
        )
    selector = spec.workload_selector
    if selector is None:
        return found.metadata.namespace in (namespace, root)
    return all(labels.get(k) == v for k, v in selector.labels.items())


def selected(
    world: World, *, namespace: str, labels: Mapping[str, str], root_namespace: str
) -> tuple[EnvoyFilter, ...]:
    """The EnvoyFilters applying to a proxy of this namespace with these workload labels, in order."""
    out: list[EnvoyFilter] = []
    spaces = (root_namespace,) if namespace == root_namespace else (root_namespace, namespace)
    for space in spaces:
        found = [
            f
            for f in world.envoy_filters.get(space, ())
            if _selects(f, namespace=namespace, labels=labels, root=root_namespace)
        ]
        out += [f for f in found if not _specific(f)] + [f for f in found if _specific(f)]
    return tuple(out)


def _specific(found: EnvoyFilter) -> bool:
    return found.spec.workload_selector is not None or bool(found.spec.target_refs)
