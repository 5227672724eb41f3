"""Tiny TCP servers for the L4 tests, each telling the client who answered: a plain echo of its name, the
same over TLS (a certificate per SNI host), a reader of the PROXY protocol header (v1 text or v2 binary)
that replies with what it received, and an HTTP CONNECT proxy that records the targets it is asked for."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import Awaitable, Callable

PROXY_V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


class Servers:
    """Every server a test starts, closed together."""

    def __init__(self) -> None:
        self._servers: list[asyncio.Server] = []
        self.connect_targets: list[str] = []  # what the CONNECT proxy was asked to reach

    async def _start(self, handler: Handler, host: str, port: int, *, tls: ssl.SSLContext | None = None) -> None:
        self._servers.append(await asyncio.start_server(handler, host, port, ssl=tls))

    async def name(self, host: str, port: int, name: str, *, tls: ssl.SSLContext | None = None) -> None:
        """Reply `<name>\\n` to every connection, then close."""

        async def handle(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            with contextlib.suppress(ConnectionError, ssl.SSLError):
                writer.write(f"{name}\n".encode())
                await writer.drain()
                writer.close()

        await self._start(handle, host, port, tls=tls)

    async def proxy_protocol(self, host: str, port: int) -> None:
        """Read a PROXY protocol header (v1: one text line; v2: the binary header) and reply with it (hex for
        v2), one line."""

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
                start = await reader.readexactly(12)
                if start == PROXY_V2_SIGNATURE:
                    rest = await reader.readexactly(4)
                    body = await reader.readexactly(int.from_bytes(rest[2:4], "big"))
                    reply = "v2 " + (start + rest + body).hex()
                else:
                    reply = (start + await reader.readline()).decode(errors="replace").strip()
                writer.write(f"{reply}\n".encode())
                await writer.drain()
                writer.close()

        await self._start(handle, host, port)

    async def connect_proxy(self, host: str, port: int) -> None:
        """An HTTP/1.1 CONNECT proxy: records the target, answers 200 and pipes both ways."""

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError, OSError):
                head = await reader.readuntil(b"\r\n\r\n")
                method, target, _ = head.split(b"\r\n", 1)[0].decode().split(" ", 2)
                self.connect_targets.append(f"{method} {target}")
                target_host, _, target_port = target.rpartition(":")
                upstream_reader, upstream_writer = await asyncio.open_connection(
                    target_host.strip("[]"), int(target_port)
                )
                writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
                await writer.drain()
                await asyncio.gather(_pipe(reader, upstream_writer), _pipe(upstream_reader, writer))

        await self._start(handle, host, port)

    async def close(self) -> None:
        for server in self._servers:
            server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(server.wait_closed(), 2)


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(ConnectionError, OSError):
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    with contextlib.suppress(ConnectionError, OSError):
        writer.close()


def server_context(cert: str, key: str) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    return context


def client_context(ca: str) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=ca)
    return context


async def read_line(
    host: str, port: int, *, tls: ssl.SSLContext | None = None, sni: str | None = None, timeout: float = 5.0
) -> str:
    """Connect, read one line, return it (stripped); raise on a refused or reset connection."""

    async def once() -> str:
        reader, writer = await asyncio.open_connection(host, port, ssl=tls, server_hostname=sni if tls else None)
        try:
            line = await reader.readline()
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
        if not line:
            raise ConnectionResetError(f"{host}:{port} closed the connection without a reply")
        return line.decode().strip()

    return await asyncio.wait_for(once(), timeout)
