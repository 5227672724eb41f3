"""The errors of a World's AuthorizationPolicies, each once, whatever proxies are connected (what
`/debug/config_errors`, the log, the metric and the policy's status show). Every one of them goes with
a translation that fails closed (`inbound.py` says how); none is a policy silently skipped.

- a spec that failed validation (kept as a refused policy);
- a CUSTOM policy whose provider is missing, not an ext_authz provider or names an unknown service; one of
  an HTTP provider (its TCP connections are denied, a warning); dry-run on CUSTOM (enforced, a warning);
- two CUSTOM providers on one workload (Istio allows one: the workload denies every request);
- targets this release cannot attach (Service, ServiceEntry: failing closed on their endpoints), and
  targets in another namespace (selecting nothing, as Istio).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

from meshd.api.authorization import AuthorizationPolicy
from meshd.api.meshconfig import ExtAuthzHttp, MeshPolicy
from meshd.api.meta import InvalidResource
from meshd.model.services import MeshService
from meshd.model.world import World
from meshd.translate.authz.ext_authz import provider_problem
from meshd.translate.authz.selection import applied, target_problem


def policy_errors(
    policy: AuthorizationPolicy, *, mesh: MeshPolicy, services: Mapping[str, MeshService], root_namespace: str
) -> Iterator[InvalidResource]:
    """The errors of one policy on its own."""
    if policy.refusal is not None:
        yield policy.refusal
        return
    key = policy.key
    spec = policy.spec
    if policy.action == "CUSTOM" and spec.provider is not None:
        name = spec.provider.name
        provider = mesh.provider(name)
        problem = provider_problem(name, provider, services)
        if problem:
            yield InvalidResource(key, "spec.provider.name", f"{problem}: the workloads it selects deny every request")
        elif provider is not None and isinstance(provider.ext_authz, ExtAuthzHttp):
            yield InvalidResource(
                key,
                "spec.provider.name",
                f"{name!r} is an HTTP ext_authz provider, which cannot check TCP connections: on TCP ports of the "
                "workloads it selects, the connections its rules match are denied",
                severity="warning",
            )
        if policy.dry_run:
            yield InvalidResource(
                key,
                "metadata.annotations",
                "istio.io/dry-run is supported for ALLOW and DENY policies only: this CUSTOM policy is enforced",
                severity="warning",
            )
    field = "spec.targetRef" if spec.target_ref is not None else "spec.targetRefs"
    for i, target in enumerate(spec.targets):
        where = field if spec.target_ref is not None else f"{field}[{i}]"
        problem = target_problem(target, policy_namespace=policy.metadata.namespace, root_namespace=root_namespace)
        if problem is not None:
            yield InvalidResource(key, where, problem)


def provider_conflicts(world: World, *, root_namespace: str) -> Iterator[InvalidResource]:
    """Workloads selected by CUSTOM policies of more than one provider (looked for only when the World
    has CUSTOM policies of more than one provider)."""
    custom = [
        p
        for policies in world.authorization_policies.values()
        for p in policies
        if p.refusal is None and p.action == "CUSTOM" and p.spec.provider is not None
    ]
    if len({p.spec.provider.name for p in custom if p.spec.provider is not None}) < 2:
        return
    reported: set[tuple[object, ...]] = set()
    for workload in sorted(world.workloads.values(), key=lambda w: (w.namespace, w.name)):
        found = [
            p
            for p in applied(
                world, namespace=workload.namespace, labels=dict(workload.labels), root_namespace=root_namespace
            )
            if p in custom
        ]
        names = sorted({p.spec.provider.name for p in found if p.spec.provider is not None})
        if len(names) < 2:
            continue
        for policy in found:
            if (policy.key, tuple(names)) in reported:
                continue
            reported.add((policy.key, tuple(names)))
            yield InvalidResource(
                policy.key,
                "spec.provider.name",
                f"workload {workload.namespace}/{workload.name} is selected by CUSTOM policies of providers "
                f"{', '.join(names)}; Istio allows one provider per workload: it denies every request",
            )


def authorization_errors(world: World, *, mesh: MeshPolicy, root_namespace: str) -> list[InvalidResource]:
    errors: list[InvalidResource] = []
    for policies in world.authorization_policies.values():
        for policy in policies:
            errors += policy_errors(policy, mesh=mesh, services=world.services, root_namespace=root_namespace)
    errors += provider_conflicts(world, root_namespace=root_namespace)
    return errors
