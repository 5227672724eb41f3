"""The status writer against the fake API server, through kubernetes-asyncio: an invalid
VirtualService gets Istio-style `status.validationMessages` naming the field, a fixed one is
cleared, nothing is rewritten when nothing changed, a concurrent change is never clobbered (the
resourceVersion precondition), and a replica that does not lead never writes."""

from __future__ import annotations

import asyncio
import copy
import logging
from typing import Any

from kubernetes_asyncio import client

from meshd.api.meta import InvalidResource, Resource, ResourceKey
from meshd.api.parse import parse_resource
from meshd.clock import SystemClock
from meshd.kube.leader import LeaderElector, LeaseConfig
from meshd.kube.lease_lock import KubeLeaseLock
from meshd.kube.status import KubeStatusApi, StatusWriter
from meshd.model.store import ConfigStore
from tests.e2e.harness import eventually
from tests.kubeapi import FakeApiServer

V1 = "networking.istio.io/v1"


def virtual_service(name: str, weights: tuple[int, ...]) -> dict[str, Any]:
    return {
        "apiVersion": V1,
        "kind": "VirtualService",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {
            "hosts": [name],
            "http": [
                {
                    "route": [
                        {"destination": {"host": name, "subset": f"v{i}"}, "weight": w} for i, w in enumerate(weights)
                    ]
                }
            ],
        },
    }


def sync_store(store: ConfigStore, server: FakeApiServer) -> None:
    """What the Kubernetes source does: the cluster's objects into the store, invalid ones as errors."""
    resources: dict[ResourceKey, Resource] = {}
    errors: list[InvalidResource] = []
    for obj in server.list(V1, "VirtualService"):
        try:
            resource = parse_resource(obj, origin="cluster")
            resources[resource.key] = resource
        except InvalidResource as err:
            errors.append(err)
    store.replace_origin("cluster", resources, errors)


def status_writes(server: FakeApiServer) -> int:
    return sum(1 for r in server.requests if r.subresource == "status" and r.verb in ("update", "patch"))


class Leadership:
    def __init__(self, leading: bool) -> None:
        self.leading = leading


def make_writer(api: Any, store: ConfigStore, leadership: Leadership, **options: Any) -> StatusWriter:
    return StatusWriter(
        api=api,
        store=store,
        errors=store.errors,
        is_leader=lambda: leadership.leading,
        clock=SystemClock(),
        log=logging.getLogger("test"),
        interval_s=0.05,
        **options,
    )


def web_and_ok(server: FakeApiServer) -> ConfigStore:
    """An invalid VirtualService `web` and a valid `ok` in the cluster, and the store as the source fills it."""
    store = ConfigStore()
    server.create(virtual_service("web", (0, 0)))
    server.create(virtual_service("ok", (50, 50)))
    sync_store(store, server)
    return store


async def test_invalid_resource_gets_validation_messages_and_fixed_one_is_cleared(
    server: FakeApiServer, api: client.ApiClient
) -> None:
    store = web_and_ok(server)
    writer = make_writer(KubeStatusApi(api), store, Leadership(True))
    assert await writer.sync_once() == 2
    bad = server.get(V1, "VirtualService", "default", "web")["status"]
    [message] = bad["validationMessages"]
    assert message["type"] == {"code": "IST0106", "name": "SchemaValidationError"}
    assert message["level"] == "ERROR"
    # the field and the text meshd logs for this resource
    [error] = store.errors()
    assert message["description"] == f"{error.field}: {error.message}"
    assert message["description"] == "spec.http[0].route: destination weights add up to 0"
    [condition] = bad["conditions"]
    assert (condition["type"], condition["status"], condition["observedGeneration"]) == ("Reconciled", "False", 1)
    assert bad["observedGeneration"] == 1
    good = server.get(V1, "VirtualService", "default", "ok")["status"]
    assert "validationMessages" not in good and good["conditions"][0]["status"] == "True"

    # nothing changed: no more writes and no more reads, however many rounds (the resourceVersion the
    # informer now brings is the one our own write produced)
    writes = status_writes(server)
    sync_store(store, server)
    for _ in range(5):
        await writer.sync_once()
    assert status_writes(server) == writes
    assert server.count(verb="get", kind="VirtualService") == 2  # the first visits only
    other = server.get(V1, "VirtualService", "default", "ok")
    other["metadata"]["labels"] = {"team": "a"}  # someone else's change: a new RV, read once, not rewritten
    server.update(other)
    sync_store(store, server)
    await writer.sync_once()
    assert server.count(verb="get", kind="VirtualService") == 3 and status_writes(server) == writes

    # fixed: the message goes away, the generation moves on
    fixed = server.get(V1, "VirtualService", "default", "web")
    fixed["spec"] = virtual_service("web", (50, 50))["spec"]
    server.update(fixed)
    sync_store(store, server)
    await writer.sync_once()
    cleared = server.get(V1, "VirtualService", "default", "web")["status"]
    assert "validationMessages" not in cleared
    assert cleared["conditions"][0]["status"] == "True" and cleared["observedGeneration"] == 2
    assert status_writes(server) == writes + 1


class RacingApi(KubeStatusApi):
    """Someone else changes the object between the writer's read and its write."""

    def __init__(self, api: client.ApiClient, server: FakeApiServer) -> None:
        super().__init__(api)
        self.server = server
        self.races = 1

    async def get(self, group: str, version: str, plural: str, namespace: str, name: str) -> dict[str, Any] | None:
        obj = await super().get(group, version, plural, namespace, name)
        if self.races:
            self.races -= 1
            theirs = self.server.get(V1, "VirtualService", namespace, name)
            theirs["status"] = {"conditions": [{"type": "Distributed", "status": "True"}]}
            self.server.update(theirs, subresource="status")
        return obj


async def test_a_concurrent_change_is_not_clobbered_and_the_write_is_retried(
    server: FakeApiServer, api: client.ApiClient
) -> None:
    store = ConfigStore()
    server.create(virtual_service("web", (0, 0)))
    sync_store(store, server)
    writer = make_writer(RacingApi(api, server), store, Leadership(True))
    await writer.sync_once()
    assert writer.conflicts == 1 and writer.writes == 0
    # the other writer's status is intact: the stale write was refused (409), not applied
    assert server.get(V1, "VirtualService", "default", "web")["status"] == {
        "conditions": [{"type": "Distributed", "status": "True"}]
    }
    assert any(r.status == 409 and r.subresource == "status" for r in server.requests)

    async def written() -> bool:
        await writer.sync_once()
        return writer.writes == 1

    await eventually(written, timeout=5, what="the write retried after a re-read")
    status = server.get(V1, "VirtualService", "default", "web")["status"]
    # re-read, merged: the other controller's condition is kept next to meshd's
    assert [c["type"] for c in status["conditions"]] == ["Distributed", "Reconciled"]
    assert status["validationMessages"][0]["description"].startswith("spec.http[0].route:")


async def test_a_replica_that_does_not_lead_never_writes(server: FakeApiServer, api: client.ApiClient) -> None:
    store = ConfigStore()
    server.create(virtual_service("web", (0, 0)))
    sync_store(store, server)
    leadership = Leadership(False)
    writer = make_writer(KubeStatusApi(api), store, leadership)
    for _ in range(5):
        assert await writer.sync_once() == 0
    assert status_writes(server) == 0 and server.count(verb="get", kind="VirtualService") == 0
    assert "status" not in server.get(V1, "VirtualService", "default", "web")

    leadership.leading = True
    writer.leadership_changed(True)
    await writer.sync_once()
    assert status_writes(server) == 1

    leadership.leading = False  # lost the lease
    writer.leadership_changed(False)
    broken = server.get(V1, "VirtualService", "default", "web")
    broken["spec"] = copy.deepcopy(virtual_service("web", (10, 10))["spec"])
    server.update(broken)
    sync_store(store, server)
    for _ in range(5):
        await writer.sync_once()
    assert status_writes(server) == 1
    assert (
        "add up to 0"
        in server.get(V1, "VirtualService", "default", "web")["status"]["validationMessages"][0]["description"]
    )


async def test_writes_stop_when_the_lease_cannot_be_renewed(server: FakeApiServer, api: client.ApiClient) -> None:
    store = ConfigStore()
    server.create(virtual_service("web", (50, 50)))
    sync_store(store, server)
    elector = LeaderElector(
        config=LeaseConfig(name="meshd-leader", namespace="istio-system", identity="a", duration_s=3.0),
        lock=KubeLeaseLock(api=api, name="meshd-leader", namespace="istio-system"),
        clock=SystemClock(),
        log=logging.getLogger("test"),
        request_timeout_s=0.5,
    )
    writer = StatusWriter(
        api=KubeStatusApi(api),
        store=store,
        errors=store.errors,
        is_leader=lambda: elector.is_leader,
        clock=SystemClock(),
        log=logging.getLogger("test"),
        interval_s=0.05,
    )
    async with asyncio.TaskGroup() as tasks:
        election = tasks.create_task(elector.run())
        writing = tasks.create_task(writer.run())

        async def accepted() -> bool:
            return status_writes(server) == 1

        await eventually(accepted, what="the leader writes the first status")
        server.fail(status=500, count=10_000, kind="Lease")  # the leader can no longer renew

        async def stepped_down() -> bool:
            return not elector.is_leader

        await eventually(stepped_down, timeout=5, what="the leader steps down")
        broken = server.get(V1, "VirtualService", "default", "web")
        broken["spec"] = virtual_service("web", (0, 0))["spec"]
        server.update(broken)
        sync_store(store, server)
        rounds = writer.rounds

        async def several_rounds() -> bool:
            return writer.rounds >= rounds + 10

        await eventually(several_rounds, what="the writer keeps running")
        assert status_writes(server) == 1  # a replica that lost the lease writes nothing
        server.clear_faults()
        await eventually(lambda: _leads(elector), timeout=10, what="leading again")

        async def rejected() -> bool:
            return "validationMessages" in server.get(V1, "VirtualService", "default", "web").get("status", {})

        await eventually(rejected, timeout=5, what="status written once leading again")
        election.cancel()
        writing.cancel()


async def _leads(elector: LeaderElector) -> bool:
    return elector.is_leader


async def test_nothing_is_written_while_the_errors_lag_behind_the_store(
    server: FakeApiServer, api: client.ApiClient
) -> None:
    store = ConfigStore()
    server.create(virtual_service("web", (0, 0)))
    sync_store(store, server)
    built = {"revision": -1}  # no push built yet
    writer = StatusWriter(
        api=KubeStatusApi(api),
        store=store,
        errors=store.errors,
        is_leader=lambda: True,
        settled=lambda: built["revision"] == store.revision,
        clock=SystemClock(),
        log=logging.getLogger("test"),
    )
    assert await writer.sync_once() == 0
    assert status_writes(server) == 0 and server.count(verb="get", kind="VirtualService") == 0
    built["revision"] = store.revision  # the push caught up
    assert await writer.sync_once() == 1
    assert status_writes(server) == 1


async def test_an_edit_that_keeps_the_same_error_still_moves_observed_generation(
    server: FakeApiServer, api: client.ApiClient
) -> None:
    store = ConfigStore()
    server.create(virtual_service("web", (0, 0)))
    sync_store(store, server)
    writer = StatusWriter(
        api=KubeStatusApi(api),
        store=store,
        errors=store.errors,
        is_leader=lambda: True,
        clock=SystemClock(),
        log=logging.getLogger("test"),
        recheck_rejected_s=0.2,
    )
    await writer.sync_once()
    assert server.get(V1, "VirtualService", "default", "web")["status"]["observedGeneration"] == 1
    edited = server.get(V1, "VirtualService", "default", "web")
    edited["spec"]["hosts"] = ["web", "web.other"]  # a new generation, still the same error
    server.update(edited)
    sync_store(store, server)
    assert await writer.sync_once() == 0  # same verdict, nothing in the store changed

    async def caught_up() -> bool:
        await writer.sync_once()
        return bool(server.get(V1, "VirtualService", "default", "web")["status"]["observedGeneration"] == 2)

    await eventually(caught_up, timeout=5, what="observedGeneration of the edited, still invalid object")
    assert status_writes(server) == 2


def informer(server: FakeApiServer) -> Any:
    """The informers' cache as the status writer reads it: the cluster's current copy (a deep copy)."""
    return lambda key: copy.deepcopy(server.get(V1, key.kind, key.namespace, key.name))


async def test_the_informers_copy_saves_every_request_a_settled_status_would_take(
    server: FakeApiServer, api: client.ApiClient
) -> None:
    store = web_and_ok(server)
    # as app.py passes the Kubernetes source's
    writer = make_writer(KubeStatusApi(api), store, Leadership(True), cached=informer(server))
    assert await writer.sync_once() == 2
    # written from the cached copies: no read, one write each, with the copy's resourceVersion
    assert server.count(verb="get", kind="VirtualService") == 0 and status_writes(server) == 2
    assert writer.requests == 2
    bad = server.get(V1, "VirtualService", "default", "web")["status"]
    assert bad["validationMessages"][0]["description"] == "spec.http[0].route: destination weights add up to 0"

    # a restart, or a new leader, over a cluster whose statuses are right: not one request
    sync_store(store, server)
    again = make_writer(KubeStatusApi(api), store, Leadership(True), cached=informer(server))
    assert await again.sync_once() == 2
    assert again.requests == 0 and status_writes(server) == 2
    assert server.count(verb="get", kind="VirtualService") == 0


async def test_a_stale_cached_copy_is_refused_then_read_again(server: FakeApiServer, api: client.ApiClient) -> None:
    store = ConfigStore()
    server.create(virtual_service("web", (0, 0)))
    stale = copy.deepcopy(server.get(V1, "VirtualService", "default", "web"))
    fixed = server.get(V1, "VirtualService", "default", "web")
    fixed["spec"] = virtual_service("web", (50, 50))["spec"]
    server.update(fixed)  # the informer has not seen this yet
    sync_store(store, server)
    writer = make_writer(KubeStatusApi(api), store, Leadership(True), cached=lambda _: copy.deepcopy(stale))
    await writer.sync_once()
    assert writer.conflicts == 1 and writer.writes == 0  # the stale resourceVersion: 409, nothing overwritten

    async def written() -> bool:
        await writer.sync_once()
        return writer.writes == 1

    await eventually(written, timeout=5, what="the write retried after reading the object")
    status = server.get(V1, "VirtualService", "default", "web")["status"]
    assert status["observedGeneration"] == 2 and "validationMessages" not in status
    assert server.count(verb="get", kind="VirtualService") == 1


async def test_bulk_statuses_are_paced(server: FakeApiServer, api: client.ApiClient) -> None:
    store = ConfigStore()
    for i in range(5):
        server.create(virtual_service(f"vs-{i}", (50, 50)))
    sync_store(store, server)
    writer = make_writer(KubeStatusApi(api), store, Leadership(True), max_visits=2)
    writes = []
    for _ in range(3):
        await writer.sync_once()
        writes.append(writer.writes)
    # two visits that call the API server a round (a read and a write each), the rest in the next rounds
    assert writes == [2, 4, 5]
    assert server.count(verb="get", kind="VirtualService") == 5 and status_writes(server) == 5
    # a new leader finds them written: from the informers' copies, no visit costs a request
    sync_store(store, server)
    again = make_writer(KubeStatusApi(api), store, Leadership(True), max_visits=2, cached=informer(server))
    assert await again.sync_once() == 5 and again.requests == 0


async def test_a_round_with_nothing_changed_is_skipped_and_a_clobbered_status_still_repaired(
    server: FakeApiServer, api: client.ApiClient
) -> None:
    """Each round walks every Istio object of the store (5000 DestinationRules: ~0.1 s): once one has left
    nothing to do, rounds are skipped while the store and the errors stay as they were. A status someone
    else overwrote moves only the object's resourceVersion (no new store revision): still seen, still repaired."""
    store = web_and_ok(server)
    writer = make_writer(KubeStatusApi(api), store, Leadership(True))
    assert await writer.sync_once() == 2
    sync_store(store, server)  # the resourceVersions our writes produced
    await writer.sync_once()  # (those are ours: nothing to visit, and now nothing is left to do)
    skipped = writer.skipped
    for _ in range(3):
        assert await writer.sync_once() == 0
    assert writer.skipped == skipped + 3
    revision = store.revision
    theirs = server.get(V1, "VirtualService", "default", "ok")
    theirs["status"] = {}
    server.update(theirs, subresource="status")
    sync_store(store, server)
    assert store.revision == revision  # nothing to translate
    assert await writer.sync_once() == 1
    assert writer.skipped == skipped + 3
    assert server.get(V1, "VirtualService", "default", "ok")["status"]["conditions"][0]["status"] == "True"
    store.replace_origin("cluster", dict(store.winners()), [])  # the errors change (web's goes): a round again
    await writer.sync_once()
    assert writer.skipped == skipped + 3
