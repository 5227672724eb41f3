"""Which outbound clusters use Istio mTLS, and with what (Istio's `buildAutoMtlsSettings`):

- a DestinationRule `tls.mode: ISTIO_MUTUAL` (effective for the port and subset): mTLS to every
  endpoint; SANs are the rule's `subjectAltNames`, else the identities of the service's workloads;
  SNI the rule's `sni`, else `outbound_.<port>_.<subset>_.<host>`;
- any other `tls` in the rule: the rule decides (plaintext, SIMPLE, MUTUAL), no auto mTLS;
- no `tls`: auto mTLS (unless turned off), except toward services outside the mesh (ServiceEntry
  MESH_EXTERNAL), DNS and passthrough clusters, and services whose namespace's PeerAuthentication
  mode is DISABLE: mTLS to endpoints with a sidecar, plaintext to the rest.
Only proxies with the node agent's SDS get any of it (`ScopeKey.sds`); the others stay plaintext.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from envoy.config.cluster.v3 import cluster_pb2

from meshd.api.destinationrule import ClientTLSSettings
from meshd.model.services import Endpoint, MeshService, ServicePort
from meshd.translate.mtls import apply_istio_mutual, sni, spiffe_id
from meshd.translate.peer_auth import DISABLE
from meshd.translate.policy import EffectivePolicy
from meshd.translate.scope import Scope


@dataclass(frozen=True)
class ClusterMtls:
    """The mTLS of one outbound cluster (hashable: part of the cluster's spec key)."""

    auto: bool  # per endpoint (tlsMode metadata) rather than every endpoint
    sni: str
    sans: tuple[str, ...]
    protocol: str  # the port's protocol: HTTP/2 ALPN, and what its HTTP requests announce (`translate/alpn.py`)

    def apply(self, cluster: cluster_pb2.Cluster) -> None:
        apply_istio_mutual(cluster, sni_name=self.sni, sans=self.sans, protocol=self.protocol, auto=self.auto)


def service_identities(scope: Scope, service: MeshService, ports: Sequence[ServicePort]) -> tuple[str, ...]:
    """SPIFFE identities of the workloads behind a service (every port), sorted, then the names a
    ServiceEntry's `subjectAltNames` adds (as Istio verifies both)."""
    accounts: set[str] = set()
    for port in ports:
        endpoints: Sequence[Endpoint] = scope.world.endpoints.get((service.hostname, port.number), ())
        accounts.update(ep.service_account for ep in endpoints if ep.service_account)
    found = tuple(
        spiffe_id(trust_domain=scope.trust_domain, namespace=service.namespace, service_account=account)
        for account in sorted(accounts)
    )
    return (*found, *(name for name in service.subject_alt_names if name not in found))


def cluster_mtls(
    scope: Scope,
    service: MeshService,
    port: ServicePort,
    subset: str,
    policy: EffectivePolicy,
    *,
    identities: tuple[str, ...],
) -> ClusterMtls | None:
    if not scope.key.sds:
        return None
    protocol = port.protocol
    tls: ClientTLSSettings | None = policy.tls
    name = sni(port=port.number, subset=subset, host=service.hostname)
    if tls is not None:
        if tls.mode != "ISTIO_MUTUAL":
            return None
        return ClusterMtls(
            auto=False, sni=tls.sni or name, sans=tuple(tls.subject_alt_names) or identities, protocol=protocol
        )
    if (
        not scope.auto_mtls
        or service.mesh_external
        or service.resolution != "EDS"
        or policy.passthrough
        or scope.destination_mode(service) == DISABLE
    ):
        return None
    return ClusterMtls(auto=True, sni=name, sans=identities, protocol=protocol)
