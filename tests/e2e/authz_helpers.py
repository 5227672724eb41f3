"""Helpers of the AuthorizationPolicy end-to-end tests: waiting until a sidecar's Envoy holds (acked) the
authorization meshd generates for it, raw HTTP requests (paths sent byte for byte: no client-side
normalisation), and small ext_authz servers speaking the real protocols (HTTP, and gRPC
`envoy.service.auth.v3.Authorization`) that count the checks they answer."""

from __future__ import annotations

import asyncio
import json
import re
from dataclasses import dataclass, field
from typing import Any

import grpc
from aiohttp import web
from envoy.config.core.v3 import base_pb2
from envoy.service.auth.v3 import external_auth_pb2, external_auth_pb2_grpc
from envoy.type.v3 import http_status_pb2
from google.rpc import status_pb2

from tests.e2e.harness import Meshd, eventually

ALLOW_HEADER = "x-ext-authz"  # a request carrying `x-ext-authz: allow` is allowed by the ext_authz servers
RESULT_HEADER = "x-ext-authz-check-result"


async def authorization(meshd: Meshd, proxy_id: str) -> dict[str, Any]:
    data: dict[str, Any] = await meshd.get_json(f"/debug/authorizationz?proxyID={proxy_id}")
    return data


async def listener_version(meshd: Meshd, proxy_id: str) -> tuple[str | None, str | None]:
    """(sent, acked) listener version of a connected proxy, from /debug/syncz."""
    pod, _, namespace = proxy_id.partition(".")
    for entry in await meshd.get_json("/debug/syncz"):
        if f"~{pod}.{namespace}~" in entry["proxy"]:
            state = entry["types"].get("lds", {})
            return state.get("sent"), state.get("acked")
    return None, None


def _filters(view: dict[str, Any]) -> str:
    return json.dumps([view.get("httpFilters"), view.get("networkFilters"), view.get("pathNormalization")])


async def snapshot(meshd: Meshd, proxy_id: str) -> tuple[str | None, str]:
    """What a later `converge` compares with: the proxy's listener version and authorization filters."""
    sent, _ = await listener_version(meshd, proxy_id)
    return sent, _filters(await authorization(meshd, proxy_id))


async def converge(
    meshd: Meshd, proxy_id: str, policies: set[str], *, before: tuple[str | None, str], envoy: Any = None
) -> None:
    """Wait until meshd applies exactly `policies` ("ns/name") to the proxy and its Envoy has acked the
    listeners carrying them (a version newer than the one of `before` when the filters changed). With the
    proxy's `envoy` (admin access), also until its old listeners are drained: connections opened before
    the change keep the filters they started with until then (the sidecar's drain time, 1s)."""
    found: dict[str, Any] = {}

    async def applied() -> bool:
        found.update(await authorization(meshd, proxy_id))
        return {p["policy"] for p in found.get("policies", [])} == policies

    await eventually(applied, timeout=20, what=f"meshd to apply {sorted(policies)} to {proxy_id}")
    changed = _filters(found) != before[1]

    async def acked() -> bool:
        sent, held = await listener_version(meshd, proxy_id)
        return sent is not None and sent == held and (sent != before[0] or not changed)

    await eventually(acked, timeout=20, what=f"{proxy_id} to ack its new listeners")
    if envoy is None:
        return

    async def drained() -> bool:
        draining = [await stat(envoy, f"listener_manager.total_{n}_draining") for n in ("listeners", "filter_chains")]
        return draining == [0, 0]

    await eventually(drained, timeout=20, what=f"{proxy_id}'s old listeners drained")


async def raw_request(
    host: str,
    port: int,
    path: str,
    *,
    authority: str,
    method: str = "GET",
    headers: tuple[tuple[str, str], ...] = (),
) -> tuple[int, str]:
    """One HTTP/1.1 request written as given (the path byte for byte, repeated headers kept); (status, body)."""
    reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), 5)
    extra = "".join(f"{name}: {value}\r\n" for name, value in headers)
    try:
        head = f"{method} {path} HTTP/1.1\r\nHost: {authority}\r\n{extra}Connection: close\r\n\r\n"
        writer.write(head.encode())
        await writer.drain()
        data = await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()
    head, _, body = data.decode(errors="replace").partition("\r\n\r\n")
    match = re.match(r"HTTP/1\.1 (\d+)", head)
    assert match, f"not an HTTP response: {data[:200]!r}"
    return int(match.group(1)), body


def received_paths(app: Any) -> list[str]:
    return [r["path"] for r in app.received]


@dataclass
class Checks:
    """What an ext_authz server was asked: one entry per check (the path it saw, its verdict)."""

    seen: list[tuple[str, bool]] = field(default_factory=list)


async def http_ext_authz(host: str, port: int) -> tuple[web.AppRunner, Checks]:
    """Envoy's HTTP ext_authz protocol: the check is the original request (path under the provider's
    pathPrefix, the allowed headers); a 2xx allows, anything else is the denial sent to the client."""
    checks = Checks()

    async def check(request: web.Request) -> web.Response:
        allowed = request.headers.get(ALLOW_HEADER) == "allow"
        checks.seen.append((request.path, allowed))
        if allowed:
            return web.Response(status=200, headers={RESULT_HEADER: "allowed"})
        return web.Response(status=403, text="denied by ext_authz (http)", headers={RESULT_HEADER: "denied"})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", check)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    return runner, checks


class _Authorization(external_auth_pb2_grpc.AuthorizationServicer):  # type: ignore[misc]
    def __init__(self, checks: Checks) -> None:
        self.checks = checks

    async def Check(self, request: Any, context: Any) -> Any:
        http = request.attributes.request.http
        allowed = http.headers.get(ALLOW_HEADER) == "allow"
        self.checks.seen.append((http.path, allowed))
        header = base_pb2.HeaderValueOption(header=base_pb2.HeaderValue(key=RESULT_HEADER, value="allowed"))
        if allowed:
            return external_auth_pb2.CheckResponse(
                status=status_pb2.Status(code=0), ok_response=external_auth_pb2.OkHttpResponse(headers=[header])
            )
        return external_auth_pb2.CheckResponse(
            status=status_pb2.Status(code=7),  # PERMISSION_DENIED
            denied_response=external_auth_pb2.DeniedHttpResponse(
                status=http_status_pb2.HttpStatus(code=403), body="denied by ext_authz (grpc)"
            ),
        )


async def grpc_ext_authz(host: str, port: int) -> tuple[grpc.aio.Server, Checks]:
    checks = Checks()
    server = grpc.aio.server()
    external_auth_pb2_grpc.add_AuthorizationServicer_to_server(_Authorization(checks), server)
    server.add_insecure_port(f"{host}:{port}")
    await server.start()
    return server, checks


async def stat(envoy: Any, name: str) -> int:
    """One counter of an Envoy's admin /stats (0 when absent)."""
    text = await envoy.admin_get(f"/stats?format=json&filter=^{re.escape(name)}$")
    found = json.loads(text)["stats"]
    return int(found[0]["value"]) if found else 0
