"""Kubernetes mode as a source: the informers (one reflector per kind) feeding `KubeSource`, which
fills the store, and what `/debug/informers` shows of them. Built by app from the one API client."""

from __future__ import annotations

from typing import Any

from meshd.kube.informers import Informers
from meshd.kube.source import KubeSource


class KubeMode:
    def __init__(self, *, informers: Informers, source: KubeSource) -> None:
        self.informers = informers
        self.source = source

    def debug_status(self) -> dict[str, Any]:
        """`/debug/informers`: each informer's state and the mesh config read."""
        return {**self.informers.status(), "meshConfig": _mesh(self.source)}

    async def run(self) -> None:
        await self.informers.run()


def _mesh(source: KubeSource) -> dict[str, object]:
    mesh = source.mesh
    return {
        "rootNamespace": mesh.root_namespace,
        "trustDomain": mesh.trust_domain,
        "discoveryAddress": mesh.discovery_address,
        "discoverySelectors": len(mesh.discovery_selectors),
        "extensionProviders": [f"{p.name} ({p.kind})" for p in mesh.policy.extension_providers],
        "pathNormalization": mesh.policy.path_normalization,
        "trustDomainAliases": list(mesh.policy.trust_domain_aliases),
        "gatewayTopology": {"numTrustedProxies": mesh.gateway_trusted_proxies},
        "unused": list(mesh.unused),
        "error": str(source.mesh_error) if source.mesh_error else None,
    }
