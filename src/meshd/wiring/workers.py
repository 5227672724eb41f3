"""`meshd serve --workers N`: the main process's side of its worker processes (`wiring/worker.py`).

The main process keeps every duty that needs one source of truth: the sources and the store, its own
generation (status, /debug/config_errors, the leader duties), the CA, the webhooks and the ops port.
The xDS ports, plaintext and secure (`secure_workers.py`), are served by N workers. Each binds the
plaintext one with SO_REUSEPORT; the main process reserves each port first (a bound socket that never
listens), so that port 0 names one port for all of them. The secure one the main process accepts itself
and hands each connection to the worker of the caller's namespace (`secure_handover.py`; with
`--worker-placement kernel` the workers bind it too). Each worker gets the main store's winning
resources as they change and generates for its own proxies (see worker.py for why that is the same
config).

A worker that exits is started again (its proxies lose their streams and reconnect, to any worker);
until it has published its first generation, /ready says not ready. The debug endpoints and /metrics
ask every worker (`ask`) and show the union; what a worker's proxies rejected is reported to the main
process and shows in /debug/config_errors and in status like a NACK to the main process's own streams."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import socket
import sys
import tempfile
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from google.protobuf import any_pb2

from meshd.api.mesh import MeshConfig
from meshd.api.meta import Resource, ResourceKey
from meshd.clock import Clock
from meshd.model.store import ConfigStore
from meshd.netlimits import GatedListener
from meshd.obs.merge import Family
from meshd.settings import Settings
from meshd.translate.proxy import Proxy
from meshd.wiring.control import Sync, frame, read_frame
from meshd.wiring.secure_handover import SecureHandOver, dispatch_pair
from meshd.wiring.secure_workers import SecureMaterial
from meshd.xds.debug_stream import Resources
from meshd.xds.debug_types import CONFIG_DUMP, SYNCZ, config_dump, syncz
from meshd.xds.hub import Hub
from meshd.xds.isolation import Rejected
from meshd.xds.resource import XdsResource

ASK_TIMEOUT_S = 10.0
RESTART_BACKOFF_S = (0.1, 0.5, 1.0, 2.0, 5.0)


def reserve_port(host: str, port: int) -> socket.socket:
    """A socket bound to (host, port) with SO_REUSEPORT that never listens: the port the workers bind."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host if host not in ("", "0.0.0.0") or family == socket.AF_INET6 else "0.0.0.0", port))
    return sock


@dataclass
class _Worker:
    index: int
    process: asyncio.subprocess.Process | None = None
    writer: asyncio.StreamWriter | None = None
    ready: bool = False
    rejected: list[tuple[Proxy, Rejected]] = field(default_factory=list)
    mesh: Any = None
    extra: Mapping[str, Sequence[XdsResource]] = field(default_factory=dict)
    restarts: int = 0
    loaded: bool = False  # whether it was told the main store's first load is in
    dispatch: socket.socket | None = None  # where the main process hands it secure-port connections


class WorkerPool:
    def __init__(
        self,
        *,
        settings: Settings,
        store: ConfigStore,
        mesh: Callable[[], MeshConfig | None],
        extra: Callable[[], Mapping[str, Sequence[XdsResource]]],
        clock: Clock,
        log: logging.Logger,
        log_level: str = "INFO",
    ) -> None:
        self._settings, self._store, self._mesh, self._extra = settings, store, mesh, extra
        self._clock, self._log, self._log_level = clock, log, log_level
        self._workers = [_Worker(index=i) for i in range(settings.workers)]
        self._changed = asyncio.Event()
        self._asks: dict[int, asyncio.Future[Any]] = {}
        self._ask_ids = itertools.count(1)
        self._dir = tempfile.mkdtemp(prefix="meshd-workers-")  # mode 0700: only meshd's user connects
        self._reservation = reserve_port(settings.xds_host, settings.xds_port)
        self.xds_port: int = self._reservation.getsockname()[1]
        # with the CA, the workers serve the secure port too (`secure_workers.py`), once given its material
        self._secure_reservation = (
            reserve_port(settings.secure_host, settings.secure_port) if settings.ca_enabled else None
        )
        self.secure_port: int | None = (
            self._secure_reservation.getsockname()[1] if self._secure_reservation is not None else None
        )
        # with `--worker-placement namespace`, the main process accepts the secure port and hands each
        # connection to a worker (`secure_handover.py`); else every worker binds it
        self.hands_over = settings.ca_enabled and settings.worker_placement == "namespace"
        self._handing: tuple[asyncio.Task[None], GatedListener] | None = None
        self._secure: SecureMaterial | None = None
        self._secure_given = asyncio.Event()  # a worker is started only once it can serve both ports
        if not settings.ca_enabled:
            self._secure_given.set()
        store.subscribe(self._changed.set)
        self._store_changes = store.feed()  # the keys whose winner changed, one drain for all workers
        # questions a worker asks the main process (Istio's debug types over every process's streams)
        self.answer: Callable[[str, Any], Awaitable[Any]] | None = None
        self._answering: set[asyncio.Task[None]] = set()

    @property
    def ready(self) -> bool:
        return all(w.ready for w in self._workers)

    def touch(self) -> None:
        """Something the workers read besides the store changed (test resources): sync now."""
        self._changed.set()

    def rejected(self) -> list[tuple[Proxy, Rejected]]:
        return [r for w in self._workers for r in w.rejected]

    def serve_secure(self, material: SecureMaterial) -> None:
        """What the workers serve the secure port with: given before they start, and again after each
        renewal of meshd's serving certificate (a running worker loads it for its new handshakes)."""
        self._secure = material
        self._secure_given.set()
        for worker in self._workers:
            if worker.writer is not None:
                worker.writer.write(frame(("secure", material)))

    def hand_over_from(self, listener: GatedListener, *, on_dropped: Callable[[], None]) -> None:
        """Accept the secure port on `listener` (bound beside the reservation) and hand each connection to
        the worker of the caller's namespace (`secure_handover.py`)."""
        handover = SecureHandOver(
            listener=listener,
            workers=lambda: self._workers,
            store=self._store,
            count=len(self._workers),
            on_dropped=on_dropped,
            now=self._clock.now,
            sleep=self._clock.sleep,
            log=self._log,
        )
        self._handing = (asyncio.create_task(handover.run()), listener)

    async def run(self) -> None:
        try:
            async with asyncio.TaskGroup() as tasks:
                for worker in self._workers:
                    tasks.create_task(self._keep_running(worker))
                tasks.create_task(self._feed())
        finally:
            self.close()

    def close(self) -> None:
        """Release the port reservation and the sockets' directory (again: nothing happens)."""
        self._reservation.close()
        if self._secure_reservation is not None:
            self._secure_reservation.close()
        if self._handing is not None:
            task, listener = self._handing
            task.cancel()
            listener.close()
        with contextlib.suppress(OSError):
            for name in os.listdir(self._dir):
                os.unlink(os.path.join(self._dir, name))
            os.rmdir(self._dir)

    async def _keep_running(self, worker: _Worker) -> None:
        """Start the worker; whenever it exits, start it again (backing off while it keeps failing)."""
        while True:
            started = self._clock.now()
            try:
                await self._run_once(worker)
            finally:
                worker.ready, worker.writer, worker.rejected = False, None, []
                if worker.dispatch is not None:
                    worker.dispatch.close()
                    worker.dispatch = None
                if worker.process is not None and worker.process.returncode is None:
                    with contextlib.suppress(ProcessLookupError):
                        worker.process.kill()
                    await worker.process.wait()
            worker.restarts = 0 if self._clock.now() - started > 30 else worker.restarts + 1
            delay = RESTART_BACKOFF_S[min(worker.restarts, len(RESTART_BACKOFF_S) - 1)]
            self._log.error(
                "event=worker_exited worker=%d code=%s restart_in_s=%s",
                worker.index,
                worker.process.returncode if worker.process is not None else None,
                delay,
            )
            await self._clock.sleep(delay)

    async def _run_once(self, worker: _Worker) -> None:
        path = os.path.join(self._dir, f"worker-{worker.index}.sock")
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        connected: asyncio.Future[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = (
            asyncio.get_running_loop().create_future()
        )

        async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            if not connected.done():
                connected.set_result((reader, writer))
            else:
                writer.close()

        server = await asyncio.start_unix_server(accept, path=path, limit=1 << 26)
        pair = dispatch_pair() if self.hands_over else None
        if pair is not None:  # (closed when this run ends: _keep_running)
            worker.dispatch = pair[0]  # connections handed over before it serves wait in the pair
        try:
            handed = ("--dispatch-fd", str(pair[1].fileno())) if pair is not None else ()
            worker.process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "meshd",
                "--log-level",
                self._log_level,
                "worker",
                "--control",
                path,
                *handed,
                pass_fds=(pair[1].fileno(),) if pair is not None else (),
            )
            self._log.info("event=worker_starting worker=%d pid=%d", worker.index, worker.process.pid)
            exited: asyncio.Future[Any] = asyncio.ensure_future(worker.process.wait())
            done, _ = await asyncio.wait([connected, exited], return_when=asyncio.FIRST_COMPLETED)
            if connected not in done:
                return
            reader, writer = connected.result()
        finally:
            server.close()
            if pair is not None:
                pair[1].close()  # the worker holds its end
        await self._secure_given.wait()  # (the process imports meanwhile)
        ports = {"xds_port": self.xds_port} | ({"secure_port": self.secure_port} if self.secure_port else {})
        settings = self._settings.model_copy(update=ports)
        writer.write(frame(("start", settings.model_dump_json(), worker.index, self._secure)))
        worker.mesh, worker.extra, worker.loaded = None, {}, False
        worker.writer = writer
        self._sync(worker, dict(self._store.winners()))  # everything the store holds now
        try:
            await self._listen(worker, reader)
        finally:
            writer.close()
            exited.cancel()

    async def _listen(self, worker: _Worker, reader: asyncio.StreamReader) -> None:
        while True:
            try:
                message = await read_frame(reader)
            except (asyncio.IncompleteReadError, ConnectionError):
                return
            if message[0] == "ready":
                worker.ready = True
                self._log.info("event=worker_ready worker=%d", worker.index)
            elif message[0] == "rejected":
                worker.rejected = message[1]
            elif message[0] == "ask":
                task = asyncio.create_task(self._answer_worker(worker, *message[1:]))
                self._answering.add(task)
                task.add_done_callback(self._answering.discard)
            elif message[0] == "reply":
                _, ask_id, ok, data = message
                future = self._asks.pop(ask_id, None)
                if future is not None and not future.done():
                    if ok:
                        future.set_result(data)
                    else:
                        future.set_exception(RuntimeError(f"worker {worker.index}: {data}"))

    async def _answer_worker(self, worker: _Worker, ask_id: int, name: str, arg: Any) -> None:
        try:
            if self.answer is None:
                raise RuntimeError("the main process answers no questions")
            reply: Any = ("reply", ask_id, True, await self.answer(name, arg))
        except Exception as exc:  # the worker's caller gets the error
            reply = ("reply", ask_id, False, f"{type(exc).__name__}: {exc}")
        if worker.writer is not None:
            worker.writer.write(frame(reply))

    async def _feed(self) -> None:
        """After every store change (batched by one turn of the loop), send each worker what changed.
        Nothing is sent before the store's first load is complete (workers generate nothing before)."""
        while True:
            await self._changed.wait()
            self._changed.clear()
            await asyncio.sleep(0)
            if not self._store.loaded:
                continue
            changes = self._store_changes()
            live = [w for w in self._workers if w.writer is not None]
            for worker in live:  # every worker gets this step before any is waited on
                self._sync(worker, changes)
            for worker in live:
                if worker.writer is not None:
                    with contextlib.suppress(ConnectionError):
                        await worker.writer.drain()

    def _sync(self, worker: _Worker, changes: Mapping[ResourceKey, Resource | None]) -> None:
        assert worker.writer is not None
        mesh, extra = self._mesh(), self._extra()
        mesh_changed = mesh != worker.mesh
        extra_changed = extra != worker.extra
        if not changes and not mesh_changed and not extra_changed and worker.loaded == self._store.loaded:
            return
        worker.mesh, worker.extra, worker.loaded = mesh, dict(extra), self._store.loaded
        sync = Sync(
            changes=changes,
            mesh=mesh,
            mesh_changed=mesh_changed,
            loaded=self._store.loaded,
            extra=dict(extra) if extra_changed else None,
        )
        worker.writer.write(frame(("sync", sync)))

    async def ask(self, name: str, arg: Any = None) -> list[Any]:
        """Every connected worker's answer (a worker that cannot answer in time is left out, logged)."""
        asked = []
        for worker in self._workers:
            if worker.writer is None:
                continue
            ask_id = next(self._ask_ids)
            future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
            self._asks[ask_id] = future
            worker.writer.write(frame(("ask", ask_id, name, arg)))
            asked.append((worker, ask_id, future))
        answers = []
        for worker, ask_id, future in asked:
            try:
                async with asyncio.timeout(ASK_TIMEOUT_S):
                    answers.append(await future)
            except (TimeoutError, RuntimeError) as exc:
                self._log.error("event=worker_ask_failed worker=%d ask=%s error=%r", worker.index, name, str(exc))
            finally:
                self._asks.pop(ask_id, None)
        return answers

    async def metrics(self) -> list[Sequence[Family]]:
        return await self.ask("metrics")


def debug_answers(pool: WorkerPool, *, hub: Hub, cluster_id: str) -> Callable[[str, Any], Awaitable[Any]]:
    """How the main process answers a worker asked Istio's debug types (`meshd proxy-status`, istioctl):
    syncz over the main process's streams and every worker's; a proxy's config dump from the process that
    holds its stream, else (a node id not connected) as the main process generates it."""

    async def answer(name: str, arg: Any) -> list[bytes]:
        if name != "debug":
            raise ValueError(f"unknown question {name!r}")
        type_url, names = arg
        if type_url == SYNCZ:
            own = [a.SerializeToString() for a in syncz(hub, cluster_id=cluster_id)]
            return [*own, *(b for answer in await pool.ask("debug_syncz") for b in answer)]
        if type_url == CONFIG_DUMP:
            out: list[bytes] = []
            for proxy_id in names:
                if hub.find(proxy_id) is None:
                    found = [b for answer in await pool.ask("debug_config_dump", proxy_id) for b in answer]
                    if found:
                        out.append(found[0])
                        continue
                out.extend(a.SerializeToString() for a in config_dump(hub, [proxy_id]))
            return out
        return []

    return answer


def debug_resources(answer: Callable[[str, Any], Awaitable[Any]]) -> Resources:
    """Istio's debug types answered by `answer` (serialised resources), as a debug stream wants them."""

    async def resources(type_url: str, names: list[str]) -> list[any_pb2.Any]:
        return [any_pb2.Any.FromString(b) for b in await answer("debug", (type_url, names))]

    return resources
