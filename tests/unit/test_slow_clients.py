"""A slow or hostile client never delays another (issue 20, defect 4), on the ADS servicer with fake gRPC
contexts: 150 streams whose writes never complete (clients that never read) do not delay a healthy
stream's response, before or after a push; the hub never waits on a stream; a stream's inbox is bounded;
streams beyond the limits are refused with RESOURCE_EXHAUSTED. No sleeps: polls with a deadline."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable, Hashable, Sequence
from typing import Any

import grpc
import pytest
from envoy.config.core.v3 import base_pb2
from envoy.service.discovery.v3 import discovery_pb2
from prometheus_client import CollectorRegistry

from meshd.clock import SystemClock
from meshd.obs.metrics import Metrics
from meshd.translate.proxy import Proxy
from meshd.xds.hub import Hub
from meshd.xds.inbox import Inbox
from meshd.xds.limits import StreamLimits, peer_host
from meshd.xds.resource import CLUSTER, Snapshot, make_raw_resource
from meshd.xds.server import AdsServicer

log = logging.getLogger("meshd.test.slow_clients")


class Aborted(Exception):
    pass


class FakeGeneration:
    def __init__(self, tag: str) -> None:
        self.revision = 1
        res = make_raw_resource(f"cluster-{tag}", CLUSTER, tag.encode())
        self._snapshot = Snapshot(resources={CLUSTER: {res.name: res}})

    def scope_key(self, proxy: Proxy) -> Hashable:
        return "all"

    def snapshot(self, proxy: Proxy) -> Snapshot:
        return self._snapshot

    def still_current_many(self, key: Hashable, held: Sequence[tuple[Proxy, Snapshot]]) -> list[bool]:
        return [False] * len(held)


class FakeContext:
    """A client that reads (`stuck=False`) or never does: its writes wait forever (flow control)."""

    def __init__(self, *, stuck: bool, peer: str = "ipv4:10.0.0.1:4000") -> None:
        self.stuck, self._peer = stuck, peer
        self.written: list[bytes] = []
        self.aborted: tuple[Any, str] | None = None
        self._never = asyncio.Event()

    def peer(self) -> str:
        return self._peer

    async def write(self, message: bytes) -> None:
        if self.stuck:
            await self._never.wait()
        self.written.append(message)

    async def abort(self, code: Any, details: str) -> None:
        self.aborted = (code, details)
        raise Aborted(details)


class Requests:
    """The client's half of the stream: requests put here; never ends until closed."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[Any] = asyncio.Queue()

    def send(self, pod: str) -> None:
        node = base_pb2.Node(id=f"sidecar~10.0.0.1~{pod}.ns~ns.svc.cluster.local")
        self.queue.put_nowait(discovery_pb2.DiscoveryRequest(node=node, type_url=CLUSTER))

    def __aiter__(self) -> AsyncIterator[Any]:
        return self._iter()

    async def _iter(self) -> AsyncIterator[Any]:
        while True:
            yield await self.queue.get()


async def until(condition: Callable[[], bool], *, timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0)  # yield to the other tasks (no wall-clock wait)


def _servicer(hub: Hub, *, limits: StreamLimits | None = None) -> AdsServicer:
    return AdsServicer(
        hub=hub,
        metrics=Metrics(CollectorRegistry()),
        clock=SystemClock(),
        log=log,
        send_timeout_s=3600.0,  # a stuck stream is never timed out within this test
        limits=limits,
    )


async def test_never_reading_streams_do_not_delay_a_healthy_stream() -> None:
    hub = Hub()
    hub.publish(FakeGeneration("v1"), changed_at=0.0)
    ads = _servicer(hub)
    tasks = []
    stuck = [FakeContext(stuck=True) for _ in range(150)]  # more than the 100 shared push slots of old
    for i, ctx in enumerate(stuck):
        requests = Requests()
        requests.send(f"evil-{i}")
        tasks.append(asyncio.create_task(ads.StreamAggregatedResources(requests, ctx)))
    await until(lambda: len(hub.connections) == 150)
    healthy, requests = FakeContext(stuck=False), Requests()
    requests.send("good")
    tasks.append(asyncio.create_task(ads.StreamAggregatedResources(requests, healthy)))
    try:
        await until(lambda: len(healthy.written) == 1)  # its first response, at once
        woken = hub.publish(FakeGeneration("v2"), changed_at=1.0)  # returns without waiting on any stream
        assert woken == 151
        await until(lambda: len(healthy.written) == 2)  # and the push after a change
        assert all(not ctx.written for ctx in stuck)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def test_inbox_is_bounded_and_pushes_coalesce() -> None:
    inbox = Inbox(capacity=2)
    await inbox.put("a")
    await inbox.put("b")
    third = asyncio.create_task(inbox.put("c"))
    await until(lambda: len(inbox) == 2)
    assert not third.done()  # the reader waits (and, through HTTP/2 flow control, the client)
    for _ in range(1000):
        inbox.push()  # never waits, never grows
    assert await inbox.get() == "a"
    await until(third.done)
    assert [await inbox.get(), await inbox.get()] == ["b", "c"]
    from meshd.xds.inbox import PUSH

    assert await inbox.get() is PUSH
    assert len(inbox) == 0 and not inbox.push_pending


@pytest.mark.parametrize(
    ("peers", "refused_peer"),
    [
        (["ipv4:10.0.0.1:1", "ipv4:10.0.0.1:2"], "ipv4:10.0.0.1:3"),  # per peer
        (["ipv4:10.0.0.1:1", "ipv4:10.0.0.2:1", "ipv4:10.0.0.3:1"], "ipv4:10.0.0.4:1"),  # in all
    ],
)
async def test_streams_beyond_the_limits_are_refused(peers: list[str], refused_peer: str) -> None:
    hub = Hub()
    hub.publish(FakeGeneration("v1"), changed_at=0.0)
    ads = _servicer(hub, limits=StreamLimits(max_streams=3, max_per_peer=2))
    tasks = []
    for i, peer in enumerate(peers):
        requests = Requests()
        requests.send(f"p{i}")
        tasks.append(asyncio.create_task(ads.StreamAggregatedResources(requests, FakeContext(stuck=False, peer=peer))))
    await until(lambda: len(hub.connections) == len(peers))
    refused = FakeContext(stuck=False, peer=refused_peer)
    requests = Requests()
    requests.send("late")
    with pytest.raises(Aborted):
        await ads.StreamAggregatedResources(requests, refused)
    assert refused.aborted is not None and refused.aborted[0] == grpc.StatusCode.RESOURCE_EXHAUSTED
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    other = FakeContext(stuck=False, peer=refused_peer)  # the counts are released when streams end
    requests = Requests()
    requests.send("later")
    task = asyncio.create_task(ads.StreamAggregatedResources(requests, other))
    await until(lambda: len(other.written) == 1)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


@pytest.mark.parametrize(
    ("peer", "host"),
    [("ipv4:10.0.0.1:4000", "10.0.0.1"), ("ipv6:[::1]:4000", "::1"), ("unix:/tmp/s", "unix:/tmp/s"), ("?", "?")],
)
def test_peer_host(peer: str, host: str) -> None:
    assert peer_host(peer) == host


async def test_a_storm_of_refused_streams_logs_a_few_lines(caplog: pytest.LogCaptureFixture) -> None:
    hub = Hub()
    hub.publish(FakeGeneration("v1"), changed_at=0.0)
    ads = _servicer(hub, limits=StreamLimits(max_streams=1, max_per_peer=None))
    requests = Requests()
    requests.send("first")
    first = asyncio.create_task(ads.StreamAggregatedResources(requests, FakeContext(stuck=False)))
    await until(lambda: len(hub.connections) == 1)
    caplog.set_level(logging.INFO, logger=log.name)
    for _ in range(200):
        with pytest.raises(Aborted):
            await ads.StreamAggregatedResources(Requests(), FakeContext(stuck=False))
    lines = [m for m in caplog.messages if "event=stream_refused" in m]
    assert 1 <= len(lines) <= 5, len(lines)
    first.cancel()
    await asyncio.gather(first, return_exceptions=True)
