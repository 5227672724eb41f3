"""Tiny HTTP services for the demo and end-to-end tests: each answers with the chain of hops it made.

An app listens on `<ip>:<port>` and, if it has an upstream, calls it through its own sidecar's
outbound listener (`http://<sidecar_host>:<sidecar_port>/`, `Host: <service>:<sidecar_port>`) and nests
the upstream's answer:

    {"service": "frontend", "version": "v1", "pod": "frontend", "peer": "spiffe://.../sa/istio-ingressgateway-...",
     "request": {...}, "upstream": {"service": "catalog", "version": "v2", "pod": "catalog-v2", ...}}

`peer` is the caller's identity as mTLS proved it to this app's sidecar (x-forwarded-client-cert), or
null when the call arrived in plaintext.

A failed upstream call answers 502 with "error" (and "upstream_status"/"upstream" when there was a
response). Query parameters for tests: `?status=503` answers that status without calling upstream;
`?delay_ms=200` delays the answer; `?fail_once=<token>` answers 503 the first time this app sees
the token and normally afterwards (a backend that fails the first attempt). Tests can also set
`AppServer.force_status` (every answer gets that status) and read `AppServer.received` (a summary of
every request the app got, oldest first).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Self

import aiohttp
from aiohttp import web

from meshd.demo.identity import XFCC_HEADER, peer_identity

PROPAGATED_HEADERS = (
    "x-request-id",
    "traceparent",
    "tracestate",
    "b3",
    "x-b3-traceid",
    "x-b3-spanid",
    "x-b3-parentspanid",
    "x-b3-sampled",
    "x-b3-flags",
    "end-user",
)


@dataclass(frozen=True)
class Upstream:
    """The service an app calls, reached through its own sidecar's outbound listener."""

    service: str
    sidecar_host: str
    sidecar_port: int = 9080
    path: str = "/"
    host_header: str | None = None

    @property
    def url(self) -> str:
        return f"http://{self.sidecar_host}:{self.sidecar_port}{self.path}"

    @property
    def host(self) -> str:
        return self.host_header or f"{self.service}:{self.sidecar_port}"


@dataclass(frozen=True)
class AppIdentity:
    """What an app reports about itself in every answer."""

    service: str
    version: str
    pod: str


@dataclass
class AppState:
    """What tests can steer and observe in a running app."""

    force_status: int | None = None
    received: list[dict[str, Any]] = field(default_factory=list)
    seen_tokens: set[str] = field(default_factory=set)
    max_received: int = 10_000


class AppServer:
    """A running app; `await stop()` (or leave `async with`) closes its listener and client."""

    def __init__(
        self, *, identity: AppIdentity, runner: web.AppRunner, session: aiohttp.ClientSession, url: str
    ) -> None:
        self.identity = identity
        self.url = url
        self._runner = runner
        self._session = session
        self._stopped = False
        self.state = AppState()

    @property
    def received(self) -> list[dict[str, Any]]:
        return self.state.received

    @property
    def force_status(self) -> int | None:
        return self.state.force_status

    @force_status.setter
    def force_status(self, status: int | None) -> None:
        self.state.force_status = status

    async def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        try:
            await self._runner.cleanup()
        finally:
            await self._session.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.stop()


def _request_summary(request: web.Request) -> dict[str, Any]:
    return {
        "method": request.method,
        "path": request.path_qs,
        "host": request.host,
        "headers": {name.lower(): value for name, value in request.headers.items()},
    }


async def _call_upstream(
    *, session: aiohttp.ClientSession, upstream: Upstream, request: web.Request
) -> tuple[int, dict[str, Any]]:
    """Call the upstream; returns (status for our answer, fields to merge into our answer)."""
    headers = {"Host": upstream.host}
    headers.update({name: request.headers[name] for name in PROPAGATED_HEADERS if name in request.headers})
    try:
        async with session.get(upstream.url, headers=headers) as response:
            text = await response.text()
            status = response.status
    except (aiohttp.ClientError, TimeoutError) as err:
        return 502, {"error": f"calling {upstream.service} via {upstream.url}: {type(err).__name__}: {err}"}
    try:
        answer: Any = json.loads(text)
    except ValueError:
        answer = None
    if status == 200 and isinstance(answer, dict):
        return 200, {"upstream": answer}
    fields: dict[str, Any] = {
        "error": f"calling {upstream.service} via {upstream.url}: HTTP {status}",
        "upstream_status": status,
    }
    fields["upstream"] = answer if isinstance(answer, dict) else text[:500]
    return 502, fields


def _handler(
    *, identity: AppIdentity, upstream: Upstream | None, session: aiohttp.ClientSession, state: AppState
) -> Callable[[web.Request], Awaitable[web.Response]]:
    async def handle(request: web.Request) -> web.Response:
        summary = _request_summary(request)
        if len(state.received) < state.max_received:
            state.received.append(summary)
        body: dict[str, Any] = {
            "service": identity.service,
            "version": identity.version,
            "pod": identity.pod,
            "peer": peer_identity(request.headers.get(XFCC_HEADER)),
            "request": summary,
        }
        delay_ms = request.query.get("delay_ms")
        if delay_ms is not None:
            await asyncio.sleep(float(delay_ms) / 1000)
        if state.force_status is not None:
            return web.json_response(body, status=state.force_status)
        token = request.query.get("fail_once")
        if token is not None and token not in state.seen_tokens:
            state.seen_tokens.add(token)
            return web.json_response(body, status=503)
        forced = request.query.get("status")
        if forced is not None:
            return web.json_response(body, status=int(forced))
        status = 200
        if upstream is not None:
            status, fields = await _call_upstream(session=session, upstream=upstream, request=request)
            body.update(fields)
        return web.json_response(body, status=status)

    return handle


async def start_app(
    *,
    service: str,
    version: str,
    pod: str,
    host: str,
    port: int = 8080,
    upstream: Upstream | None = None,
    upstream_timeout_s: float = 5.0,
) -> AppServer:
    """Listen on host:port (every method and path) until the returned server is stopped."""
    identity = AppIdentity(service=service, version=version, pod=pod)
    session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=upstream_timeout_s))
    app = web.Application()
    state = AppState()
    handler = _handler(identity=identity, upstream=upstream, session=session, state=state)
    app.router.add_route("*", "/{tail:.*}", handler)
    runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=1.0)
    try:
        await runner.setup()
        await web.TCPSite(runner, host, port).start()
    except BaseException:
        await runner.cleanup()
        await session.close()
        raise
    server = AppServer(identity=identity, runner=runner, session=session, url=f"http://{host}:{port}")
    server.state = state
    return server
