"""PeerAuthentication: the mTLS mode a workload's inbound side enforces, as Istio resolves it.

Precedence (each level's UNSET inherits the level above):
- mesh: the oldest policy without a selector in the root namespace (none: PERMISSIVE);
- namespace: the oldest policy without a selector in the workload's namespace;
- workload: the oldest policy in the workload's namespace whose selector matches its labels;
- port: that workload policy's `portLevelMtls` entry for the workload (target) port.
A second namespace-wide policy in one namespace is ignored and reported (Istio's analyzer flags it).

`service_mode` is what a client infers for a destination service (Istio's best effort for auto mTLS):
the namespace-level mode of the service's namespace, workload policies not considered.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass

from meshd.api.meta import InvalidResource
from meshd.api.security import PeerAuthentication

STRICT, PERMISSIVE, DISABLE, UNSET = "STRICT", "PERMISSIVE", "DISABLE", "UNSET"
MESH_DEFAULT = PERMISSIVE
Policies = Mapping[str, tuple[PeerAuthentication, ...]]


@dataclass(frozen=True, order=True)
class InboundMtls:
    """A workload's effective mode, and the ports (target ports) whose mode differs."""

    mode: str = MESH_DEFAULT
    ports: tuple[tuple[int, str], ...] = ()

    def for_port(self, port: int) -> str:
        return next((mode for p, mode in self.ports if p == port), self.mode)


def _inherit(mode: str, parent: str) -> str:
    return parent if mode == UNSET else mode


def _namespace_wide(policies: Policies, namespace: str) -> PeerAuthentication | None:
    return next((p for p in policies.get(namespace, ()) if not p.spec.has_selector), None)


def namespace_mode(policies: Policies, *, namespace: str, root_namespace: str) -> str:
    """The mode of a namespace: its namespace-wide policy, else the mesh-wide one, else PERMISSIVE."""
    mesh = _namespace_wide(policies, root_namespace)
    mode = _inherit(mesh.spec.mode, MESH_DEFAULT) if mesh is not None else MESH_DEFAULT
    if namespace != root_namespace:
        local = _namespace_wide(policies, namespace)
        if local is not None:
            mode = _inherit(local.spec.mode, mode)
    return mode


def workload_mtls(policies: Policies, *, namespace: str, labels: Mapping[str, str], root_namespace: str) -> InboundMtls:
    """The inbound mTLS of a workload with these labels in this namespace."""
    mode = namespace_mode(policies, namespace=namespace, root_namespace=root_namespace)
    selected = next((p for p in policies.get(namespace, ()) if p.spec.has_selector and p.selects(dict(labels))), None)
    if selected is None:
        return InboundMtls(mode)
    mode = _inherit(selected.spec.mode, mode)
    ports = tuple(
        sorted((port, _inherit(setting.mode, mode)) for port, setting in selected.spec.port_level_mtls.items())
    )
    return InboundMtls(mode, tuple((p, m) for p, m in ports if m != mode))


def service_mode(policies: Policies, *, namespace: str, root_namespace: str) -> str:
    """What auto mTLS assumes about a service's workloads: its namespace's mode (Istio's best effort)."""
    return namespace_mode(policies, namespace=namespace, root_namespace=root_namespace)


def check_policies(policies: Policies) -> Iterator[InvalidResource]:
    """Namespace-wide policies that lose to an older one in the same namespace."""
    for found in policies.values():
        wide = [p for p in found if not p.spec.has_selector]
        for extra in wide[1:]:
            yield InvalidResource(
                extra.key,
                "spec.selector",
                f"{wide[0].key} is already the namespace-wide policy (the oldest wins); ignored",
            )
