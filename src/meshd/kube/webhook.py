"""The admission webhook server: HTTPS, `POST /validate` (validation), `POST /inject` (sidecar
injection, `kube/inject.py`), `GET /ready`.

Port 15017 as istiod's. A body that is not an AdmissionReview (not JSON, over the size limit,
nested deeper than `admission.MAX_DEPTH`, fields missing) gets a 4xx; nothing in a request can
take the server down.
"""

from __future__ import annotations

import asyncio
import json
import logging
import pathlib
import socket
import ssl
from collections.abc import Callable
from typing import Any

from aiohttp import web

from meshd.kube.admission import BadReview, depth_exceeds, review
from meshd.kube.inject import inject_review
from meshd.kube.inject_template import InjectionConfig

MAX_BODY_BYTES = 6 * 1024 * 1024  # the API server's own request limit is 3 MiB


def server_ssl_context(cert: pathlib.Path, key: pathlib.Path) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert, key)
    return context


def _answer(raw: bytes, answer_for: Callable[[Any], dict[str, Any]], log: logging.Logger) -> tuple[Any, int]:
    """(JSON answer, HTTP status) for one request body: parsing and validation, run in a worker thread."""
    try:
        body = json.loads(raw)
    except (ValueError, RecursionError) as exc:
        log.info("event=webhook_bad_request reason=not_json error=%s", type(exc).__name__)
        return {"error": "body is not JSON"}, 400
    if depth_exceeds(body):
        log.info("event=webhook_bad_request reason=too_deep")
        return {"error": "JSON nested too deeply"}, 400
    try:
        answer = answer_for(body)
    except BadReview as exc:
        log.info("event=webhook_bad_request reason=%r", str(exc)[:300])
        return {"error": str(exc)}, 400
    response = answer["response"]
    if not response["allowed"]:
        log.info("event=webhook_denied uid=%r message=%r", response["uid"][:100], response["status"]["message"])
    return answer, 200


def _handler(
    answerer: Callable[[], Callable[[Any], dict[str, Any]]], *, log: logging.Logger
) -> Callable[[web.Request], Any]:
    """`answerer` is called on the event loop for each request (it may read live state, such as the store's
    ProxyConfigs) and returns the function that answers the body off the loop."""

    async def handle(request: web.Request) -> web.Response:
        raw = await request.read()  # aiohttp answers 413 itself past client_max_size
        answer_for = answerer()
        # Off the event loop: a review of several MB takes long to parse and validate, and this loop
        # also serves ADS (the GIL is shared, but handed over every few ms).
        body, status = await asyncio.to_thread(_answer, raw, answer_for, log)
        return web.json_response(body, status=status)

    return handle


def build_webhook_app(
    *,
    log: logging.Logger,
    injection: InjectionConfig | Callable[[], InjectionConfig] | None = None,
    max_body_bytes: int = MAX_BODY_BYTES,
) -> web.Application:
    """`/inject` is served when `injection` is given (a function: read at each review, so a live input such
    as the mesh config's discovery address applies to the next pod)."""

    async def ready(_: web.Request) -> web.Response:
        return web.Response(text="ready\n")

    app = web.Application(client_max_size=max_body_bytes)
    app.router.add_post("/validate", _handler(lambda: review, log=log))
    if injection is not None:
        current = injection if callable(injection) else (lambda: injection)

        def inject_with_current() -> Callable[[Any], dict[str, Any]]:
            config = current()  # on the loop: it reads the store
            return lambda body: inject_review(body, config=config)

        app.router.add_post("/inject", _handler(inject_with_current, log=log))
    app.router.add_get("/ready", ready)
    return app


async def serve_webhook(
    *,
    host: str,
    port: int,
    log: logging.Logger,
    cert: pathlib.Path | None = None,
    key: pathlib.Path | None = None,
    ssl_context: ssl.SSLContext | None = None,
    injection: InjectionConfig | Callable[[], InjectionConfig] | None = None,
    sock: socket.socket | None = None,
) -> None:
    """Serve until cancelled, with `ssl_context` or else the `cert`/`key` files; on `sock` (a bound,
    listening socket) when given, else on host:port."""
    if ssl_context is None:
        if cert is None or key is None:
            raise ValueError("the webhook needs a certificate and key")
        ssl_context = server_ssl_context(cert, key)
    runner = web.AppRunner(build_webhook_app(log=log, injection=injection), access_log=None)
    await runner.setup()
    try:
        site: web.BaseSite = (
            web.SockSite(runner, sock, ssl_context=ssl_context)
            if sock is not None
            else web.TCPSite(runner, host, port, ssl_context=ssl_context)
        )
        await site.start()
        log.info("event=webhook_started port=%d", port)
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()
