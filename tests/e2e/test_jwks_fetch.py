"""The JWKS fetch over real HTTP (a local aiohttp server; loopback allowed as the tests' meshd does): the
size limit, the deadline, redirects (each target checked against the address policy, at most 3), and
error statuses, each a FetchFailed with the reason and never the body."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from aiohttp import web

from meshd.sources.jwks_fetch import AddressPolicy, FetchFailed, FetchRefused, fetch_document
from tests.e2e.harness import free_port, next_subnet

pytestmark = pytest.mark.e2e
LOOPBACK = AddressPolicy(allow_loopback=True)


@pytest.fixture
async def server() -> AsyncIterator[str]:
    released = asyncio.Event()

    async def big(_: web.Request) -> web.Response:
        return web.Response(body=b"x" * 5000)

    async def slow(_: web.Request) -> web.Response:
        await released.wait()  # answers only once the test is over
        return web.Response(text="{}")

    async def to_metadata(_: web.Request) -> web.Response:
        raise web.HTTPFound("http://169.254.169.254/latest/meta-data")

    async def loop(request: web.Request) -> web.Response:
        raise web.HTTPFound(f"/loop?n={int(request.query.get('n', '0')) + 1}")

    async def hop(_: web.Request) -> web.Response:
        raise web.HTTPMovedPermanently("/keys")

    async def keys(_: web.Request) -> web.Response:
        return web.Response(text='{"keys": []}')

    app = web.Application()
    for path, handler in (("/big", big), ("/slow", slow), ("/meta", to_metadata), ("/loop", loop), ("/hop", hop)):
        app.router.add_get(path, handler)
    app.router.add_get("/keys", keys)
    runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=0.1)
    await runner.setup()
    host, port = f"{next_subnet()}.1", free_port()
    await web.TCPSite(runner, host, port).start()
    try:
        yield f"http://{host}:{port}"
    finally:
        released.set()
        await runner.cleanup()


async def test_a_redirect_is_followed_to_the_document(server: str) -> None:
    assert await fetch_document(f"{server}/hop", policy=LOOPBACK, timeout_s=5, max_bytes=100) == b'{"keys": []}'


async def test_loopback_is_refused_unless_allowed(server: str) -> None:
    with pytest.raises(FetchRefused, match="loopback"):
        await fetch_document(f"{server}/keys", policy=AddressPolicy(), timeout_s=5, max_bytes=100)


@pytest.mark.parametrize(
    ("path", "error", "message"),
    [
        ("/big", FetchFailed, "larger than 1000 bytes"),
        ("/slow", FetchFailed, "no answer within 0.5s"),
        ("/meta", FetchRefused, "169.254.169.254 is 169.254.169.254, a cloud metadata address"),
        ("/loop", FetchFailed, "more than 3 redirects"),
        ("/missing", FetchFailed, "HTTP 404"),
    ],
)
async def test_failures(server: str, path: str, error: type[Exception], message: str) -> None:
    with pytest.raises(error) as caught:
        await fetch_document(f"{server}{path}", policy=LOOPBACK, timeout_s=0.5, max_bytes=1000)
    assert type(caught.value) is error and message in str(caught.value), caught.value
