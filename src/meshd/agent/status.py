"""The agent's status port (Istio: 15021): `/healthz/ready` is 200 once Envoy answers LIVE and, when the
agent manages certificates, one is loaded; `/status` is JSON for people and tests."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from meshd.agent.envoy import EnvoyError


def build_status_app(
    *,
    envoy_ready: Callable[[], Awaitable[bool]],
    certificate_ready: Callable[[], bool],
    status: Callable[[], dict[str, Any]],
) -> web.Application:
    async def ready(_: web.Request) -> web.Response:
        if not certificate_ready():
            return web.Response(status=503, text="no workload certificate yet\n")
        try:
            live = await envoy_ready()
        except (OSError, EnvoyError, TimeoutError) as err:
            return web.Response(status=503, text=f"envoy not reachable: {err}\n")
        if not live:
            return web.Response(status=503, text="envoy not ready\n")
        return web.Response(text="ready\n")

    async def show(_: web.Request) -> web.Response:
        return web.Response(text=json.dumps(status(), indent=2) + "\n", content_type="application/json")

    app = web.Application()
    app.router.add_get("/healthz/ready", ready)
    app.router.add_get("/status", show)
    return app
