"""Issue 20, items 5 and 10 (safe logs): a node id is untrusted input. One longer than 1024 characters or
with control characters is refused (INVALID_ARGUMENT); logged or echoed, node ids and other client values
are quoted, their control characters escaped (a newline never forges a log line) and truncated (a 1 MB
node id does not write 1 MB of log per event). meshd's real gRPC servers in-process, a raw ADS client."""

from __future__ import annotations

import asyncio
import logging
import pathlib
from collections.abc import AsyncIterator

import grpc
import pytest
from envoy.config.core.v3 import base_pb2
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2

from meshd.generate.generator import ConfigGenerator
from meshd.model.world import build_world
from meshd.xds.hub import Hub
from meshd.xds.resource import CLUSTER, SECRET
from tests.ca_fixture import CaUnderTest, start_ca
from tests.e2e.harness import eventually

pytestmark = pytest.mark.e2e

FORGED = "\nlevel=ERROR logger=meshd event=forged"
HUGE = "x" * 1_000_000


@pytest.fixture
async def ca(tmp_path: pathlib.Path) -> AsyncIterator[CaUnderTest]:
    hub = Hub()
    generator = ConfigGenerator(build_world([], domain_suffix="cluster.local"))
    generator.precompute()
    hub.publish(generator, changed_at=0.0)
    server = await start_ca(tmp_path, hub=hub)
    try:
        yield server
    finally:
        await server.stop()


async def _stream(ca: CaUnderTest, node_id: str) -> grpc.StatusCode | None:
    """Open a plaintext ADS stream (SDS then CDS), read one response; the status if it was refused."""
    async with grpc.aio.insecure_channel(
        f"127.0.0.1:{ca.plaintext_port}", options=[("grpc.max_send_message_length", 8 * 1024 * 1024)]
    ) as channel:
        call = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel).StreamAggregatedResources()
        node = base_pb2.Node(id=node_id)
        try:
            await call.write(discovery_pb2.DiscoveryRequest(node=node, type_url=SECRET, resource_names=[FORGED]))
            await call.write(discovery_pb2.DiscoveryRequest(node=node, type_url=CLUSTER))
            await asyncio.wait_for(call.read(), 10)
        except grpc.aio.AioRpcError as exc:
            assert len(exc.details() or "") < 2000  # the echo to the client is truncated too
            return exc.code()
        finally:
            call.cancel()
    return None


def _assert_safe(records: list[logging.LogRecord]) -> None:
    assert records
    for record in records:
        text = record.getMessage()
        assert "\n" not in text and "\r" not in text, text[:300]
        assert len(text) < 1000, len(text)


async def test_node_ids_are_quoted_escaped_and_truncated_in_logs(
    ca: CaUnderTest, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="meshd.test.ca")
    accepted = "sidecar~10.0.0.1~p.default~default.svc.cluster.local" + "x" * 900  # the domain is free text
    assert await _stream(ca, accepted) is None
    for refused in (
        f"sidecar~10.0.0.1~p.default~default.svc.cluster.local{FORGED}",
        f"sidecar~10.0.0.1~p.default~default.svc.cluster.local{HUGE}",
        f"sidecar~10.0.0.1~p{FORGED}{HUGE}~x~y",
    ):
        assert await _stream(ca, refused) == grpc.StatusCode.INVALID_ARGUMENT

    async def disconnected() -> bool:
        return any("event=disconnected" in r.getMessage() for r in caplog.records)

    await eventually(disconnected, timeout=10, interval=0.01, what="the accepted stream's disconnection")
    records = [r for r in caplog.records if r.name == "meshd.test.ca"]
    _assert_safe(records)
    events = {r.getMessage().split()[0] for r in records}
    assert {"event=connected", "event=sds_refused", "event=rejected_stream", "event=disconnected"} <= events
