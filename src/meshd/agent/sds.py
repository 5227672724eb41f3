"""SDS server (envoy.service.secret.v3.SecretDiscoveryService) for the local Envoy, over a Unix socket.

Both flavours: StreamSecrets (state of the world) and DeltaSecrets. A stream is answered when it asks
for new names and whenever the certificate changes (rotation pushes over the open stream). A NACK
(`error_detail`) is logged and counted, and nothing is resent until the secrets change again; a request
carrying a nonce other than the last one sent is stale and ignored. Names the agent does not hold are
left out of the response: Envoy keeps waiting for them (it never gets an empty certificate).
"""

from __future__ import annotations

import asyncio
import logging
import os
import pathlib
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import grpc
from envoy.extensions.transport_sockets.tls.v3 import secret_pb2
from envoy.service.discovery.v3 import discovery_pb2
from envoy.service.secret.v3 import sds_pb2_grpc

from meshd.agent.secrets import SECRET_TYPE, secret_version
from meshd.translate.proto import pack


class SecretState:
    """The secrets currently served, with a generation number that grows on every change: the
    workload's (`default`, `ROOTCA`) and the certificate files Envoy asked for (`file-cert:...`,
    `file-root:...`, agent/file_secrets.py)."""

    def __init__(self) -> None:
        self._secrets: dict[str, secret_pb2.Secret] = {}
        self._files: dict[str, secret_pb2.Secret] = {}
        self._generation = 0
        self._changed = asyncio.Condition()
        self.wanted: set[str] = set()  # file secrets Envoy asked for
        self.wanted_changed = asyncio.Event()

    @property
    def generation(self) -> int:
        return self._generation

    def get(self, name: str) -> secret_pb2.Secret | None:
        found = self._secrets.get(name)
        return found if found is not None else self._files.get(name)

    def want(self, names: set[str]) -> None:
        """Names a stream asked for: the file ones are read and served (agent/file_secrets.py)."""
        new = {n for n in names if n.startswith(("file-cert:", "file-root:"))} - self.wanted
        if new:
            self.wanted |= new
            self.wanted_changed.set()

    async def replace(self, secrets: dict[str, secret_pb2.Secret]) -> None:
        async with self._changed:
            self._secrets = dict(secrets)
            self._generation += 1
            self._changed.notify_all()

    async def set_files(self, secrets: dict[str, secret_pb2.Secret]) -> None:
        async with self._changed:
            self._files = dict(secrets)
            self._generation += 1
            self._changed.notify_all()

    async def wait_beyond(self, generation: int) -> int:
        """Wait until the generation is past `generation`; returns the new one."""
        async with self._changed:
            await self._changed.wait_for(lambda: self._generation > generation)
            return self._generation


@dataclass
class SdsStats:
    """What the status endpoint and tests look at."""

    streams: int = 0
    pushes: int = 0
    acks: int = 0
    nacks: int = 0
    last_nack: str = ""
    acked_generation: dict[str, int] = field(default_factory=dict)  # resource -> generation last ACKed


_MAX_SOCKET_PATH = 107
_CHANGED = object()
_END = object()


async def _merge(requests: AsyncIterator[Any], state: SecretState, start: int) -> AsyncIterator[Any]:
    """One stream of events: each request as it arrives, `_CHANGED` when the secrets change."""
    queue: asyncio.Queue[Any] = asyncio.Queue()

    async def read() -> None:
        try:
            async for request in requests:
                await queue.put(request)
        finally:
            await queue.put(_END)

    async def watch() -> None:
        generation = start
        while True:
            generation = await state.wait_beyond(generation)
            await queue.put(_CHANGED)

    tasks = [asyncio.create_task(read()), asyncio.create_task(watch())]
    try:
        while (item := await queue.get()) is not _END:
            yield item
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


class SdsServicer(sds_pb2_grpc.SecretDiscoveryServiceServicer):  # type: ignore[misc]
    def __init__(self, *, state: SecretState, log: logging.Logger, on_ack: Callable[[], None] | None = None) -> None:
        self._state = state
        self._log = log
        self._on_ack = on_ack
        self.stats = SdsStats()

    def _record_ack(self, names: set[str], generation: int) -> None:
        self.stats.acks += 1
        for name in names:
            self.stats.acked_generation[name] = generation
        if self._on_ack is not None:
            self._on_ack()

    def _record_nack(self, names: set[str], message: str) -> None:
        self.stats.nacks += 1
        self.stats.last_nack = message
        self._log.warning("event=sds_nack resources=%s error=%r", ",".join(sorted(names)), message)

    async def StreamSecrets(
        self,
        request_iterator: AsyncIterator[discovery_pb2.DiscoveryRequest],
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> AsyncIterator[discovery_pb2.DiscoveryResponse]:
        self.stats.streams += 1
        names: set[str] = set()
        nonce = ""
        sent_generation = -1
        sent_names: set[str] = set()
        sent_content: tuple[str, ...] = ()  # content versions of what was last sent
        async for event in _merge(request_iterator, self._state, self._state.generation):
            if event is _CHANGED:
                if not names or sent_generation == self._state.generation:
                    continue
            else:
                request: discovery_pb2.DiscoveryRequest = event
                if request.type_url and request.type_url != SECRET_TYPE:
                    await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"SDS serves only {SECRET_TYPE}")
                if request.response_nonce and request.response_nonce != nonce:
                    continue  # stale: answers an older response
                requested = set(request.resource_names)
                if request.response_nonce:
                    if request.HasField("error_detail"):
                        self._record_nack(sent_names, request.error_detail.message)
                    else:
                        self._record_ack(sent_names, sent_generation)
                    if requested == names:
                        continue
                names = requested
                self._state.want(names)
                if not names:
                    continue
            sent_generation = self._state.generation
            held = [s for n in sorted(names) if (s := self._state.get(n)) is not None]
            if not held:
                continue
            content = tuple(secret_version(s) for s in held)
            if event is _CHANGED and content == sent_content:
                continue  # e.g. ROOTCA when only the leaf rotated
            sent_content = content
            nonce = uuid.uuid4().hex
            sent_names = {s.name for s in held}
            self.stats.pushes += 1
            self._log.info("event=sds_push resources=%s generation=%d", ",".join(sorted(sent_names)), sent_generation)
            yield discovery_pb2.DiscoveryResponse(
                version_info=str(sent_generation),
                resources=[pack(s) for s in held],
                type_url=SECRET_TYPE,
                nonce=nonce,
            )

    async def DeltaSecrets(
        self,
        request_iterator: AsyncIterator[discovery_pb2.DeltaDiscoveryRequest],
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> AsyncIterator[discovery_pb2.DeltaDiscoveryResponse]:
        self.stats.streams += 1
        subscribed: set[str] = set()
        known: dict[str, str] = {}  # resource -> version Envoy holds (or was last sent)
        pending: dict[str, tuple[set[str], int]] = {}  # nonce -> (names sent, generation)
        async for event in _merge(request_iterator, self._state, self._state.generation):
            if event is not _CHANGED:
                request: discovery_pb2.DeltaDiscoveryRequest = event
                if request.type_url and request.type_url != SECRET_TYPE:
                    await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"SDS serves only {SECRET_TYPE}")
                if request.response_nonce:
                    answered = pending.pop(request.response_nonce, None)
                    if answered is not None:
                        if request.HasField("error_detail"):
                            self._record_nack(answered[0], request.error_detail.message)
                        else:
                            self._record_ack(*answered)
                if not request.response_nonce:
                    known.update(request.initial_resource_versions)
                subscribed |= set(request.resource_names_subscribe)
                subscribed -= set(request.resource_names_unsubscribe)
                self._state.want(subscribed)
                for name in request.resource_names_unsubscribe:
                    known.pop(name, None)
            generation = self._state.generation
            resources = []
            for name in sorted(subscribed):
                secret = self._state.get(name)
                if secret is None:
                    continue
                version = secret_version(secret)
                if known.get(name) == version:
                    continue
                known[name] = version
                resources.append(discovery_pb2.Resource(name=name, version=version, resource=pack(secret)))
            if not resources:
                continue
            nonce = uuid.uuid4().hex
            pending[nonce] = ({r.name for r in resources}, generation)
            self.stats.pushes += 1
            self._log.info(
                "event=sds_push resources=%s generation=%d delta=1", ",".join(r.name for r in resources), generation
            )
            yield discovery_pb2.DeltaDiscoveryResponse(
                system_version_info=str(generation), resources=resources, type_url=SECRET_TYPE, nonce=nonce
            )


def prepare_socket_path(path: pathlib.Path) -> None:
    """Create the socket's directory and remove a stale socket; ValueError if the path is too long."""
    if len(os.fsencode(str(path))) > _MAX_SOCKET_PATH:
        raise ValueError(f"SDS socket path {path} is longer than a Unix socket allows ({_MAX_SOCKET_PATH} bytes)")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)


async def start_sds_server(*, servicer: SdsServicer, socket_path: pathlib.Path) -> grpc.aio.Server:
    """Listen on the Unix socket `socket_path` (a stale socket file is replaced)."""
    prepare_socket_path(socket_path)
    path = socket_path
    server = grpc.aio.server()
    sds_pb2_grpc.add_SecretDiscoveryServiceServicer_to_server(servicer, server)
    server.add_insecure_port(f"unix:{path}")
    await server.start()
    return server
