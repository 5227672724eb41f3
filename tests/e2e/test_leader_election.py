"""Leader election against the fake API server, through meshd's production client
(kubernetes-asyncio from a kubeconfig) and the real Lease wire protocol: one leader among two,
takeover after a release in well under a lease duration, stepping down by the deadline when the
API server fails or is gone, and a 409 on renew."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import pathlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from kubernetes_asyncio import client

from meshd.clock import SystemClock
from meshd.kube.client import new_api_client
from meshd.kube.leader import LeaderElector, LeaseConfig
from meshd.kube.lease_lock import KubeLeaseLock
from tests.e2e.harness import eventually
from tests.kubeapi import FakeApiServer

MakeReplica = Callable[[str, float], Awaitable["Replica"]]

LEASE = ("coordination.k8s.io/v1", "Lease", "istio-system", "meshd-leader")


class Replica:
    """One elector with its own API client, as one meshd process would have."""

    def __init__(self, name: str, api: client.ApiClient, duration_s: float) -> None:
        self.api = api
        self.changes: list[tuple[bool, float]] = []
        self.elector = LeaderElector(
            config=LeaseConfig(name="meshd-leader", namespace="istio-system", identity=name, duration_s=duration_s),
            lock=KubeLeaseLock(api=api, name="meshd-leader", namespace="istio-system"),
            clock=SystemClock(),
            log=logging.getLogger(f"meshd.{name}"),
            on_change=lambda leading: self.changes.append((leading, time.monotonic())),
            request_timeout_s=0.5,
        )
        self.task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self.task = asyncio.create_task(self.elector.run())

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task
            self.task = None


@pytest.fixture
async def replicas(server: FakeApiServer, tmp_path: pathlib.Path) -> AsyncIterator[MakeReplica]:
    made: list[Replica] = []

    async def make(name: str, duration_s: float) -> Replica:
        api = await new_api_client(server.write_kubeconfig(tmp_path / f"{name}.kubeconfig"))
        replica = Replica(name, api, duration_s)
        made.append(replica)
        return replica

    yield make
    for replica in made:
        await replica.stop()
        await replica.api.close()


def holder(server: FakeApiServer) -> str:
    lease = server.get(*LEASE)
    return str(lease["spec"].get("holderIdentity") or "") if lease else ""


async def test_two_replicas_elect_exactly_one_leader(server: FakeApiServer, replicas: MakeReplica) -> None:
    a, b = await replicas("a", 2.0), await replicas("b", 2.0)
    a.start()
    b.start()
    await eventually(lambda: _true(a.elector.is_leader or b.elector.is_leader), what="a leader")
    leader = a if a.elector.is_leader else b
    other = b if leader is a else a
    assert holder(server) == leader.elector.config.identity
    renewals = server.count(verb="update", kind="Lease")
    # over several renewals (every second) the leader keeps it and the other never leads
    broken: list[str] = []

    async def renewed_three_times() -> bool:
        if not leader.elector.is_leader or other.elector.is_leader:
            broken.append(f"leader={leader.elector.is_leader} other={other.elector.is_leader}")
        return server.count(verb="update", kind="Lease") >= renewals + 3

    await eventually(renewed_three_times, timeout=15, what="three renewals")
    assert broken == [], "leadership changed hands while the leader kept renewing"
    assert other.changes == [] and [c[0] for c in leader.changes] == [True]
    lease = server.get(*LEASE)
    assert lease["spec"]["leaseDurationSeconds"] == 2 and lease["spec"]["renewTime"]


async def test_a_stopped_leader_releases_and_the_other_takes_over_fast(
    server: FakeApiServer, replicas: MakeReplica
) -> None:
    a = await replicas("a", 10.0)  # retry every 1 s; a lease that merely expired would take 10 s
    a.start()
    await eventually(lambda: _true(a.elector.is_leader), what="a leads")
    b = await replicas("b", 10.0)
    b.start()
    await eventually(lambda: _true(server.count(verb="get", kind="Lease") >= 3), what="b has read the lease")
    stopped = time.monotonic()
    await a.stop()
    assert holder(server) == ""  # released on clean shutdown
    await eventually(lambda: _true(b.elector.is_leader), timeout=5, what="b takes over")
    took = time.monotonic() - stopped
    assert took < 3.0, took
    assert holder(server) == "b"
    assert server.get(*LEASE)["spec"]["leaseTransitions"] >= 1


@pytest.mark.parametrize("fault", ["500", "paused"])
async def test_a_leader_that_cannot_renew_steps_down_by_its_deadline(
    server: FakeApiServer,
    replicas: MakeReplica,
    fault: str,
) -> None:
    a = await replicas("a", 3.0)  # renew every 1.5 s, deadline 2 s after the last renewal
    a.start()
    await eventually(lambda: _true(a.elector.is_leader), what="a leads")
    renewed = server.count(verb="update", kind="Lease")
    await eventually(lambda: _true(server.count(verb="update", kind="Lease") > renewed), what="a renewal")
    last_renewal = time.monotonic()
    if fault == "500":
        server.fail(status=500, count=1000, kind="Lease")
    else:
        await server.pause()
    await eventually(lambda: _true(not a.elector.is_leader), timeout=5, what="a steps down")
    stepped_down = time.monotonic() - last_renewal
    assert stepped_down <= 2.0 + 0.3, stepped_down  # by its renew deadline
    await eventually(lambda: _true(a.changes and a.changes[-1][0] is False), timeout=2, what="loss callback")
    if fault == "500":
        server.clear_faults()
    else:
        await server.resume()
    await eventually(lambda: _true(a.elector.is_leader), timeout=10, what="a leads again once the API is back")


async def test_a_conflict_on_renew_is_reread_and_leadership_kept(server: FakeApiServer, replicas: MakeReplica) -> None:
    a = await replicas("a", 2.0)
    a.start()
    await eventually(lambda: _true(a.elector.is_leader), what="a leads")
    gets = server.count(verb="get", kind="Lease")
    updates = server.count(verb="update", kind="Lease")
    server.fail(status=409, count=1, verb="update", kind="Lease")
    await eventually(
        lambda: _true(server.count(verb="update", kind="Lease") >= updates + 2), what="renew after the conflict"
    )
    assert server.count(verb="get", kind="Lease") >= gets + 2  # read again after the 409
    assert [c[0] for c in a.changes] == [True] and a.elector.is_leader
    # a real concurrent write (someone else bumps the lease's resourceVersion) is not clobbered
    lease = server.get(*LEASE)
    lease["metadata"]["annotations"] = {"touched": "yes"}
    server.update(lease)
    await eventually(
        lambda: _true(server.count(verb="update", kind="Lease") >= updates + 3), what="renew after the write"
    )
    assert server.get(*LEASE)["metadata"]["annotations"] == {"touched": "yes"}
    assert a.elector.is_leader


async def _true(value: object) -> bool:
    return bool(value)
