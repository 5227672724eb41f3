"""The reflector against the fake API server: list then watch from the list's resourceVersion,
bookmarks, 410 (in the stream and as HTTP) -> relist with no lost delete, UID replacement, every
failure -> exponential backoff with jitter, one watch per kind, no hot loop."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from meshd.kube.kinds import KindSpec
from meshd.kube.reflector import Reflector, ReflectorSettings
from tests.unit.kube.conftest import LOG, SERVICE, Api, service, until

VS = KindSpec("networking.istio.io", "VirtualService", "virtualservices", ("v1", "v1beta1", "v1alpha3"), crd=True)


def watches(api: Api, kind: str = "Service") -> list[dict[str, str]]:
    return [r.query for r in api.server.requests if r.verb == "watch" and r.kind == kind]


async def test_lists_then_watches_from_the_list_resource_version(api: Api) -> None:
    api.server.create(service("a"))
    api.server.create(service("b"))
    reflector, seen = api.reflector()
    api.run(reflector)
    await until(lambda: reflector.has_synced, "first list")
    list_rv = reflector.resource_version
    assert sorted(seen.events)[0][:2] == ("ADDED", "a") and len(seen.events) == 2
    await until(lambda: watches(api), "a watch")
    first = watches(api)[0]
    assert first["resourceVersion"] == list_rv
    assert first["allowWatchBookmarks"] == "true" and int(first["timeoutSeconds"]) >= 1
    api.server.create(service("c"))
    await until(lambda: seen.of("c") == ["ADDED"], "the watch event")
    api.server.delete("v1", "Service", "default", "a")
    await until(lambda: seen.of("a") == ["ADDED", "DELETED"], "the delete")
    assert set(reflector.cache) == {("default", "b"), ("default", "c")}
    assert api.server.count(verb="list", kind="Service") == 1
    assert api.clock.sleeps == []


@pytest.mark.parametrize("mode", ["event", "http"])
async def test_410_relists_and_reports_what_was_deleted_meanwhile(api: Api, mode: str) -> None:
    api.server.expired_mode = mode
    api.server.create(service("keep"))
    api.server.create(service("gone"))
    reflector, seen = api.reflector()
    api.run(reflector)
    await until(lambda: api.server.open_watches("Service") == 1, "the watch")
    await api.server.pause()  # disconnected: the delete happens while nobody watches
    api.server.delete("v1", "Service", "default", "gone")
    api.server.create(service("new"))
    api.server.compact()  # and the history that would have carried it is gone: 410 on resume
    await api.server.resume()
    await until(lambda: reflector.relists == 1, "the relist")
    await until(lambda: seen.of("gone") == ["ADDED", "DELETED"], "the delete found by the relist")
    assert seen.of("new") == ["ADDED"]
    assert seen.of("keep") == ["ADDED"], "an unchanged object reports nothing on relist"
    assert api.server.count(verb="list", kind="Service") == 2
    await until(lambda: api.server.open_watches("Service") == 1, "watching again")
    assert watches(api)[-1]["resourceVersion"] == reflector.resource_version
    # the first list from the watch cache (any version), the relist a consistent read: never back in time
    first, relist = (r.query for r in api.server.requests if r.verb == "list" and r.kind == "Service")
    assert first.get("resourceVersion") == "0"
    assert "resourceVersion" not in relist


async def test_same_name_with_a_new_uid_is_a_replacement(api: Api) -> None:
    old = api.server.create(service("web"))
    reflector, seen = api.reflector()
    api.run(reflector)
    await until(lambda: api.server.open_watches("Service") == 1, "the watch")
    await api.server.pause()
    api.server.delete("v1", "Service", "default", "web")
    new = api.server.create(service("web", port=81))
    api.server.compact()
    await api.server.resume()
    await until(lambda: len(seen.events) == 3, "replacement events")
    uid_old, uid_new = old["metadata"]["uid"], new["metadata"]["uid"]
    assert seen.events == [("ADDED", "web", uid_old), ("DELETED", "web", uid_old), ("ADDED", "web", uid_new)]
    assert reflector.cache[("default", "web")]["metadata"]["uid"] == uid_new


def assert_backoff(delays: list[float], *, initial: float = 0.8, jitter: float = 0.5, cap: float = 30.0) -> None:
    """Each delay doubles from `initial` (capped), stretched by at most `jitter` of itself."""
    for i, delay in enumerate(delays):
        base = min(cap, initial * 2**i)
        assert base <= delay <= min(cap, base * (1 + jitter)), (i, delays)


async def test_500_on_list_backs_off_exponentially_with_jitter(api: Api) -> None:
    api.server.create(service("a"))
    api.server.fail(status=500, count=4, verb="list", kind="Service")
    reflector, seen = api.reflector()
    api.run(reflector)
    await until(lambda: reflector.has_synced, "the list after the failures")
    assert len(api.clock.sleeps) == 4
    assert_backoff(api.clock.sleeps)
    assert len(set(round(d / min(30, 0.8 * 2**i), 6) for i, d in enumerate(api.clock.sleeps))) > 1, "jitter"
    assert reflector.errors == 4 and seen.of("a") == ["ADDED"]
    assert api.server.count(verb="list", kind="Service") == 5


async def test_backoff_is_capped_and_never_a_hot_loop(api: Api) -> None:
    api.server.fail(status=503, count=12, verb="list", kind="Service")
    reflector, _ = api.reflector()
    api.run(reflector)
    await until(lambda: reflector.has_synced, "the list after 12 failures")
    assert_backoff(api.clock.sleeps)
    assert max(api.clock.sleeps) == pytest.approx(30.0)
    # one request per delay: 13 requests over more than 3 minutes of (clock) time
    assert api.server.count(verb="list", kind="Service") == 13
    assert sum(api.clock.sleeps) > 180


async def test_429_honours_retry_after(api: Api) -> None:
    api.server.fail(status=429, count=1, verb="list", kind="Service", retry_after=7)
    reflector, _ = api.reflector()
    api.run(reflector)
    await until(lambda: reflector.has_synced, "the list")
    assert len(api.clock.sleeps) == 1 and api.clock.sleeps[0] >= 7


async def test_connection_refused_backs_off_then_recovers(api: Api) -> None:
    api.server.create(service("a"))
    await api.server.pause()
    reflector, _ = api.reflector()
    api.run(reflector)
    await until(lambda: len(api.clock.sleeps) >= 3, "three refused attempts")
    assert not reflector.has_synced
    await api.server.resume()
    await until(lambda: reflector.has_synced, "the list once the server is back")
    assert_backoff(api.clock.sleeps)
    assert "Connect" in reflector.last_error or "refused" in reflector.last_error.lower()


@pytest.mark.parametrize("fault", ["mid_event", "garbage"])
async def test_broken_stream_backs_off_and_resumes_from_the_last_version(api: Api, fault: str) -> None:
    api.server.create(service("a"))
    reflector, seen = api.reflector()
    api.run(reflector)
    await until(lambda: api.server.open_watches("Service") == 1, "the watch")
    api.server.create(service("b"))
    await until(lambda: seen.of("b") == ["ADDED"], "an event")
    rv = reflector.resource_version
    if fault == "mid_event":
        assert api.server.drop_watches("Service", mid_event=True) == 1
    else:
        assert api.server.send_garbage("Service") == 1
    await until(lambda: len(api.clock.sleeps) == 1, "a backoff")
    assert_backoff(api.clock.sleeps)
    await until(lambda: api.server.open_watches("Service") == 1, "watching again")
    assert watches(api)[-1]["resourceVersion"] == rv
    api.server.delete("v1", "Service", "default", "a")
    await until(lambda: seen.of("a") == ["ADDED", "DELETED"], "events after the resume")
    assert reflector.relists == 0 and reflector.errors == 1


async def test_bookmarks_advance_the_resource_version_used_to_resume(api: Api) -> None:
    reflector, seen = api.reflector()
    api.run(reflector)
    await until(lambda: api.server.open_watches("Service") == 1, "the watch")
    api.server.create(
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x", "namespace": "default"}, "data": {}}
    )  # another kind: the global resourceVersion moves on without a Service event
    assert reflector.resource_version != api.server.resource_version
    api.server.send_bookmarks("Service")
    await until(lambda: reflector.resource_version == api.server.resource_version, "the bookmark")
    bookmark_rv = reflector.resource_version
    api.server.drop_watches("Service")
    await until(lambda: len(watches(api)) == 2, "the resumed watch")
    assert watches(api)[-1]["resourceVersion"] == bookmark_rv
    assert seen.events == [] and reflector.relists == 0


async def test_a_watch_that_times_out_is_resumed_without_a_relist(api: Api) -> None:
    reflector, seen = api.reflector(settings=ReflectorSettings(watch_timeout_s=1))
    api.run(reflector)
    await until(lambda: reflector.has_synced, "the list")
    api.server.create(service("a"))
    await until(lambda: len(watches(api)) >= 2, "a second watch after the server ended the first", timeout=10)
    assert api.server.count(verb="list", kind="Service") == 1
    assert api.clock.sleeps == []
    assert seen.of("a") == ["ADDED"]


async def test_absent_crd_is_synced_empty_and_picked_up_when_installed(api: Api) -> None:
    api.server.remove_crd("networking.istio.io", "VirtualService")
    reflector, seen = api.reflector(VS, settings=ReflectorSettings(recheck_s=0.5))
    api.run(reflector)
    await until(lambda: reflector.has_synced, "synced while absent")
    assert reflector.absent and reflector.cache == {}
    assert api.server.count(verb="list", kind="VirtualService") == 0
    # one version: a CRD installed between two discovery requests must not make the served version racy
    api.server.install_crd("networking.istio.io", "VirtualService", ["v1beta1"])
    api.server.create(
        {
            "apiVersion": "networking.istio.io/v1beta1",
            "kind": "VirtualService",
            "metadata": {"name": "vs", "namespace": "default"},
            "spec": {"hosts": ["web"]},
        }
    )
    await until(lambda: seen.of("vs") == ["ADDED"], "the CRD's objects")
    assert reflector.version == "v1beta1" and not reflector.absent
    assert all(d == 0.5 for d in api.clock.sleeps), "absent CRDs are rechecked at the recheck interval"
    api.server.remove_crd("networking.istio.io", "VirtualService")
    await until(lambda: seen.of("vs") == ["ADDED", "DELETED"], "objects gone with their CRD")
    assert reflector.absent


class _ExplodingOnce:
    """A transport whose first call fails with an unexpected exception, then serves an empty list."""

    def __init__(self) -> None:
        self.calls = 0

    async def get_json(self, path: str, query: object = ()) -> dict[str, object]:
        self.calls += 1
        if self.calls == 1:
            raise RuntimeError("unexpected")
        return {"metadata": {"resourceVersion": "5"}, "items": []}

    async def stream(self, path: str, query: object, *, read_timeout_s: float) -> AsyncIterator[bytes]:
        await asyncio.Event().wait()  # a watch with nothing to say
        yield b""


async def test_an_unexpected_exception_backs_off_instead_of_stopping(api: Api) -> None:
    transport = _ExplodingOnce()
    reflector = Reflector(spec=SERVICE, transport=transport, clock=api.clock, log=LOG)
    api.run(reflector)
    await until(lambda: reflector.has_synced, "the list after the failure")
    assert len(api.clock.sleeps) == 1 and reflector.errors == 1 and "RuntimeError" in reflector.last_error


async def test_the_cache_drops_managed_fields_and_the_last_applied_copy(api: Api) -> None:
    """What no reader uses is not kept (as Istio's informers strip it): server-side apply's field managers
    and kubectl's copy of the whole object; other annotations stay, from the list and from the watch."""

    def applied(name: str) -> dict[str, Any]:
        obj = service(name)
        obj["metadata"]["managedFields"] = [{"manager": "kubectl", "operation": "Apply", "fieldsV1": {"f:spec": {}}}]
        obj["metadata"]["annotations"] = {"kubectl.kubernetes.io/last-applied-configuration": "{...}", "keep": "me"}
        return obj

    api.server.create(applied("listed"))
    reflector, _ = api.reflector()
    api.run(reflector)
    await until(lambda: api.server.open_watches("Service") == 1, "the watch")
    api.server.create(applied("watched"))
    await until(lambda: ("default", "watched") in reflector.cache, "the watch event")
    for key in (("default", "listed"), ("default", "watched")):
        metadata = reflector.cache[key]["metadata"]
        assert "managedFields" not in metadata and metadata["annotations"] == {"keep": "me"}, metadata
