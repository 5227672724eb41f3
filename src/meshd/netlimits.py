"""Listening sockets that bound what clients can hold: a cap on open connections, and file-descriptor
exhaustion handled without a log storm.

`GatedListener.socket` is handed to asyncio (`loop.create_server(sock=...)`, aiohttp's `SockSite`);
asyncio calls its `accept()`, which is where the limits live:
- over `max_connections` open connections, a new one is accepted and closed at once (`on_refused`);
  a connection counts from accept to its socket's close, so TLS handshakes in progress count too;
- when accept fails for lack of descriptors (EMFILE, ENFILE), a spare descriptor kept for this moment
  is released, the pending connection accepted and closed (the client sees a closed connection instead
  of waiting in the backlog, and the listener does not spin), and the event is counted
  (`on_exhausted`) and logged at most once per `log_every_s` with how many were not logged.

`ConnectionGate` is the cap alone: `adopt` counts under it a connection another process accepted and
handed over (the secure port of `--workers N`, `wiring/secure_placement.py`).
"""

from __future__ import annotations

import errno
import logging
import os
import socket
import time
from collections.abc import Callable

_EXHAUSTED = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}
_REFUSALS_PER_CALL = 64  # then let the event loop run other work; asyncio calls accept() again


class ConnectionGate:
    """The cap on open connections alone: for connections accepted elsewhere and handed over (another
    process accepted them and passed the descriptor, `adopt`), counted as an accepted one would be."""

    def __init__(self, *, name: str, max_connections: int, on_refused: Callable[[], None]) -> None:
        self.name = name
        self.max_connections = max_connections
        self.open = 0
        self._on_refused = on_refused

    def adopt(self, fd: int) -> socket.socket | None:
        """A connected socket for `fd`, counted until it is closed; None (and `fd` closed) when the cap
        is reached."""
        conn = _CountedSocket(-1, -1, -1, fileno=fd, gate=self)  # family and type read from the descriptor
        if self._admit():
            return conn
        conn.close(counted=False)
        return None

    def close(self) -> None:
        """Nothing to release: a gate holds no socket."""

    def _admit(self) -> bool:
        if self.open >= self.max_connections:
            self._on_refused()
            return False
        self.open += 1
        return True

    def _released(self) -> None:
        self.open -= 1


class GatedListener(ConnectionGate):
    def __init__(
        self,
        *,
        name: str,
        host: str,
        port: int,
        max_connections: int,
        on_refused: Callable[[], None],
        on_exhausted: Callable[[], None],
        log: logging.Logger,
        log_every_s: float = 10.0,
        monotonic: Callable[[], float] = time.monotonic,
        reuse_port: bool = False,
    ) -> None:
        super().__init__(name=name, max_connections=max_connections, on_refused=on_refused)
        self._on_exhausted = on_exhausted
        self._log, self._log_every_s, self._monotonic = log, log_every_s, monotonic
        self._last_log: float | None = None
        self._unlogged = 0
        self._spare: int | None = _open_spare()
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.socket = _GatedSocket(family, socket.SOCK_STREAM, gate=self)
        try:
            self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if reuse_port:  # the processes of `--workers N` share the port; the kernel spreads connections
                self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            self.socket.bind((host, port))
            self.socket.listen(1024)
            self.socket.setblocking(False)
        except OSError:
            self.close()
            raise

    @property
    def port(self) -> int:
        return int(self.socket.getsockname()[1])

    def close(self) -> None:
        self.socket.close()
        if self._spare is not None:
            os.close(self._spare)
            self._spare = None

    def _exhausted(self, exc: OSError, listener: socket.socket) -> None:
        """Shed one pending connection with the spare descriptor; count; log rate-limited."""
        self._on_exhausted()
        if self._spare is not None:
            os.close(self._spare)
            self._spare = None
            try:
                fd, _ = listener._accept()  # type: ignore[attr-defined]
                os.close(fd)
            except OSError:
                pass
            self._spare = _open_spare()
        now = self._monotonic()
        if self._last_log is not None and now - self._last_log < self._log_every_s:
            self._unlogged += 1
            return
        self._log.error(
            "event=accept_failed listener=%s error=%s open=%d not_logged_since_last=%d",
            self.name,
            errno.errorcode.get(exc.errno or 0, str(exc.errno)),
            self.open,
            self._unlogged,
        )
        self._last_log, self._unlogged = now, 0


def _open_spare() -> int | None:
    try:
        return os.open(os.devnull, os.O_RDONLY)
    except OSError:
        return None


class _GatedSocket(socket.socket):
    def __init__(self, family: int, kind: int, *, gate: GatedListener) -> None:
        super().__init__(family, kind)
        self._gate = gate

    def accept(self) -> tuple[socket.socket, object]:
        for _ in range(_REFUSALS_PER_CALL):
            try:
                fd, address = self._accept()  # type: ignore[attr-defined]
            except OSError as exc:
                if exc.errno not in _EXHAUSTED:
                    raise
                self._gate._exhausted(exc, self)
                raise BlockingIOError(errno.EAGAIN, "descriptors exhausted: one pending connection shed") from None
            conn = _CountedSocket(self.family, self.type, self.proto, fileno=fd, gate=self._gate)
            if self._gate._admit():
                return conn, address
            conn.close(counted=False)
        raise BlockingIOError(errno.EAGAIN, "connection limit: pending connections refused")


class _CountedSocket(socket.socket):
    """An accepted connection: its close gives its place back."""

    def __init__(self, family: int, kind: int, proto: int, *, fileno: int, gate: ConnectionGate) -> None:
        super().__init__(family, kind, proto, fileno=fileno)
        self._gate: ConnectionGate | None = gate

    def close(self, *, counted: bool = True) -> None:
        gate, self._gate = self._gate, None
        if gate is not None and counted:
            gate._released()
        super().close()
