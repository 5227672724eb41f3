"""Helpers of the gateway tests: backends that say who they are (TCP, TLS), TLS clients that report
the certificate the gateway presented, and the YAML a user writes for them."""

from __future__ import annotations

import asyncio
import json
import pathlib
import ssl
from typing import Any

from cryptography import x509

from tests.certs import Authority, Pem


class TcpEcho:
    """A TCP server answering every connection with its name and what it read (one line)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.connections = 0
        self._server: asyncio.Server | None = None

    async def start(self, host: str, port: int, *, tls: ssl.SSLContext | None = None) -> None:
        self._server = await asyncio.start_server(self._serve, host, port, ssl=tls)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            line = await asyncio.wait_for(reader.readline(), 10)
            writer.write(f"{self.name} {line.decode().strip()}\n".encode())
            await writer.drain()
        except (OSError, TimeoutError, ssl.SSLError):
            pass
        finally:
            writer.close()

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()


def server_context(pem: Pem, work: pathlib.Path, name: str) -> ssl.SSLContext:
    cert, key = pem.write(work, name)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    return context


def client_context(ca: Authority, *, client: Pem | None = None, work: pathlib.Path | None = None) -> ssl.SSLContext:
    context = ssl.create_default_context(cadata=ca.pem.decode())
    if client is not None and work is not None:
        cert, key = client.write(work, "client")
        context.load_cert_chain(cert, key)
    return context


async def tcp_line(
    host: str, port: int, *, text: str = "hi", tls: ssl.SSLContext | None = None, sni: str | None = None
) -> str:
    """Send one line, read one line back (raises on a closed or refused connection)."""
    reader, writer = await asyncio.wait_for(
        asyncio.open_connection(host, port, ssl=tls, server_hostname=sni if tls is not None else None), 10
    )
    try:
        writer.write(f"{text}\n".encode())
        await writer.drain()
        line = await asyncio.wait_for(reader.readline(), 10)
    finally:
        writer.close()
    if not line:
        raise ConnectionResetError("closed without an answer")
    return line.decode().strip()


async def https_get(
    host: str, port: int, *, sni: str, path: str, tls: ssl.SSLContext
) -> tuple[int, dict[str, Any] | str, x509.Certificate]:
    """An HTTPS/1.1 GET with SNI and Host `sni`: (status, JSON body or text, the server's certificate)."""
    reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port, ssl=tls, server_hostname=sni), 10)
    try:
        try:
            peer = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
        except ValueError:  # TLS 1.3: the server refused us after our side of the handshake completed
            raise ConnectionResetError("the server ended the handshake") from None
        writer.write(f"GET {path} HTTP/1.1\r\nHost: {sni}\r\nConnection: close\r\n\r\n".encode())
        await writer.drain()
        raw = await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()
    if not raw:
        raise ConnectionResetError("closed without an answer")
    head, _, body = raw.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    if b"transfer-encoding: chunked" in head.lower():
        body = _unchunk(body)
    try:
        parsed: dict[str, Any] | str = json.loads(body)
    except ValueError:
        parsed = body.decode(errors="replace")
    return status, parsed, x509.load_der_x509_certificate(peer)


def _unchunk(data: bytes) -> bytes:
    out = b""
    while data:
        size_line, _, rest = data.partition(b"\r\n")
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            break
        out += rest[:size]
        data = rest[size + 2 :]
    return out


def common_name(cert: x509.Certificate) -> str:
    return str(cert.subject.get_attributes_for_oid(x509.oid.NameOID.COMMON_NAME)[0].value)


def secret_yaml(name: str, namespace: str, data: dict[str, bytes], *, kind: str = "Opaque") -> str:
    lines = "".join(f"  {key}: {json.dumps(value.decode())}\n" for key, value in data.items())
    head = f"apiVersion: v1\nkind: Secret\nmetadata: {{name: {name}, namespace: {namespace}}}\ntype: {kind}\n"
    return f"{head}stringData:\n{lines}"


def service_yaml(
    name: str, *, ips: list[str], port: int, target: int, port_name: str = "http", labels: str = ""
) -> str:
    """A Service and its EndpointSlice in `default` (backends without sidecars)."""
    endpoints = "\n".join(f"- addresses: [{ip}]" for ip in ips)
    return f"""\
apiVersion: v1
kind: Service
metadata: {{name: {name}, namespace: default}}
spec:
  ports: [{{name: {port_name}, port: {port}, targetPort: {target}}}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: {name}-1, namespace: default, labels: {{kubernetes.io/service-name: {name}}}}}
addressType: IPv4
ports: [{{name: {port_name}, port: {target}}}]
endpoints:
{endpoints}
"""
