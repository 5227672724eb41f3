"""The mesh-wide settings generation reads: one frozen value, part of every cache key (a generation
whose options differ from the previous one's carries nothing over), so mesh-wide settings can change
at run time and every proxy gets config built with the new ones."""

from __future__ import annotations

from dataclasses import dataclass, field

from meshd.api.meshconfig import MeshPolicy
from meshd.translate.capture import ALLOW_ANY


@dataclass(frozen=True)
class GenerateOptions:
    inbound_port: int = 15006
    # the port endpoints of workloads with a sidecar are reached on (None: their service ports)
    sidecar_endpoint_port: int | None = None
    root_namespace: str = "istio-system"
    trust_domain: str = "cluster.local"
    # the cluster the workloads run in (their sidecars' CLUSTER_ID): endpoint metadata of TCP ports
    cluster_id: str = "Kubernetes"
    auto_mtls: bool = True
    # meshConfig.outboundTrafficPolicy.mode: the default of capture-mode proxies (a Sidecar's mode wins)
    outbound_traffic_policy: str = ALLOW_ANY
    # meshConfig: extensionProviders (CUSTOM authorization), pathNormalization, trustDomainAliases
    mesh: MeshPolicy = field(default_factory=MeshPolicy)
    # Gateways select only gateway workloads of their own namespace (Istio's PILOT_SCOPE_GATEWAY_TO_NAMESPACE)
    scope_gateway_to_namespace: bool = False
    # Gateway listeners bind the gateway proxy's own address instead of 0.0.0.0 (standalone: every
    # workload has an address of its own on one host, as sidecars bind theirs)
    gateway_bind_proxy_ip: bool = False
    # meshConfig.protocolDetectionTimeout in seconds: how long a sniffed port waits for the client's first
    # bytes before carrying on as TCP (Istio's default 0: no limit)
    protocol_detection_timeout: float = 0.0
    # meshConfig.defaultConfig.gatewayTopology.numTrustedProxies: X-Forwarded-For hops a gateway trusts
    gateway_trusted_proxies: int = 0
