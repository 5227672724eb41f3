"""The agent's SDS server spoken to with a real gRPC client over its Unix socket: answers only what is
asked, ACK/NACK and stale nonces, pushes on rotation over the open stream (SotW and delta)."""

from __future__ import annotations

import asyncio
import logging
import pathlib
import shutil
import tempfile
from collections.abc import AsyncIterator

import grpc
import pytest
from envoy.extensions.transport_sockets.tls.v3 import secret_pb2
from envoy.service.discovery.v3 import discovery_pb2
from envoy.service.secret.v3 import sds_pb2_grpc
from google.rpc import status_pb2

from meshd.agent.sds import SdsServicer, SecretState, start_sds_server
from meshd.agent.secrets import SECRET_TYPE, build_secrets
from tests.workload_pki import WorkloadCa

CA = WorkloadCa()
SPIFFE = "spiffe://cluster.local/ns/default/sa/web"


class Client:
    """One SDS stream; responses are drained into a queue by a reader task."""

    def __init__(self, stub: sds_pb2_grpc.SecretDiscoveryServiceStub, *, delta: bool) -> None:
        self.requests: asyncio.Queue[object] = asyncio.Queue()
        self.responses: asyncio.Queue[object] = asyncio.Queue()

        async def outgoing() -> AsyncIterator[object]:
            while True:
                yield await self.requests.get()

        method = stub.DeltaSecrets if delta else stub.StreamSecrets
        self.call = method(outgoing())
        self.reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        async for response in self.call:
            await self.responses.put(response)

    async def send(self, request: object) -> None:
        await self.requests.put(request)

    async def recv(self) -> object:
        return await asyncio.wait_for(self.responses.get(), 5)

    async def nothing_within(self, seconds: float) -> bool:
        try:
            await asyncio.wait_for(self.responses.get(), seconds)
        except TimeoutError:
            return True
        return False

    async def close(self) -> None:
        self.call.cancel()
        self.reader.cancel()
        await asyncio.gather(self.reader, return_exceptions=True)


@pytest.fixture
async def sds() -> AsyncIterator[tuple[SecretState, SdsServicer, sds_pb2_grpc.SecretDiscoveryServiceStub]]:
    directory = pathlib.Path(tempfile.mkdtemp(prefix="sds-", dir="/tmp"))
    path = directory / "socket"
    state = SecretState()
    servicer = SdsServicer(state=state, log=logging.getLogger("test.sds"))
    server = await start_sds_server(servicer=servicer, socket_path=path)
    channel = grpc.aio.insecure_channel(f"unix:{path}")
    try:
        yield state, servicer, sds_pb2_grpc.SecretDiscoveryServiceStub(channel)
    finally:
        await channel.close()
        await server.stop(grace=None)
        shutil.rmtree(directory)


def _names(response: discovery_pb2.DiscoveryResponse) -> list[str]:
    out = []
    for packed in response.resources:
        secret = secret_pb2.Secret()
        packed.Unpack(secret)
        out.append(secret.name)
    return out


async def test_sotw_ack_nack_stale_and_rotation(
    sds: tuple[SecretState, SdsServicer, sds_pb2_grpc.SecretDiscoveryServiceStub],
) -> None:
    state, servicer, stub = sds
    client = Client(stub, delta=False)
    # Asked before any certificate exists: nothing is sent (Envoy waits, never gets an empty secret).
    await client.send(discovery_pb2.DiscoveryRequest(type_url=SECRET_TYPE, resource_names=["default"]))
    assert await client.nothing_within(0.2)
    await state.replace(build_secrets(CA.issue(spiffe=SPIFFE, ttl_s=60)))
    first = await client.recv()
    assert _names(first) == ["default"]  # only what was asked, not ROOTCA
    assert first.type_url == SECRET_TYPE
    await client.send(
        discovery_pb2.DiscoveryRequest(
            type_url=SECRET_TYPE,
            resource_names=["default"],
            version_info=first.version_info,
            response_nonce=first.nonce,
        )
    )
    assert await client.nothing_within(0.3)  # an ACK is not answered
    assert servicer.stats.acks == 1

    # A request naming an old nonce is stale: ignored, even with other names.
    await client.send(
        discovery_pb2.DiscoveryRequest(type_url=SECRET_TYPE, resource_names=["default", "ROOTCA"], response_nonce="old")
    )
    assert await client.nothing_within(0.3)

    # Rotation: pushed on the open stream, new version.
    await state.replace(build_secrets(CA.issue(spiffe=SPIFFE, ttl_s=60)))
    second = await client.recv()
    assert _names(second) == ["default"] and second.version_info != first.version_info
    # NACK: recorded, not resent.
    await client.send(
        discovery_pb2.DiscoveryRequest(
            type_url=SECRET_TYPE,
            resource_names=["default"],
            version_info=first.version_info,
            response_nonce=second.nonce,
            error_detail=status_pb2.Status(code=3, message="bad key"),
        )
    )
    assert await client.nothing_within(0.3)
    assert servicer.stats.nacks == 1 and servicer.stats.last_nack == "bad key"
    # New names on the current nonce: answered with both.
    await client.send(
        discovery_pb2.DiscoveryRequest(
            type_url=SECRET_TYPE, resource_names=["default", "ROOTCA"], response_nonce=second.nonce
        )
    )
    third = await client.recv()
    assert sorted(_names(third)) == ["ROOTCA", "default"]
    await client.close()

    # A stream holding only ROOTCA is not pushed to when only the leaf rotates.
    roots = Client(stub, delta=False)
    await roots.send(discovery_pb2.DiscoveryRequest(type_url=SECRET_TYPE, resource_names=["ROOTCA"]))
    only = await roots.recv()
    assert _names(only) == ["ROOTCA"]
    current = build_secrets(CA.issue(spiffe=SPIFFE, ttl_s=60))
    await state.replace(current)
    assert await roots.nothing_within(0.3)
    await roots.close()


async def test_delta_subscribe_versions_and_rotation(
    sds: tuple[SecretState, SdsServicer, sds_pb2_grpc.SecretDiscoveryServiceStub],
) -> None:
    state, servicer, stub = sds
    await state.replace(build_secrets(CA.issue(spiffe=SPIFFE, ttl_s=60)))
    client = Client(stub, delta=True)
    await client.send(discovery_pb2.DeltaDiscoveryRequest(type_url=SECRET_TYPE, resource_names_subscribe=["ROOTCA"]))
    first = await client.recv()
    assert [r.name for r in first.resources] == ["ROOTCA"]
    root_version = first.resources[0].version
    await client.send(
        discovery_pb2.DeltaDiscoveryRequest(
            type_url=SECRET_TYPE, response_nonce=first.nonce, resource_names_subscribe=["default"]
        )
    )
    second = await client.recv()
    assert [r.name for r in second.resources] == ["default"]  # ROOTCA unchanged: not resent
    assert servicer.stats.acks == 1
    await state.replace(build_secrets(CA.issue(spiffe=SPIFFE, ttl_s=60)))
    third = await client.recv()
    # Same root, new leaf: only `default` is sent again.
    assert [r.name for r in third.resources] == ["default"]
    assert third.resources[0].version != second.resources[0].version
    # A reconnecting Envoy that already holds the root (initial_resource_versions) gets only the leaf.
    again = Client(stub, delta=True)
    await again.send(
        discovery_pb2.DeltaDiscoveryRequest(
            type_url=SECRET_TYPE,
            resource_names_subscribe=["ROOTCA", "default"],
            initial_resource_versions={"ROOTCA": root_version},
        )
    )
    fresh = await again.recv()
    assert [r.name for r in fresh.resources] == ["default"]
    await client.close()
    await again.close()
