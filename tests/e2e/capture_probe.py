"""A tiny TCP probe (stdlib only, so it runs as any UID inside a network namespace).

`serve PORT...`: listen on every port of the namespace; on each connection reply one JSON line saying which
port accepted it, the original destination the kernel recorded (SO_ORIGINAL_DST: what the client dialled
before a REDIRECT), the peer, and the probe's UID; print `ready` once listening.
`connect HOST PORT`: dial and print the reply line (what an unmodified client app would see).
`http URL [HOST]`: an unmodified HTTP client (urllib): GET URL (with that Host header), print the status and body.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import struct
import sys
from collections.abc import Awaitable, Callable

SO_ORIGINAL_DST = 80


def original_dst(sock: socket.socket) -> str | None:
    try:
        raw = sock.getsockopt(socket.SOL_IP, SO_ORIGINAL_DST, 16)
    except OSError:
        return None
    port, addr = struct.unpack_from("!2xH4s", raw)
    return f"{socket.inet_ntoa(addr)}:{port}"


async def serve(ports: list[int]) -> None:
    def handler(listener: int) -> Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            sock = writer.get_extra_info("socket")
            peer = writer.get_extra_info("peername")
            reply = {
                "listener": listener,
                "original_dst": original_dst(sock),
                "peer": f"{peer[0]}:{peer[1]}",
                "uid": os.getuid(),
            }
            writer.write((json.dumps(reply) + "\n").encode())
            await writer.drain()
            writer.close()

        return handle

    servers = [await asyncio.start_server(handler(port), "0.0.0.0", port) for port in ports]
    print("ready", flush=True)
    await asyncio.gather(*(server.serve_forever() for server in servers))


def connect(host: str, port: int) -> None:
    with socket.create_connection((host, port), timeout=5) as sock:
        data = b""
        while not data.endswith(b"\n"):
            chunk = sock.recv(4096)
            if not chunk:
                break
            data += chunk
    print(data.decode().strip(), flush=True)


def http_get(url: str, host: str | None) -> None:
    import urllib.error
    import urllib.request

    request = urllib.request.Request(url, headers={"Host": host} if host else {})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            status, body = response.status, response.read().decode()
    except urllib.error.HTTPError as err:
        status, body = err.code, err.read().decode()
    print(json.dumps({"status": status, "body": body}), flush=True)


if __name__ == "__main__":
    if sys.argv[1] == "http":
        http_get(sys.argv[2], sys.argv[3] if len(sys.argv) > 3 else None)
    elif sys.argv[1] == "serve":
        asyncio.run(serve([int(port) for port in sys.argv[2:]]))
    else:
        connect(sys.argv[2], int(sys.argv[3]))
