"""The operations HTTP port (15014): /ready, /metrics and the debug endpoints.

/debug/syncz            every connected proxy: per type the version sent, acked and the last NACK
/debug/config_dump      ?proxyID=<pod>.<ns> or a full node id: the resources that proxy is served
/debug/config_errors    every resource currently rejected, with file/resource/field/message
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from aiohttp import web
from google.protobuf import json_format
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from meshd.obs.metrics import Metrics
from meshd.push.loop import PushLoop
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


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(text=json.dumps(data, indent=2, sort_keys=True), status=status, content_type="application/json")


def build_app(
    *,
    hub: Hub,
    push: PushLoop,
    metrics: Metrics,
    is_ready: Callable[[], bool],
    test_hooks: Callable[[web.Request], Any] | None = None,
) -> web.Application:
    async def ready(_: web.Request) -> web.Response:
        return web.Response(text="ready\n") if is_ready() else web.Response(text="not ready\n", status=503)

    async def prom(_: web.Request) -> web.Response:
        return web.Response(body=generate_latest(metrics.registry), headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def syncz(_: web.Request) -> web.Response:
        return _json(sync_status(hub))

    async def dump(request: web.Request) -> web.Response:
        proxy_id = request.query.get("proxyID", "")
        data = config_dump(hub, proxy_id)
        if data is None:
            return _json({"error": f"proxy {proxy_id!r} is not connected"}, status=404)
        return _json(data)

    async def errors(_: web.Request) -> web.Response:
        return _json(
            [
                {
                    "origin": e.origin,
                    "resource": str(e.key) if e.key else None,
                    "field": e.field,
                    "message": e.message,
                }
                for e in push.errors
            ]
        )

    app = web.Application()
    app.router.add_get("/ready", ready)
    app.router.add_get("/metrics", prom)
    app.router.add_get("/debug/syncz", syncz)
    app.router.add_get("/debug/config_dump", dump)
    app.router.add_get("/debug/config_errors", errors)
    if test_hooks is not None:
        app.router.add_post("/debug/test/{hook}", test_hooks)
    return app
