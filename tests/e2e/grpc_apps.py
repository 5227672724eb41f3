"""Tiny real gRPC apps for the protocol tests (grpcio, no generated code: raw-bytes methods).

Server: `meshd.test.Echo` with `Say` (unary: answers JSON naming the server's version, the request's
authority and its metadata) and `Chat` (bidirectional streaming: one JSON reply per request message). The
client helpers call them over a plain channel (through a sidecar) or, in a subprocess, over `xds:///` (proxyless).
"""

from __future__ import annotations

import json
import sys
from collections.abc import AsyncIterator
from typing import Any

import grpc

SERVICE = "meshd.test.Echo"
SAY = f"/{SERVICE}/Say"
CHAT = f"/{SERVICE}/Chat"


def _identity(data: bytes) -> bytes:
    return data


class EchoServer:
    """A grpc.aio server answering as `version`."""

    def __init__(self, *, version: str, host: str, port: int) -> None:
        self.version = version
        self.address = f"{host}:{port}"
        self.server = grpc.aio.server()
        self.calls = 0

    async def _say(self, request: bytes, context: grpc.aio.ServicerContext) -> bytes:  # type: ignore[type-arg]
        self.calls += 1
        metadata = dict(context.invocation_metadata() or ())
        texts = {k: v for k, v in metadata.items() if isinstance(v, str)}  # (-bin values are bytes)
        return json.dumps(
            {
                "version": self.version,
                "request": request.decode(),
                "authority": metadata.get(":authority", ""),
                "metadata": texts,
            }
        ).encode()

    async def _chat(
        self,
        requests: AsyncIterator[bytes],
        context: grpc.aio.ServicerContext,  # type: ignore[type-arg]
    ) -> AsyncIterator[bytes]:
        self.calls += 1
        async for request in requests:
            yield json.dumps({"version": self.version, "echo": request.decode()}).encode()

    async def start(self) -> None:
        handler = grpc.method_handlers_generic_handler(
            SERVICE,
            {
                "Say": grpc.unary_unary_rpc_method_handler(
                    self._say, request_deserializer=_identity, response_serializer=_identity
                ),
                "Chat": grpc.stream_stream_rpc_method_handler(
                    self._chat, request_deserializer=_identity, response_serializer=_identity
                ),
            },
        )
        self.server.add_generic_rpc_handlers((handler,))
        self.server.add_insecure_port(self.address)
        await self.server.start()

    async def stop(self) -> None:
        await self.server.stop(grace=None)


async def say(channel: grpc.aio.Channel, text: str, *, timeout: float = 5.0) -> dict[str, Any]:
    call = channel.unary_unary(SAY, request_serializer=_identity, response_deserializer=_identity)
    reply: bytes = await call(text.encode(), timeout=timeout)
    answer: dict[str, Any] = json.loads(reply)
    return answer


async def chat(channel: grpc.aio.Channel, texts: list[str], *, timeout: float = 5.0) -> list[dict[str, Any]]:
    call = channel.stream_stream(CHAT, request_serializer=_identity, response_deserializer=_identity)

    async def requests() -> AsyncIterator[bytes]:
        for text in texts:
            yield text.encode()

    return [json.loads(reply) async for reply in call(requests(), timeout=timeout)]


PROXYLESS_CLIENT = """
import collections, json, sys, time
import grpc
target, count = sys.argv[1], int(sys.argv[2])
deadline = time.monotonic() + float(sys.argv[3])
seen = collections.Counter()
errors = collections.Counter()
with grpc.insecure_channel(target) as channel:
    say = channel.unary_unary("/meshd.test.Echo/Say")
    while sum(seen.values()) < count and time.monotonic() < deadline:
        try:
            seen[json.loads(say(b"hi", timeout=5))["version"]] += 1
        except grpc.RpcError as exc:
            errors[exc.code().name + ": " + (exc.details() or "")[:200]] += 1
            if not seen:
                time.sleep(0.2)
print(json.dumps({"seen": seen, "errors": errors}))
"""


def proxyless_argv(target: str, count: int, deadline_s: float) -> list[str]:
    """A grpcio client in its own process (GRPC_XDS_BOOTSTRAP is read once per process): `count` calls of
    Say to `target`, printing the versions that answered and the errors."""
    return [sys.executable, "-c", PROXYLESS_CLIENT, target, str(count), str(deadline_s)]
