"""The ops HTTP port renders what it is handed: the debug views are callables read at each request
(no hub, no push loop, no informers inside the ops package)."""

from __future__ import annotations

import json
from typing import Any

from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import CollectorRegistry, Gauge

from meshd.api.meta import InvalidResource
from meshd.ops.http import DebugViews, build_app


def _views(*, informers: bool) -> DebugViews:
    dumps = {"web-1.default": {"clusters": [{"name": "outbound|80||web.default.svc.cluster.local"}]}}
    errors = [InvalidResource(key=None, field="spec.hosts", message="empty", origin="bad.yaml")]
    return DebugViews(
        sync_status=lambda: [{"proxy": "sidecar~10.0.0.1~web-1.default~default.svc.cluster.local"}],
        config_dump=dumps.get,
        config_errors=lambda: errors,
        informers=(lambda: {"synced": True}) if informers else None,
    )


async def _get(client: TestClient[Any, Any], path: str) -> tuple[int, str]:
    response = await client.get(path)
    return response.status, await response.text()


async def test_endpoints_render_the_views() -> None:
    registry = CollectorRegistry()
    Gauge("meshd_probe", "a probe", registry=registry).set(3)
    ready = [False]
    app = build_app(registry=registry, is_ready=lambda: ready[0], views=_views(informers=True))
    async with TestClient(TestServer(app)) as client:
        assert (await _get(client, "/ready"))[0] == 503
        ready[0] = True
        assert await _get(client, "/ready") == (200, "ready\n")
        assert "meshd_probe 3.0" in (await _get(client, "/metrics"))[1]
        status, body = await _get(client, "/debug/syncz")
        assert status == 200 and json.loads(body)[0]["proxy"].startswith("sidecar~")
        status, body = await _get(client, "/debug/config_dump?proxyID=web-1.default")
        assert status == 200 and "clusters" in json.loads(body)
        status, body = await _get(client, "/debug/config_dump?proxyID=ghost.default")
        assert status == 404 and json.loads(body) == {"error": "proxy 'ghost.default' is not connected"}
        status, body = await _get(client, "/debug/config_errors")
        assert json.loads(body) == [
            {"origin": "bad.yaml", "resource": None, "field": "spec.hosts", "message": "empty", "severity": "error"}
        ]
        assert json.loads((await _get(client, "/debug/informers"))[1]) == {"synced": True}
        assert (await client.post("/debug/test/clear")).status == 404  # test hooks are off


async def test_no_informers_view_outside_kubernetes_mode() -> None:
    app = build_app(registry=CollectorRegistry(), is_ready=lambda: True, views=_views(informers=False))
    async with TestClient(TestServer(app)) as client:
        assert (await _get(client, "/debug/informers"))[0] == 404


async def _as_peer(app: Any, path: str, remote: str, *, token: str | None = None) -> tuple[int, str]:
    """One request through the app's middleware and router as if it came from `remote`."""
    from aiohttp.test_utils import make_mocked_request

    headers = {"Authorization": f"Bearer {token}"} if token is not None else None
    request = make_mocked_request("GET", path, headers=headers, app=app).clone(remote=remote)
    match = await app.router.resolve(request)
    match.add_app(app)
    request._match_info = match
    handler = match.handler
    for middleware in reversed(app.middlewares):
        handler = _bound(middleware, handler)
    response = await handler(request)
    return response.status, getattr(response, "text", "") or ""


def _bound(middleware: Any, handler: Any) -> Any:
    async def call(request: Any) -> Any:
        return await middleware(request, handler)

    return call


async def test_debug_endpoints_answer_only_loopback_clients_unless_exposed() -> None:
    """Issue 20, item 7: /debug/* answered anyone on 0.0.0.0:15014; /ready and /metrics are unchanged."""
    registry = CollectorRegistry()
    app = build_app(registry=registry, is_ready=lambda: True, views=_views(informers=True))
    debug = ("/debug/syncz", "/debug/config_dump?proxyID=web-1.default", "/debug/config_errors", "/debug/informers")
    for path in debug:
        status, text = await _as_peer(app, path, "192.0.2.7")
        assert status == 403 and "--debug-expose" in text, path
        assert (await _as_peer(app, path, "127.0.0.1"))[0] == 200, path
        assert (await _as_peer(app, path, "::1"))[0] == 200, path
    for path in ("/ready", "/metrics"):
        assert (await _as_peer(app, path, "192.0.2.7"))[0] == 200, path
    assert (await _as_peer(app, "/debug/../debug/syncz", "10.1.2.3"))[0] in (403, 404)

    # exposed without an authenticator: still closed to other addresses (fails closed)
    exposed = build_app(registry=registry, is_ready=lambda: True, views=_views(informers=False), debug_expose=True)
    assert (await _as_peer(exposed, "/debug/syncz", "192.0.2.7"))[0] == 403
    assert (await _as_peer(exposed, "/debug/syncz", "127.0.0.1"))[0] == 200


async def test_exposed_debug_endpoints_need_a_token_the_authorizer_accepts() -> None:
    """Issue 20, item 7: exposing the debug endpoints needs authentication (401 without a token, 403 for a
    token not allowed the path); /ready and /metrics stay open."""
    seen: list[tuple[str, str]] = []

    async def authorize(token: str, path: str) -> tuple[int, str] | None:
        seen.append((token, path))
        return None if token == "good" else (403, "not allowed")

    app = build_app(
        registry=CollectorRegistry(),
        is_ready=lambda: True,
        views=_views(informers=False),
        debug_expose=True,
        debug_authorize=authorize,
    )
    assert (await _as_peer(app, "/debug/syncz", "192.0.2.7"))[0] == 401
    assert (await _as_peer(app, "/debug/syncz", "192.0.2.7", token="bad"))[0] == 403
    assert (await _as_peer(app, "/debug/syncz", "192.0.2.7", token="good"))[0] == 200
    assert (await _as_peer(app, "/debug/config_errors", "192.0.2.7", token="good"))[0] == 200
    assert seen == [("bad", "/debug/syncz"), ("good", "/debug/syncz"), ("good", "/debug/config_errors")]
    assert (await _as_peer(app, "/ready", "192.0.2.7"))[0] == 200
    assert (await _as_peer(app, "/debug/syncz", "127.0.0.1"))[0] == 200  # loopback needs no token
