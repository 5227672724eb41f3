"""The operations HTTP port (15014): /ready, /metrics and the debug endpoints.

/debug/syncz            every connected proxy: per type the version sent, acked and the last NACK
/debug/config_dump      ?proxyID=<pod>.<ns> or a full node id: the resources that proxy is served
/debug/config_errors    every resource currently rejected, with file/resource/field/message
/debug/informers        Kubernetes mode: each informer's state and the mesh config read
/debug/authorizationz   ?proxyID=<pod>.<ns> or a full node id: the AuthorizationPolicies applying to that proxy
                        (and their errors) and the RBAC / ext_authz filters its inbound side gets

What the endpoints show comes in as callables (`DebugViews`): this server knows no xDS and no Kubernetes.
A view may return its data or an awaitable of it (`--workers N`: the main process asks its workers).

/ready and /metrics answer anyone (probes, Prometheus). The /debug endpoints show every proxy's config
and every namespace's errors: by default they answer only clients on the loopback interface (inside the
pod: `kubectl port-forward`, `kubectl exec`), anyone else gets 403. `meshd serve --debug-expose` opens them
to other addresses for authenticated callers only: a bearer token (401 without one) that the authorizer app
hands in accepts for the path (403 otherwise); exposed without an authorizer, they stay closed (403).
"""

from __future__ import annotations

import inspect
import ipaddress
import json
import posixpath
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Middleware
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from meshd.api.meta import InvalidResource

Json = Any  # what json.dumps takes


@dataclass(frozen=True)
class DebugViews:
    """The data behind the debug endpoints, read at each request."""

    sync_status: Callable[[], Json | Awaitable[Json]]
    config_dump: Callable[[str], Json | Awaitable[Json | None] | None]  # None: no such proxy connected
    config_errors: Callable[[], Sequence[InvalidResource]]
    informers: Callable[[], Json] | None = None  # Kubernetes mode only
    # None: no such proxy connected
    authorizationz: Callable[[str], Json | Awaitable[Json | None] | None] | None = None
    # what /metrics renders, when not just the registry (`--workers N`: the workers' streams added in)
    exposition: Callable[[], Awaitable[bytes]] | None = None


async def _settled(value: Any) -> Any:
    return await value if inspect.isawaitable(value) else value


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(text=json.dumps(data, indent=2, sort_keys=True), status=status, content_type="application/json")


DEBUG_PREFIX = "/debug/"
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
# (bearer token, request path) -> None to let the request through, or (HTTP status, why) to refuse it
DebugAuthorizer = Callable[[str, str], Awaitable[tuple[int, str] | None]]


def is_loopback(remote: str | None) -> bool:
    try:
        return remote is not None and ipaddress.ip_address(remote.split("%")[0]).is_loopback
    except ValueError:
        return False  # a Unix socket or anything unexpected: not known to be local


def debug_guard(*, expose: bool, authorize: DebugAuthorizer | None = None) -> Middleware:
    """Middleware: /debug/* for loopback clients; for others only when `expose`, with a bearer token that
    `authorize` accepts (fails closed: exposed without an authorizer, other clients get 403)."""

    @web.middleware
    async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
        path = posixpath.normpath("/" + request.path.lstrip("/"))
        if not (path + "/").startswith(DEBUG_PREFIX) or is_loopback(request.remote):
            return await handler(request)
        if not expose:
            return web.Response(
                status=403, text="the debug endpoints answer only on localhost (meshd serve --debug-expose)\n"
            )
        if authorize is None:
            return web.Response(status=403, text="the debug endpoints are exposed but no authenticator is set\n")
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return web.Response(
                status=401,
                headers={"WWW-Authenticate": 'Bearer realm="meshd-debug"'},
                text="a bearer token is required for the debug endpoints\n",
            )
        refusal = await authorize(token.strip(), path)
        if refusal is not None:
            status, why = refusal
            return web.Response(status=status, text=f"{why}\n")
        return await handler(request)

    return guard


def build_app(
    *,
    registry: CollectorRegistry,
    is_ready: Callable[[], bool],
    views: DebugViews,
    test_hooks: Callable[[web.Request], Awaitable[web.Response]] | None = None,
    debug_expose: bool = False,
    debug_authorize: DebugAuthorizer | None = None,
) -> web.Application:
    async def ready(_: web.Request) -> web.Response:
        return web.Response(text="ready\n") if is_ready() else web.Response(text="not ready\n", status=503)

    async def prom(_: web.Request) -> web.Response:
        body = await views.exposition() if views.exposition is not None else generate_latest(registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def syncz(_: web.Request) -> web.Response:
        return _json(await _settled(views.sync_status()))

    async def dump(request: web.Request) -> web.Response:
        proxy_id = request.query.get("proxyID", "")
        data = await _settled(views.config_dump(proxy_id))
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
                    "severity": e.severity,
                }
                for e in views.config_errors()
            ]
        )

    app = web.Application(middlewares=[debug_guard(expose=debug_expose, authorize=debug_authorize)])
    app.router.add_get("/ready", ready)
    app.router.add_get("/metrics", prom)
    app.router.add_get("/debug/syncz", syncz)
    app.router.add_get("/debug/config_dump", dump)
    app.router.add_get("/debug/config_errors", errors)
    if test_hooks is not None:
        app.router.add_post("/debug/test/{hook}", test_hooks)
    if views.authorizationz is not None:
        authorizationz = views.authorizationz

        async def authorization(request: web.Request) -> web.Response:
            proxy_id = request.query.get("proxyID", "")
            data = await _settled(authorizationz(proxy_id))
            if data is None:
                return _json({"error": f"proxy {proxy_id!r} is not connected"}, status=404)
            return _json(data)

        app.router.add_get("/debug/authorizationz", authorization)
    if views.informers is not None:
        informers = views.informers

        async def informers_status(_: web.Request) -> web.Response:
            return _json(informers())

        app.router.add_get("/debug/informers", informers_status)
    return app
