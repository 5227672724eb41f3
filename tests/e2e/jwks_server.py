"""A small issuer for the JWT tests: an aiohttp server on a loopback address serving a JSON Web Key Set
(`/jwks`) and an OpenID discovery document (`/.well-known/openid-configuration`) whose `jwks_uri` points
at it. Tests swap the keys it serves (rotation), make it fail (HTTP 500) and count what it was asked."""

from __future__ import annotations

import json
from collections import Counter
from typing import Self

from aiohttp import web

from tests.jwt_tokens import SigningKey


class JwksServer:
    def __init__(self, *, host: str, port: int, keys: list[SigningKey]) -> None:
        self.host, self.port = host, port
        self.keys = keys
        self.failing = False
        self.requests: Counter[str] = Counter()
        self._runner: web.AppRunner | None = None

    @property
    def base(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def jwks_uri(self) -> str:
        return f"{self.base}/jwks"

    async def _jwks(self, _: web.Request) -> web.Response:
        self.requests["jwks"] += 1
        if self.failing:
            return web.Response(status=500, text="down for the test")
        return web.Response(text=json.dumps({"keys": [k.jwk for k in self.keys]}), content_type="application/json")

    async def _discovery(self, _: web.Request) -> web.Response:
        self.requests["discovery"] += 1
        return web.json_response({"issuer": self.base, "jwks_uri": self.jwks_uri})

    async def start(self) -> Self:
        app = web.Application()
        app.router.add_get("/jwks", self._jwks)
        app.router.add_get("/.well-known/openid-configuration", self._discovery)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        await web.TCPSite(self._runner, self.host, self.port).start()
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
