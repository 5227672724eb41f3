"""PeerAuthentication: the mTLS mode a workload's inbound side enforces, as Istio resolves it.

Precedence (each level's UNSET inherits the level above):
- mesh: the oldest policy without a selector in the root namespace (none: PERMISSIVE);
- namespace: the oldest policy without a selector in the workload's namespace;
- workload: the oldest policy in the workload's namespace whose selector matches its labels;
- port: that workload policy's `portLevelMtls` entry for the workload (target) port.
A second namespace-wide policy in one namespace is ignored and reported (Istio's analyzer flags it).

Each mode carries its provenance: the PeerAuthentication (`namespace/name`) whose mode took effect (the most
specific one that does not say UNSET), or "mesh default" when none does; `mtls_metadata` writes it on the
inbound listeners (filter metadata `meshd`), where `meshd explain` reads which resource set the mode.

`service_mode` is what a client infers for a destination service (Istio's best effort for auto mTLS):
the namespace-level mode of the service's namespace, workload policies not considered.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass

from envoy.config.core.v3 import base_pb2

from meshd.api.meta import InvalidResource
from meshd.api.security import PeerAuthentication

STRICT, PERMISSIVE, DISABLE, UNSET = "STRICT", "PERMISSIVE", "DISABLE", "UNSET"
MESH_DEFAULT = PERMISSIVE
MESH_DEFAULT_SOURCE = "mesh default"
METADATA_KEY = "meshd"  # the inbound listener's filter metadata: {"peer_authentication": ..., "ports": {...}}
Policies = Mapping[str, tuple[PeerAuthentication, ...]]


@dataclass(frozen=True, order=True)
class InboundMtls:
    """A workload's effective mode, and the ports (target ports) whose mode differs."""

    mode: str = MESH_DEFAULT
    ports: tuple[tuple[int, str], ...] = ()
    source: str = MESH_DEFAULT_SOURCE  # the PeerAuthentication (namespace/name) that set `mode`
    port_source: str = ""  # the workload policy whose portLevelMtls set the modes of `ports`

    def for_port(self, port: int) -> str:
        return next((mode for p, mode in self.ports if p == port), self.mode)

    def source_for_port(self, port: int) -> str:
        return self.port_source if any(p == port for p, _ in self.ports) else self.source


def _name(policy: PeerAuthentication) -> str:
    return f"{policy.metadata.namespace}/{policy.metadata.name}"


def mtls_metadata(modes: InboundMtls) -> base_pb2.Metadata:
    """The inbound listener's record of which PeerAuthentication set its mode (and its ports' modes)."""
    metadata = base_pb2.Metadata()
    entry = metadata.filter_metadata[METADATA_KEY]
    entry.update({"peer_authentication": modes.source})
    if modes.ports:
        entry.update({"peer_authentication_ports": {str(port): modes.port_source for port, _ in modes.ports}})
    return metadata


def _inherit(mode: str, parent: str) -> str:
    return parent if mode == UNSET else mode


def _namespace_wide(policies: Policies, namespace: str) -> PeerAuthentication | None:
    return next((p for p in policies.get(namespace, ()) if not p.spec.has_selector), None)


def namespace_mode(policies: Policies, *, namespace: str, root_namespace: str) -> str:
    """The mode of a namespace: its namespace-wide policy, else the mesh-wide one, else PERMISSIVE."""
    return _namespace_mode(policies, namespace=namespace, root_namespace=root_namespace)[0]


def _namespace_mode(policies: Policies, *, namespace: str, root_namespace: str) -> tuple[str, str]:
    """(the namespace's mode, the policy that set it or "mesh default")."""
    mode, source = MESH_DEFAULT, MESH_DEFAULT_SOURCE
    wide = [_namespace_wide(policies, root_namespace)]
    if namespace != root_namespace:
        wide.append(_namespace_wide(policies, namespace))
    for policy in wide:
        if policy is not None and policy.spec.mode != UNSET:
            mode, source = policy.spec.mode, _name(policy)
    return mode, source


def workload_mtls(policies: Policies, *, namespace: str, labels: Mapping[str, str], root_namespace: str) -> InboundMtls:
    """The inbound mTLS of a workload with these labels in this namespace."""
    mode, source = _namespace_mode(policies, namespace=namespace, root_namespace=root_namespace)
    selected = next((p for p in policies.get(namespace, ()) if p.spec.has_selector and p.selects(dict(labels))), None)
    if selected is None:
        return InboundMtls(mode, source=source)
    if selected.spec.mode != UNSET:
        mode, source = selected.spec.mode, _name(selected)
    ports = tuple(
        sorted((port, _inherit(setting.mode, mode)) for port, setting in selected.spec.port_level_mtls.items())
    )
    differing = tuple((p, m) for p, m in ports if m != mode)
    return InboundMtls(mode, differing, source=source, port_source=_name(selected) if differing else "")


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
