"""The GC policy: freeze the live config after each push; a full collection when due, at an idle
moment chosen by the push loop (never right inside a push), or anyway under endless churn."""

from __future__ import annotations

import asyncio
import gc
import logging
import weakref
from collections.abc import Hashable, Iterator, Sequence

import pytest

from meshd import cli
from meshd.gcpolicy import GcPolicy, importing
from meshd.model.store import ConfigStore
from meshd.obs.metrics import Metrics
from meshd.push.loop import PushLoop
from meshd.settings import Settings
from meshd.translate.proxy import Proxy, parse_node_id
from meshd.xds.hub import Hub
from meshd.xds.resource import Snapshot
from meshd.xds.stream import SotwStream
from tests.unit.test_push import FakeClock


@pytest.fixture(autouse=True)
def _unfreeze() -> Iterator[None]:
    gc.unfreeze()
    yield
    gc.unfreeze()


def test_freezes_after_each_push_and_becomes_due_after_n() -> None:
    policy = GcPolicy(every=3)
    policy.after_push()
    assert gc.get_freeze_count() > 0 and not policy.due
    policy.after_push()
    policy.after_push()
    assert policy.due and policy.full_collections == 0
    policy.collect()
    assert not policy.due and policy.full_collections == 1


def test_endless_churn_still_collects() -> None:
    policy = GcPolicy(every=2)
    for _ in range(20):
        policy.after_push()
    assert policy.full_collections == 1


def test_cyclic_garbage_frozen_while_alive_is_freed_by_the_full_collection() -> None:
    policy = GcPolicy(every=100)

    class Node:
        other: object = None

    a, b = Node(), Node()
    a.other, b.other = b, a  # a cycle: only the cyclic collector frees it
    probe = weakref.ref(a)
    policy.after_push()  # frozen while still alive
    del a, b
    gc.collect()
    assert probe() is not None  # frozen objects are not collected...
    policy.collect()  # ...until the full collection
    assert probe() is None


def test_disabled_policy_touches_nothing() -> None:
    policy = GcPolicy(every=1, enabled=False)
    policy.after_push()
    policy.collect()
    assert gc.get_freeze_count() == 0 and not policy.due and policy.full_collections == 0


def _loop(clock: FakeClock, policy: GcPolicy) -> tuple[PushLoop, ConfigStore]:
    store = ConfigStore()
    loop = PushLoop(
        store=store, hub=Hub(), settings=Settings(), clock=clock, metrics=Metrics(_registry()),
        log=logging.getLogger("t"), gc_policy=policy, idle_s=5.0,
    )  # fmt: skip
    return loop, store


async def _settle() -> None:
    for _ in range(20):
        await asyncio.sleep(0)


async def test_push_loop_collects_once_idle_with_nothing_pending() -> None:
    clock, policy = FakeClock(), GcPolicy(every=1)
    loop, store = _loop(clock, policy)
    store.mark_loaded()  # one change -> one push -> a full collection is due
    task = asyncio.create_task(loop.run())
    try:
        await _settle()
        assert policy.full_collections == 1 and clock.time >= 5.0  # after 5 s of (fake) idle
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


async def test_push_loop_does_not_collect_while_a_change_is_pending() -> None:
    clock, policy = FakeClock(), GcPolicy(every=1)
    loop, store = _loop(clock, policy)
    policy.after_push()  # due before the loop starts...
    store.mark_loaded()  # ...and a change is already waiting
    task = asyncio.create_task(loop.run())
    try:
        for _ in range(3):
            await asyncio.sleep(0)
        assert policy.full_collections == 0  # the change is served first
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


def _registry():  # type: ignore[no-untyped-def]
    from prometheus_client import CollectorRegistry

    return CollectorRegistry()


def _full_collections_while_growing(objects: int) -> int:
    """Full (generation 2) collections CPython runs on its own while `objects` live containers are made."""
    full = 0

    def count(phase: str, info: dict[str, int]) -> None:
        nonlocal full
        if phase == "start" and info["generation"] == 2:
            full += 1

    gc.collect()
    gc.callbacks.append(count)
    try:
        kept = [[i] for i in range(objects)]  # a growing live heap, like a World loading or a cold storm
    finally:
        gc.callbacks.remove(count)
    del kept
    return full


def test_install_makes_automatic_full_collections_rarer_while_the_heap_grows() -> None:
    policy = GcPolicy(every=100)
    default = _full_collections_while_growing(400_000)
    before = policy.install()
    try:
        assert gc.get_threshold()[2] == 100
        installed = _full_collections_while_growing(400_000)
    finally:
        policy.uninstall(before)
    assert gc.get_threshold() == before
    assert default >= 3 and installed < default / 2, (default, installed)


def test_a_push_runs_without_collections_and_what_it_made_is_frozen_after_it() -> None:
    policy = GcPolicy(every=100)
    runs: list[int] = []

    def count(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            runs.append(info["generation"])

    gc.collect()
    gc.callbacks.append(count)
    try:
        with policy.pushing():
            kept = [[i] for i in range(30_000)]  # the next generation's config (700 per young collection)
            assert not gc.isenabled()
        inside = list(runs)
    finally:
        gc.callbacks.remove(count)
    assert inside == [] and gc.isenabled()
    assert gc.get_freeze_count() >= len(kept)  # frozen: no later collection walks it


def test_a_push_that_raises_still_turns_the_collector_back_on() -> None:
    policy = GcPolicy(every=100)
    with pytest.raises(RuntimeError), policy.pushing():
        raise RuntimeError("generation failed")
    assert gc.isenabled()


def test_a_disabled_policy_leaves_the_collector_on_during_a_push() -> None:
    with GcPolicy(enabled=False).pushing():
        assert gc.isenabled()


def test_a_build_outside_a_push_runs_without_collections_is_frozen_and_counts_toward_the_full_collection() -> None:
    policy = GcPolicy(every=2)
    with policy.building():
        kept = [[i] for i in range(1000)]
        assert not gc.isenabled()
    assert gc.isenabled() and gc.get_freeze_count() >= len(kept)
    for _ in range(18):
        with policy.building():
            pass
    assert not policy.due  # 19 builds: every * 10 is 20
    with policy.building():
        pass
    assert policy.due and policy.full_collections == 0
    for _ in range(180):  # every * 100 builds without an idle moment: collected anyway
        with policy.building():
            pass
    assert policy.full_collections == 1 and not policy.due


def test_a_proxy_connecting_is_built_with_the_collector_off_and_frozen_after() -> None:
    seen: list[bool] = []

    class Generation:
        revision = 1

        def scope_key(self, proxy: Proxy) -> Hashable:
            return "all"

        def snapshot(self, proxy: Proxy) -> Snapshot:
            seen.append(gc.isenabled())
            return Snapshot(resources={})

        def still_current_many(self, key: Hashable, held: Sequence[tuple[Proxy, Snapshot]]) -> bool:
            return True

    hub = Hub(gc_policy=GcPolicy(every=100))
    hub.publish(Generation(), changed_at=0.0)
    gc.unfreeze()
    hub.connect(
        proxy=parse_node_id("sidecar~10.0.0.1~p.a~a.svc.cluster.local"), stream=SotwStream(nonce_prefix="t"), now=0
    )
    assert seen == [False] and gc.isenabled() and gc.get_freeze_count() > 0


def test_install_with_the_policy_disabled_changes_nothing() -> None:
    before = gc.get_threshold()
    GcPolicy(enabled=False).install()
    assert gc.get_threshold() == before


def test_imports_run_without_collections_and_what_they_built_is_frozen_after() -> None:
    with importing():
        assert not gc.isenabled()
        made = [[i] for i in range(1000)]
    assert gc.isenabled()
    assert gc.get_freeze_count() >= len(made)
    with pytest.raises(ValueError), importing():
        raise ValueError("an import failed")
    assert gc.isenabled()


def test_a_command_s_parser_and_modules_are_imported_without_collections(monkeypatch: pytest.MonkeyPatch) -> None:
    imported: list[tuple[str, bool]] = []
    monkeypatch.setattr(cli.importlib, "import_module", lambda name: imported.append((name, gc.isenabled())))
    monkeypatch.setattr(cli, "_serve", lambda args: 0)
    monkeypatch.setattr(cli.logging, "basicConfig", lambda **kwargs: None)
    with pytest.raises(SystemExit) as exited:
        cli.main(["serve"])
    assert exited.value.code == 0
    assert imported == [("meshd.app", False)]
    assert gc.isenabled()
