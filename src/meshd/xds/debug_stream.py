"""An ADS stream asking Istio's debug types (`istio.io/debug/...`, debug_types.py): answered on its own,
never registered as a proxy connection. Every request is answered except an ACK of our own response.

Who may ask: on the plaintext port anyone (as on istiod's 15010, which already serves any config to any
node id); on the secure port only a caller verified to be in meshd's own namespace (istiod lets its
system namespace debug). Debug types are asked over SotW; a delta stream asking one is refused."""

from __future__ import annotations

import itertools
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from envoy.service.discovery.v3 import discovery_pb2
from google.protobuf import any_pb2

from meshd.obs.logsafe import quoted
from meshd.xds.debug_types import CONFIG_DUMP, SUPPORTED, SYNCZ, ControlPlane, config_dump, is_debug_type, syncz
from meshd.xds.hub import Hub
from meshd.xds.inbox import CLOSED, PUSH, Inbox
from meshd.xds.request_bytes import message_of

# The caller's verified namespace on the secure port, or a refusal (code, message).
VerifyCaller = Callable[[Any], Awaitable["str | tuple[grpc.StatusCode, str]"]]
# (type URL, resource names) -> the answer's resources, when another process knows them (a worker of
# `meshd serve --workers N` asks the main process, which asks every worker)
Resources = Callable[[str, list[str]], Awaitable[list[any_pb2.Any]]]


class DebugTypes:
    def __init__(
        self,
        *,
        hub: Hub,
        control_plane: ControlPlane,
        log: logging.Logger,
        system_namespace: str,
        verify: VerifyCaller | None = None,
        resources: Resources | None = None,
    ) -> None:
        self._hub = hub
        self._resources = resources
        self._control_plane = control_plane
        self._log = log
        self._system_namespace = system_namespace
        # None: the plaintext port, where debug types are open as on istiod's 15010.
        self._verify = verify
        self._nonces = (f"debug-{i}" for i in itertools.count(1))

    async def serve(self, first: Any, inbox: Inbox, context: Any, *, delta: bool) -> None:
        if delta:
            await context.abort(grpc.StatusCode.UNIMPLEMENTED, "Istio debug types are served on SotW ADS streams")
        if self._verify is not None:
            verdict = await self._verify(context)
            if isinstance(verdict, tuple):
                await context.abort(*verdict)
            elif verdict != self._system_namespace:
                await context.abort(
                    grpc.StatusCode.PERMISSION_DENIED,
                    f"debug types need an identity in namespace {self._system_namespace!r}, not {verdict!r}",
                )
        sent: set[str] = set()
        item = first
        while True:
            if not is_debug_type(getattr(item, "type_url", "")):
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "a debug stream asks only istio.io/debug/ types")
            if item.response_nonce not in sent:  # an ACK of our response needs no answer
                nonce = next(self._nonces)
                sent.add(nonce)
                await context.write((await self._answer(item, nonce)).SerializeToString())
            item = message_of(await inbox.get())
            while item is PUSH:
                item = message_of(await inbox.get())
            if item is CLOSED:
                return

    async def _answer(self, request: Any, nonce: str) -> discovery_pb2.DiscoveryResponse:
        type_url = request.type_url
        if type_url in SUPPORTED and self._resources is not None:
            resources = await self._resources(type_url, list(request.resource_names))
        elif type_url == SYNCZ:
            resources = syncz(self._hub, cluster_id=self._control_plane.cluster_id)
        elif type_url == CONFIG_DUMP:
            resources = config_dump(self._hub, request.resource_names)
        else:
            self._log.info("event=debug_type_unknown type=%s supported=%s", quoted(type_url, 200), ",".join(SUPPORTED))
            resources = []
        response = discovery_pb2.DiscoveryResponse(
            type_url=type_url, version_info=nonce, nonce=nonce, resources=resources
        )
        response.control_plane.identifier = self._control_plane.identifier()
        return response
