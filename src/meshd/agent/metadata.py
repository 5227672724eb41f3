"""The sidecar's identity as Istio's node agent presents it: node id and node metadata.

Metadata names are Istio's (`NAMESPACE`, `NAME`, `SERVICE_ACCOUNT`, `LABELS`, `INSTANCE_IPS`,
`WORKLOAD_NAME`, `OWNER`, `CLUSTER_ID`, `MESH_ID`, `ISTIO_VERSION`, `POD_PORTS`, `PILOT_SAN`,
`ENVOY_STATUS_PORT`, ...): a control plane reading them finds what it expects.
"""

from __future__ import annotations

import json
from typing import Any

from meshd import __version__
from meshd.settings import AgentSettings


def node_id(settings: AgentSettings) -> str:
    ns = settings.namespace
    return f"{settings.proxy_type}~{settings.ip}~{settings.pod}.{ns}~{ns}.svc.{settings.domain_suffix}"


def workload_name(settings: AgentSettings) -> str:
    return settings.workload_name or settings.labels.get("app") or settings.pod


def node_metadata(settings: AgentSettings) -> dict[str, Any]:
    workload = workload_name(settings)
    metadata: dict[str, Any] = {
        "NAMESPACE": settings.namespace,
        "NAME": settings.pod,
        "SERVICE_ACCOUNT": settings.service_account,
        "LABELS": dict(settings.labels),
        "INSTANCE_IPS": settings.ip,
        "WORKLOAD_NAME": workload,
        "OWNER": f"kubernetes://apis/apps/v1/namespaces/{settings.namespace}/deployments/{workload}",
        "CLUSTER_ID": settings.cluster_id,
        "MESH_ID": settings.mesh_id,
        "ISTIO_VERSION": f"meshd-{__version__}",
        "INTERCEPTION_MODE": settings.interception_mode,
        "ENVOY_STATUS_PORT": settings.status_port,
    }
    if settings.pod_ports:
        metadata["POD_PORTS"] = json.dumps([{"containerPort": port, "protocol": "TCP"} for port in settings.pod_ports])
    if not settings.xds_plaintext:
        metadata["PILOT_SAN"] = [settings.xds_server_name]
    return metadata
