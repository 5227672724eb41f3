"""TLS termination for the secure port, with an *optional* client certificate.

grpcio's Python server can either ignore client certificates or require them, not accept them when
given (Go's VerifyClientCertIfGiven, what istiod does on 15012): a node agent's first CSR has only a
token, a proxy's xDS stream has a certificate. So the secure port is this front: OpenSSL (the `ssl`
module) terminates TLS, asks for a client certificate, verifies it against meshd's root when one is
sent (a bad one fails the handshake), and pipes the HTTP/2 bytes to the gRPC server on a loopback port.

Connection hygiene (issue 20): the listening socket is a `GatedListener` (a cap on open connections,
handshakes included; descriptor exhaustion shed without a log storm); the handshake must finish within
`handshake_timeout_s`; a connection that has not sent a request (an HTTP/2 HEADERS frame,
`h2_watch.py`) within `first_request_timeout_s` of its handshake is closed, and the loopback connection
to the gRPC server is opened only once the client has sent its first bytes. Each event is counted.

Each piped connection is registered under the address gRPC sees as its peer (`ipv4:127.0.0.1:<port>`)
before a byte is forwarded, with the verified certificate or None; `peer_cert` answers from that
table. A connection to the loopback port that did not come through the front is unknown and refused.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import ssl
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from meshd.ca.auth import unauthenticated
from meshd.ca.h2_watch import RequestWatch
from meshd.netlimits import ConnectionGate, GatedListener

_CHUNK = 64 * 1024


def load_chain_pem(context: ssl.SSLContext, *, chain_pem: bytes, key_pem: bytes) -> None:
    """Load a certificate chain and key given as PEM (ssl reads them from files only: a private
    temporary directory, the key file created 0600)."""
    with tempfile.TemporaryDirectory(prefix="meshd-tls-") as tmp:
        cert_path, key_path = os.path.join(tmp, "cert.pem"), os.path.join(tmp, "key.pem")
        for path, data in ((cert_path, chain_pem), (key_path, key_pem)):
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(data)
        context.load_cert_chain(cert_path, key_path)


def server_context(*, key_pem: bytes, chain_pem: bytes, client_roots_pem: str) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    load_chain_pem(context, chain_pem=chain_pem, key_pem=key_pem)
    context.load_verify_locations(cadata=client_roots_pem)
    context.verify_mode = ssl.CERT_OPTIONAL
    context.set_alpn_protocols(["h2"])
    return context


@dataclass(frozen=True)
class FrontLimits:
    handshake_timeout_s: float = 10.0
    first_request_timeout_s: float = 30.0
    on_handshake_failed: Callable[[], None] = lambda: None
    on_idle_closed: Callable[[], None] = lambda: None


class TlsFront:
    def __init__(
        self,
        *,
        context: ssl.SSLContext,
        listener: ConnectionGate,  # a GatedListener it accepts on, or a gate for connections handed over
        backend_port: int,
        log: logging.Logger,
        limits: FrontLimits = FrontLimits(),
    ) -> None:
        self._context = context
        self._listener = listener
        self._backend_port = backend_port
        self._limits = limits
        self._log = log
        self._peers: dict[str, bytes | None] = {}
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> int | None:
        """Accept on the listener; its port. None for a gate: its connections come through `adopt`."""
        if not isinstance(self._listener, GatedListener):
            return None
        self._server = await asyncio.start_server(self._accept, sock=self._listener.socket)
        return self._listener.port

    def adopt(self, fd: int) -> None:
        """Serve a connection another process accepted and passed here (its descriptor), as if accepted
        here: under the same cap, the same handshake and the same limits."""
        sock = self._listener.adopt(fd)
        if sock is None:  # over the cap: closed and counted
            return
        task = asyncio.create_task(self._adopted(sock))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _adopted(self, sock: socket.socket) -> None:
        # as asyncio.start_server serves an accepted socket: the server side of the streams (start_tls)
        try:
            await asyncio.get_running_loop().connect_accepted_socket(
                lambda: asyncio.StreamReaderProtocol(asyncio.StreamReader(), self._accept), sock
            )
        except OSError:
            sock.close()

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for writer in list(self._writers):  # end every piped connection: its task then finishes by itself
            writer.transport.abort()
        if self._tasks:
            _, pending = await asyncio.wait(set(self._tasks), timeout=2.0)
            for task in pending:
                task.cancel()
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2.0)
        self._listener.close()

    def peer_cert(self, context: Any) -> bytes | None:
        """The verified client certificate (PEM) of the caller's connection, or None when it sent none.
        Raises AuthError if the connection did not come through the TLS front."""
        peer = str(context.peer())
        if peer not in self._peers:
            raise unauthenticated("connection did not come through the TLS port")
        return self._peers[peer]

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self._writers.add(writer)
        try:
            await self._serve(reader, writer)
        except (OSError, ssl.SSLError, asyncio.IncompleteReadError):
            pass
        finally:
            self._writers.discard(writer)
            await self._close(writer)
            self._tasks.discard(task)

    @staticmethod
    async def _close(writer: asyncio.StreamWriter) -> None:
        if writer.transport is None:  # lost during the TLS handshake: nothing left to close
            return
        writer.close()
        try:
            await asyncio.wait_for(writer.wait_closed(), 1.0)
        except (Exception, asyncio.CancelledError):
            writer.transport.abort()  # TLS close_notify not answered, or we are stopping: drop the socket
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await asyncio.sleep(0)  # let connection_lost run and close the socket

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        limits = self._limits
        try:
            await writer.start_tls(self._context, ssl_handshake_timeout=limits.handshake_timeout_s)
        except (OSError, ssl.SSLError, TimeoutError, AttributeError):  # AttributeError: CPython 3.11 start_tls
            # on a connection lost mid-handshake (its protocol has no transport left)
            limits.on_handshake_failed()
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + limits.first_request_timeout_s
        try:
            async with asyncio.timeout(limits.first_request_timeout_s):
                first = await reader.read(_CHUNK)
        except TimeoutError:
            limits.on_idle_closed()
            return
        if first:
            await self._pipe(reader, writer, first=first, deadline=deadline)

    async def _pipe(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, first: bytes, deadline: float
    ) -> None:
        ssl_object = writer.get_extra_info("ssl_object")
        der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
        pem = ssl.DER_cert_to_PEM_cert(der).encode() if der else None
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self._backend_port)
        key = f"ipv4:127.0.0.1:{up_writer.get_extra_info('sockname')[1]}"
        self._peers[key] = pem
        self._writers.add(up_writer)
        watch, seen = RequestWatch(), asyncio.Event()
        if watch.feed(first):
            seen.set()
        up_writer.write(first)
        try:
            async with asyncio.TaskGroup() as tasks:
                upstream = tasks.create_task(self._copy(reader, up_writer, watch=(watch, seen)))
                tasks.create_task(self._copy(up_reader, writer))
                if not seen.is_set():
                    tasks.create_task(self._close_without_request(seen, deadline, (writer, up_writer), upstream))
        except* (OSError, ssl.SSLError):
            pass
        finally:
            self._peers.pop(key, None)
            self._writers.discard(up_writer)
            up_writer.transport.abort()
            with contextlib.suppress(Exception):
                await up_writer.wait_closed()  # until connection_lost: the socket is closed

    async def _close_without_request(
        self,
        seen: asyncio.Event,
        deadline: float,
        writers: tuple[asyncio.StreamWriter, asyncio.StreamWriter],
        upstream: asyncio.Task[None],
    ) -> None:
        """Close the connection (both sides) if the client has sent no request by `deadline`."""
        waiter = asyncio.ensure_future(seen.wait())
        try:
            timeout = max(0.0, deadline - asyncio.get_running_loop().time())
            await asyncio.wait({upstream, waiter}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiter.cancel()
        if not seen.is_set() and not upstream.done():
            self._limits.on_idle_closed()
            for writer in writers:
                writer.transport.abort()

    @staticmethod
    async def _copy(
        src: asyncio.StreamReader,
        dst: asyncio.StreamWriter,
        *,
        watch: tuple[RequestWatch, asyncio.Event] | None = None,
    ) -> None:
        try:
            while data := await src.read(_CHUNK):
                if watch is not None and not watch[1].is_set() and watch[0].feed(data):
                    watch[1].set()
                dst.write(data)
                await dst.drain()
        finally:
            with contextlib.suppress(OSError, RuntimeError):
                if dst.can_write_eof():
                    dst.write_eof()
                else:
                    dst.close()
