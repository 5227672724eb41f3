"""`meshd serve --workers N` with the CA and `--worker-placement namespace` (the default): the main process
accepts the secure port (15012) and hands each connection to a worker.

- The main process holds the Pods, so `placement.py` can say which worker serves a caller: the one that
  serves its namespace.
- The socket is passed over a SOCK_SEQPACKET pair per worker, one descriptor per message (SCM_RIGHTS), and
  the main process closes its copy.
- The worker's TLS front adopts it (`TlsFront.adopt`): the same connection cap, handshake, limits and
  identity checks as a connection it accepted itself. Nothing of the connection is read before the
  hand-over.
- A worker that cannot take it (exited, restarting, its pair full) is skipped for the next in the order.
  When none can, the connection is closed and counted as refused, and the client retries as for any
  refused connection.
- The addresses are read from the store again when it has changed, at most once per `BOOK_EVERY_S`:
  under pod churn, a storm of connections costs one pass over the Pods per interval, not per connection.
  A pod seen for the first time is placed by namespace within that interval (until then, at random).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections.abc import Awaitable, Callable, Sequence
from itertools import chain
from typing import Protocol

from meshd.model.store import ConfigStore
from meshd.netlimits import GatedListener
from meshd.wiring.placement import AddressBook, Placement, workload_addresses

BOOK_EVERY_S = 1.0


class Outlet(Protocol):
    """A worker, as the hand-over sees it."""

    @property
    def index(self) -> int: ...

    @property
    def ready(self) -> bool: ...

    @property
    def dispatch(self) -> socket.socket | None: ...


def dispatch_pair() -> tuple[socket.socket, socket.socket]:
    """(the main process's end, non-blocking; the worker's end, to pass to it)."""
    main_end, worker_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    main_end.setblocking(False)
    return main_end, worker_end


class SecureHandOver:
    def __init__(
        self,
        *,
        listener: GatedListener,
        workers: Callable[[], Sequence[Outlet]],
        store: ConfigStore,
        count: int,
        on_dropped: Callable[[], None],
        now: Callable[[], float],
        sleep: Callable[[float], Awaitable[None]],
        log: logging.Logger,
    ) -> None:
        self._listener, self._workers, self._store, self._count = listener, workers, store, count
        self._on_dropped, self._now, self._sleep, self._log = on_dropped, now, sleep, log
        self._placement = Placement()
        self._book = AddressBook(namespace_of={}, spread=frozenset())
        self._book_revision = -1
        self._book_at: float | None = None
        self._book_loaded = False

    async def run(self) -> None:
        """Accept and hand over, until cancelled (the listener is closed by its owner)."""
        loop = asyncio.get_running_loop()
        while True:
            try:
                conn, address = await loop.sock_accept(self._listener.socket)
            except (ConnectionAbortedError, InterruptedError):
                continue  # gone before it was accepted
            except OSError as exc:  # (descriptor exhaustion is shed by the listener itself)
                self._log.error("event=accept_failed listener=secure error=%s", exc)
                await self._sleep(0.1)
                continue
            try:
                if not self.hand_over(conn, str(address[0])):
                    self._on_dropped()
            finally:
                conn.close()  # the worker holds its own copy

    def book(self) -> AddressBook:
        """The workloads' addresses, read again from the store when it changed (at most once per
        BOOK_EVERY_S)."""
        now = self._now()
        # (until the store's first load is in, every change may bring the pods: no waiting)
        due = self._book_at is None or not self._book_loaded or now - self._book_at >= BOOK_EVERY_S
        if self._store.revision != self._book_revision and due:
            resources = chain(self._store.of_kind("Pod"), self._store.of_kind("WorkloadEntry"))
            self._book = AddressBook.of(workload_addresses(resources), self._count)
            self._book_revision, self._book_at, self._book_loaded = self._store.revision, now, self._store.loaded
        return self._book

    def hand_over(self, conn: socket.socket, address: str) -> bool:
        """Pass `conn` to the first worker in its order that takes it; False when none did."""
        workers = [w for w in self._workers() if w.dispatch is not None]
        ready = [w for w in workers if w.ready] or workers  # while none has loaded, any that runs
        by_index = {w.index: w for w in ready}
        for index in self._placement.order(self.book(), address, sorted(by_index)):
            dispatch = by_index[index].dispatch
            if dispatch is None:
                continue
            try:
                socket.send_fds(dispatch, [b"c"], [conn.fileno()])
            except OSError:  # its pair is full (it does not read) or gone (it exited): the next one
                continue
            return True
        return False


def receive_connections(sock: socket.socket, adopt: Callable[[int], None], log: logging.Logger) -> Callable[[], None]:
    """A worker's side: every descriptor the main process passes on `sock` goes to `adopt`. Returns the
    function that stops it."""
    loop = asyncio.get_running_loop()
    sock.setblocking(False)

    def stop() -> None:
        if sock.fileno() != -1:
            loop.remove_reader(sock.fileno())
            sock.close()

    def readable() -> None:
        while True:
            try:
                message, fds, _, _ = socket.recv_fds(sock, 16, 8)
            except BlockingIOError:
                return
            except OSError as exc:
                log.error("event=handover_broken error=%s", exc)
                stop()
                return
            if not message and not fds:  # the main process is gone: so is this worker, soon
                stop()
                return
            for fd in fds:
                try:
                    adopt(fd)
                except OSError as exc:  # not a socket, or closed: nothing to serve
                    log.error("event=handover_refused error=%s", exc)
                    with contextlib.suppress(OSError):
                        os.close(fd)

    loop.add_reader(sock.fileno(), readable)
    return stop
