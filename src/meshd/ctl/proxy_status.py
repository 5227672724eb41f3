"""`meshd proxy-status [PROXY]`: every proxy connected to meshd and, per xDS type, whether it holds what
meshd sent it: SYNCED, NOT SENT, STALE (sent, not acked yet) or NACKED (with Envoy's error), read from
Istio's `istio.io/debug/syncz` (the same answer `istioctl x proxy-status --xds-address` reads)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

from envoy.service.discovery.v3 import discovery_pb2
from envoy.service.status.v3 import csds_pb2
from google.protobuf import json_format

TYPES = (
    ("CDS", "type.googleapis.com/envoy.config.cluster.v3.Cluster"),
    ("LDS", "type.googleapis.com/envoy.config.listener.v3.Listener"),
    ("EDS", "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"),
    ("RDS", "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"),
)
_STATUS = {
    csds_pb2.SYNCED: "SYNCED",
    csds_pb2.NOT_SENT: "NOT SENT",
    csds_pb2.STALE: "STALE",
    csds_pb2.ERROR: "NACKED",
}


@dataclass(frozen=True)
class TypeStatus:
    status: str
    version: str
    error: str


@dataclass(frozen=True)
class ProxyStatus:
    name: str
    node_id: str
    cluster: str
    types: dict[str, TypeStatus]


def parse_syncz(response: discovery_pb2.DiscoveryResponse) -> list[ProxyStatus]:
    out = []
    for packed in response.resources:
        config = csds_pb2.ClientConfig()
        if not packed.Unpack(config):
            continue
        meta = json_format.MessageToDict(config.node.metadata)
        generic = {g.type_url: g for g in config.generic_xds_configs}
        types = {}
        for short, type_url in TYPES:
            g = generic.get(type_url)
            if g is None:
                types[short] = TypeStatus("UNKNOWN", "", "")
                continue
            types[short] = TypeStatus(_STATUS.get(g.config_status, "UNKNOWN"), g.version_info, g.error_state.details)
        out.append(
            ProxyStatus(
                name=config.node.id,
                node_id=str(meta.get("NODE_ID", "")),
                cluster=str(meta.get("CLUSTER_ID", "")),
                types=types,
            )
        )
    return out


def select(statuses: list[ProxyStatus], proxy: str | None) -> list[ProxyStatus]:
    """All proxies, or the one named by proxy id (`pod.namespace`) or full node id."""
    if proxy is None:
        return statuses
    return [s for s in statuses if proxy in (s.name, s.node_id)]


def render_table(statuses: list[ProxyStatus]) -> str:
    header = ["NAME", "CLUSTER", *(short for short, _ in TYPES)]
    rows = [[s.name, s.cluster, *(s.types[short].status for short, _ in TYPES)] for s in statuses]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = ["   ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in [header, *rows]]
    errors = [
        f"{s.name} {short} NACKED version {s.types[short].version}: {s.types[short].error}"
        for s in statuses
        for short, _ in TYPES
        if s.types[short].error
    ]
    if errors:
        lines += ["", *errors]
    return "\n".join(lines) + "\n"


def render_json(statuses: list[ProxyStatus]) -> str:
    return json.dumps([asdict(s) for s in statuses], indent=2) + "\n"
