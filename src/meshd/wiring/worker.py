"""One worker process of `meshd serve --workers N` (started by `wiring/workers.py`, never by a user).

A worker serves ADS on the plaintext xDS port and, with the CA, on the secure port (`secure_workers.py`),
which every worker binds with SO_REUSEPORT (the kernel spreads new connections over them). It keeps a
replica of the main process's store, fed over the control channel (`wiring/control.py`: the winning
resources that changed, the mesh config, test resources), and runs its own push loop on it: generation
is pure and deterministic, so a worker builds, for its own proxies, exactly what the main process would.
It watches nothing, writes no status and holds no CA key: those stay in the main process, which reviews
the tokens and signs the CSRs its secure port is sent, asks the workers what their streams hold (debug
endpoints, metrics) and is told what their proxies rejected (NACKs, reported on the resources behind
them like the main ones)."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import itertools
import logging
import signal
import socket
from collections.abc import Awaitable, Callable
from typing import Any

from prometheus_client import CollectorRegistry

from meshd.clock import SystemClock
from meshd.gcpolicy import GcPolicy
from meshd.model.store import ConfigStore
from meshd.obs.merge import samples_of
from meshd.obs.metrics import Metrics
from meshd.push.loop import PushLoop
from meshd.settings import Settings
from meshd.wiring.control import Sync, read_frame, write_frame
from meshd.wiring.grpc_servers import ads_servicer, plaintext_server
from meshd.wiring.ops import authorizationz
from meshd.wiring.secure_workers import SecureMaterial, WorkerSecurePort, start_worker_secure_port
from meshd.wiring.workers import debug_resources
from meshd.xds import debug
from meshd.xds.debug_types import config_dump, syncz
from meshd.xds.hub import Hub

log = logging.getLogger("meshd")
# The main process logs each rejected resource once; the same lines from every worker's push loop are dropped.
push_log = logging.getLogger("meshd.worker")
push_log.addFilter(lambda record: not str(record.msg).startswith("event=%s resource="))

ASK_TIMEOUT_S = 20.0
_PR_SET_PDEATHSIG = 1
REPORT_INTERVAL_S = 0.2  # how often a worker looks whether what its proxies rejected changed


def set_parent_death_signal() -> None:
    """A worker gets SIGTERM when its main process dies (Linux; elsewhere it ends when the channel closes)."""
    with contextlib.suppress(Exception):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


def origin_of(key: Any) -> str:
    """The worker store's origin of one replicated key (one key per origin, as the cluster source does)."""
    return f"main:{key}"


class WorkerState:
    """The worker's pipeline: a store replica, its push loop and hub, and what the main process asks."""

    def __init__(self, settings: Settings, *, index: int) -> None:
        self.settings, self.index = settings, index
        self.clock = SystemClock()
        self.metrics = Metrics(CollectorRegistry())
        self.store = ConfigStore()
        self.gc = GcPolicy(every=settings.gc_full_every_pushes, enabled=settings.gc_freeze)
        self.hub = Hub(gc_policy=self.gc)
        self.push = PushLoop(
            store=self.store,
            hub=self.hub,
            settings=settings,
            clock=self.clock,
            metrics=self.metrics,
            log=push_log,
            gc_policy=self.gc,
        )
        self.mesh: Any = None
        self.push.follow_mesh(lambda: self.mesh)
        self._asks: dict[int, asyncio.Future[Any]] = {}
        self._ask_ids = itertools.count(1)
        self.send: Callable[[Any], Awaitable[None]] | None = None
        self.secure: WorkerSecurePort | None = None  # the secure port, when meshd runs its CA

    async def ask_main(self, name: str, arg: Any) -> Any:
        """A question only the main process can answer (it asks every worker)."""
        assert self.send is not None
        ask_id = next(self._ask_ids)
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._asks[ask_id] = future
        try:
            await self.send(("ask", ask_id, name, arg))
            async with asyncio.timeout(ASK_TIMEOUT_S):
                return await future
        finally:
            self._asks.pop(ask_id, None)

    def replied(self, ask_id: int, ok: bool, data: Any) -> None:
        future = self._asks.get(ask_id)
        if future is not None and not future.done():
            future.set_result(data) if ok else future.set_exception(RuntimeError(str(data)))

    def apply(self, sync: Sync) -> None:
        """One step of the main store, applied to the replica (each changed key is its own origin)."""
        if sync.mesh_changed:
            self.mesh = sync.mesh
        for type_url, resources in (sync.extra or {}).items():
            self.push.inject(type_url, resources)
        for key, resource in sync.changes.items():
            if resource is None:
                self.store.remove_origin(origin_of(key))
            else:
                self.store.replace_origin(origin_of(key), {key: resource})
        if sync.mesh_changed:
            self.store.touch()
        if sync.loaded:
            self.store.mark_loaded()

    def answer(self, name: str, arg: Any) -> Any:
        if name == "syncz":  # each row says which worker holds the stream
            return [{**row, "worker": self.index} for row in debug.sync_status(self.hub)]
        if name == "config_dump":
            return debug.config_dump(self.hub, arg)
        if name == "authorizationz":
            return authorizationz(self.hub, arg)
        if name == "metrics":
            return samples_of(self.metrics.registry)
        if name == "debug_syncz":
            return [a.SerializeToString() for a in syncz(self.hub, cluster_id=self.settings.cluster_id)]
        if name == "debug_config_dump":  # only a proxy connected here: the main process answers the rest
            found = self.hub.find(arg) is not None
            return [a.SerializeToString() for a in config_dump(self.hub, [arg])] if found else []
        raise ValueError(f"unknown question {name!r}")


async def run_worker(*, control: str, dispatch_fd: int | None = None) -> None:
    """Connect to the main process, take the settings, serve until the control channel closes.
    `dispatch_fd`: the pair the main process hands secure-port connections over (`secure_handover.py`)."""
    dispatch = socket.socket(fileno=dispatch_fd) if dispatch_fd is not None else None
    reader, writer = await asyncio.open_unix_connection(control, limit=1 << 26)
    start = await read_frame(reader)
    if start[0] != "start":
        raise RuntimeError(f"worker: expected start, got {start[0]!r}")
    settings = Settings.model_validate_json(start[1])
    index: int = start[2]
    material: SecureMaterial | None = start[3]
    for handler in logging.getLogger().handlers:  # its log lines say which worker wrote them
        handler.setFormatter(
            logging.Formatter(f"%(asctime)s level=%(levelname)s logger=%(name)s worker={index} %(message)s")
        )
    state = WorkerState(settings, index=index)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, writer.close)
    ads = ads_servicer(
        settings=settings,
        hub=state.hub,
        metrics=state.metrics,
        clock=state.clock,
        log=log,
        # Istio's debug types asked on this worker's port: the main process answers over every process
        debug_resources=debug_resources(state.ask_main),
    )
    server, port = plaintext_server(
        host=settings.xds_host,
        port=settings.xds_port,
        ads=ads,
        metrics=state.metrics,
        log=log,
        max_connections=settings.xds_max_connections,
        reuse_port=True,
    )
    if port != settings.xds_port:
        raise RuntimeError(f"worker {index}: could not bind xDS port {settings.xds_port} (got {port})")
    thresholds = state.gc.install()
    await server.start()
    if material is not None:
        state.secure = await start_worker_secure_port(
            settings=settings,
            material=material,
            hub=state.hub,
            metrics=state.metrics,
            clock=state.clock,
            log=log,
            ask=state.ask_main,
            debug_resources=debug_resources(state.ask_main),
            dispatch=dispatch,
        )
    secure_port = settings.secure_port if material is not None else None
    log.info(
        "event=worker_started worker=%d xds_port=%d secure_port=%s secure_handed_over=%s",
        index,
        port,
        secure_port,
        material is not None and dispatch is not None,
    )
    send_lock = asyncio.Lock()

    async def send(message: Any) -> None:
        async with send_lock:
            await write_frame(writer, message)

    state.send = send

    try:
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(state.push.run())
            tasks.create_task(_report(state, send))
            await _serve_control(state, reader, send)
            raise _Closed
    except* _Closed:
        pass
    finally:
        state.gc.uninstall(thresholds)
        if state.secure is not None:
            await state.secure.stop()
        await server.stop(1.0)
        writer.close()
        log.info("event=worker_stopped worker=%d", index)


async def _serve_control(state: WorkerState, reader: asyncio.StreamReader, send: Any) -> None:
    """Apply syncs and answer asks until the main process closes the channel (or exits)."""
    while True:
        try:
            message = await read_frame(reader)
        except (asyncio.IncompleteReadError, ConnectionError):
            return
        if message[0] == "sync":
            state.apply(message[1])
        elif message[0] == "reply":
            state.replied(*message[1:])
        elif message[0] == "secure" and state.secure is not None:
            state.secure.renewed(message[1])
        elif message[0] == "ask":
            _, ask_id, name, arg = message
            try:
                reply: Any = ("reply", ask_id, True, state.answer(name, arg))
            except Exception as exc:  # the main process reports it; the worker goes on serving
                reply = ("reply", ask_id, False, f"{type(exc).__name__}: {exc}")
            await send(reply)


async def _report(state: WorkerState, send: Any) -> None:
    """Tell the main process when the worker is ready and whenever what its proxies rejected changes."""
    ready, rejected = False, None
    while True:
        if not ready and state.hub.ready:
            ready = True
            await send(("ready",))
        now = state.hub.rejected()
        if now != rejected:
            rejected = now
            await send(("rejected", now))
        await state.clock.sleep(REPORT_INTERVAL_S)


class _Closed(Exception):
    pass
