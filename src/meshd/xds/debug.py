"""What the xDS side shows on the ops port's debug endpoints, as JSON-ready data: per connected proxy
the versions sent, acked and NACKed (`/debug/syncz`), and the resources one proxy is served
(`/debug/config_dump`, private keys redacted). The ops server renders these through callables app passes in."""

from __future__ import annotations

from typing import Any

from google.protobuf import json_format

from meshd.xds.hub import Hub
from meshd.xds.resource import short_name


def sync_status(hub: Hub) -> list[dict[str, Any]]:
    out = []
    for conn in hub.connections.values():
        types = {}
        for type_url, st in sorted(conn.stream.types.items()):
            types[short_name(type_url)] = {
                "sent": st.sent_version,
                "acked": st.acked_version,
                "nonce": st.sent_nonce,
                "nacked": st.nack_version,
                "nack_error": st.nack_error,
            }
        out.append(
            {
                "proxy": conn.proxy.node_id,
                "connection": conn.conn_id,
                "delta": conn.delta,
                "connected_at": conn.connected_at,
                "types": types,
            }
        )
    return out


def config_dump(hub: Hub, proxy_id: str) -> dict[str, Any] | None:
    conn = hub.find(proxy_id)
    if conn is None:
        return None
    snapshot = hub.snapshot_for(conn.proxy)
    return {
        short_name(type_url): [_redacted(json_format.MessageToDict(r.to_any())) for _, r in sorted(resources.items())]
        for type_url, resources in sorted(snapshot.resources.items())
    }


def _redacted(resource: dict[str, Any]) -> dict[str, Any]:
    """Private keys of SDS secrets are never shown (as in Envoy's own config_dump)."""
    certificate = resource.get("tlsCertificate")
    if isinstance(certificate, dict) and "privateKey" in certificate:
        certificate["privateKey"] = {"inlineString": "[redacted]"}
    return resource
