"""The gRPC xDS bootstrap of a proxyless gRPC client (`GRPC_XDS_BOOTSTRAP`), as Istio's agent writes it
for one: meshd's plaintext xDS port as the only server (`xds_v3`, insecure channel credentials), the
node id of a sidecar (`sidecar~<ip>~<pod>.<ns>~<ns>.svc.<domain>`) and node metadata `GENERATOR: grpc`
(what tells meshd, as it tells istiod, to serve gRPC's view: `translate/proxyless.py`), the namespace,
the instance address and the workload's labels. No certificate providers: meshd does not serve Istio mTLS
to proxyless clients (README)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from meshd.translate.proxy import GRPC_GENERATOR, parse_node_id


def build_grpc_bootstrap(
    *, node_id: str, xds_host: str, xds_port: int, labels: Mapping[str, str] | None = None
) -> dict[str, Any]:
    proxy = parse_node_id(node_id)  # raises InvalidNodeId with the reason
    metadata: dict[str, Any] = {
        "GENERATOR": GRPC_GENERATOR,
        "NAMESPACE": proxy.namespace,
        "INSTANCE_IPS": proxy.ip,
        "POD_NAME": proxy.pod,
    }
    if labels:
        metadata["LABELS"] = dict(labels)
    return {
        "xds_servers": [
            {
                "server_uri": f"{xds_host}:{xds_port}",
                "channel_creds": [{"type": "insecure"}],
                "server_features": ["xds_v3"],
            }
        ],
        "node": {"id": node_id, "metadata": metadata, "locality": {}},
    }
