"""`--workers N` without processes: a worker's store replica, fed the main store's changes (pickled as the
control channel carries them), holds the same winners and generates the same config; the workers' stream
metrics add up with the main process's; the `--workers` flag and how many `auto` is."""

from __future__ import annotations

import argparse
import pathlib
import pickle
import random
from collections.abc import Callable

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from meshd.api.meta import Resource, ResourceKey
from meshd.cli import _workers, build_parser
from meshd.model.store import ConfigStore
from meshd.obs.merge import MergedRegistry, samples_of
from meshd.obs.metrics import Metrics
from meshd.push.loop import PushLoop
from meshd.settings import Settings
from meshd.translate.proxy import parse_node_id
from meshd.wiring.control import Sync
from meshd.wiring.worker import WorkerState
from meshd.wiring.worker import log as worker_log
from meshd.wiring.worker_count import auto_workers, memory_limit, usable_cpus
from meshd.xds.hub import Hub
from tests.unit.test_store import by_key, service


def _sync(main: ConfigStore, feed: Callable[[], dict[ResourceKey, Resource | None]]) -> Sync:
    wire = Sync(changes=feed(), mesh=None, mesh_changed=False, loaded=main.loaded, extra=None)
    return pickle.loads(pickle.dumps(wire))  # as the control channel carries it


def test_a_replica_fed_the_changes_holds_the_main_stores_winners() -> None:
    rng = random.Random(7)
    main = ConfigStore()
    worker = WorkerState(Settings(config_dir=None), index=0)
    main.replace_origin("first.yaml", by_key(service("z")))
    feed = main.feed()  # starts with what the store holds
    for step in range(60):
        origin = f"file-{rng.randrange(4)}.yaml"
        names = rng.sample(["a", "b", "c", "d", "e"], rng.randrange(0, 4))
        if rng.random() < 0.2:
            main.remove_origin(origin)
        else:
            main.replace_origin(origin, by_key(*(service(n, port=80 + rng.randrange(3)) for n in names)))
        if step == 3:
            main.mark_loaded()
        worker.apply(_sync(main, feed))
        assert dict(worker.store.winners()) == dict(main.winners()), step
        assert worker.store.loaded == main.loaded
    # unchanged resources are not sent again
    assert _sync(main, feed).changes == {}


def test_the_replica_generates_what_the_main_process_generates() -> None:
    main = ConfigStore()
    main.replace_origin("a.yaml", by_key(service("web", port=9080), service("api", port=7070)))
    main.mark_loaded()
    worker = WorkerState(Settings(config_dir=None), index=1)
    worker.apply(_sync(main, main.feed()))
    proxy = parse_node_id("sidecar~10.0.0.1~client.ns~ns.svc.cluster.local")
    main_push = PushLoop(
        store=main, hub=Hub(), settings=worker.settings, clock=worker.clock, metrics=worker.metrics, log=worker_log
    )
    ours = main_push.rebuild(changed_at=0.0)
    generator = worker.push.rebuild(changed_at=0.0)
    theirs = generator.snapshot(proxy)
    assert {t: sorted(r) for t, r in theirs.resources.items()} == {
        t: sorted(r) for t, r in ours.snapshot(proxy).resources.items()
    }
    assert theirs.resources and all(
        theirs.resources[t][n].body == ours.snapshot(proxy).resources[t][n].body for t in theirs.resources
        for n in theirs.resources[t]
    )  # fmt: skip


def test_the_workers_stream_metrics_add_up_with_the_main_processs() -> None:
    main, one, two = (Metrics(CollectorRegistry()) for _ in range(3))
    main.xds_pushes.inc("cds", 2)
    one.xds_pushes.inc("cds", 3)
    two.xds_pushes.inc("lds", 5)
    one.xds_connected.labels("meshd").set(4)
    two.xds_connected.labels("meshd").set(6)
    one.convergence.observe(0.2)
    two.convergence.observe(0.2)
    one.config_errors.set_function(lambda: 99)  # the source of truth's alone: never added
    main.config_errors.set_function(lambda: 1)
    text = generate_latest(MergedRegistry(main.registry, [samples_of(one.registry), samples_of(two.registry)]))  # type: ignore[arg-type]
    lines = set(text.decode().splitlines())
    assert 'pilot_xds_pushes{type="cds"} 5.0' in lines
    assert 'pilot_xds_pushes{type="lds"} 5.0' in lines
    assert 'pilot_xds{version="meshd"} 10.0' in lines or 'pilot_xds{component="meshd"} 10.0' in lines, text
    assert "pilot_proxy_convergence_time_count 2.0" in lines
    assert "meshd_config_errors 1.0" in lines


@pytest.mark.parametrize(("value", "expected"), [("1", 1), ("4", 4)])
def test_workers_flag_takes_a_number(value: str, expected: int) -> None:
    assert _workers(value) == expected


def test_workers_flag_auto_follows_the_cpus_and_memory_meshd_may_use() -> None:
    assert _workers("auto") == auto_workers(cpus=usable_cpus(), memory_limit=memory_limit())


def test_serve_defaults_to_auto_workers(monkeypatch: pytest.MonkeyPatch) -> None:
    import meshd.wiring.worker_count

    monkeypatch.setattr(meshd.wiring.worker_count, "auto_workers", lambda **_: 5)
    assert build_parser().parse_args(["serve", "--config-dir", "."]).workers == 5
    assert build_parser().parse_args(["serve", "--config-dir", ".", "--workers", "2"]).workers == 2


@pytest.mark.parametrize(
    ("cpus", "memory", "expected"),
    [
        (1, None, 1),
        (2, None, 1),  # measured: 2 workers on 2 cores do not pay for their memory
        (3, None, 1),
        (4, None, 4),
        (6, None, 6),
        (16, None, 8),  # at most 8: memory grows with the count
        (16, 1024 * 1024 * 1024, 3),  # 1 GiB: 4 processes of 256 MiB, the main process one of them
        (4, 512 * 1024 * 1024, 1),  # no room for a worker beside the main process
    ],
)
def test_auto_workers_from_cpus_and_memory(cpus: int, memory: int | None, expected: int) -> None:
    assert auto_workers(cpus=cpus, memory_limit=memory) == expected


def test_usable_cpus_and_memory_limit_read_the_cgroup(tmp_path: pathlib.Path) -> None:
    import os

    affinity = len(os.sched_getaffinity(0))
    assert usable_cpus(tmp_path) == affinity and memory_limit(tmp_path) is None  # no cgroup v2 files
    (tmp_path / "cpu.max").write_text("max 100000\n")
    (tmp_path / "memory.max").write_text("max\n")
    assert usable_cpus(tmp_path) == affinity and memory_limit(tmp_path) is None
    (tmp_path / "cpu.max").write_text("50000 100000\n")  # half a CPU: one
    (tmp_path / "memory.max").write_text("1073741824\n")
    assert usable_cpus(tmp_path) == 1 and memory_limit(tmp_path) == 1 << 30
    (tmp_path / "cpu.max").write_text(f"{(affinity + 4) * 100000} 100000\n")  # a quota above the affinity
    assert usable_cpus(tmp_path) == affinity
    (tmp_path / "cpu.max").write_text("lots 0\n")  # unreadable: the affinity, the limit unknown
    (tmp_path / "memory.max").write_text("plenty\n")
    assert usable_cpus(tmp_path) == affinity and memory_limit(tmp_path) is None


@pytest.mark.parametrize("value", ["0", "many"])
def test_workers_flag_refuses_the_rest(value: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError):
        _workers(value)


def test_the_mesh_config_reaches_the_replica_and_starts_a_generation() -> None:
    from meshd.api.mesh import MeshConfig

    worker = WorkerState(Settings(config_dir=None), index=0)
    revision = worker.store.revision
    mesh = MeshConfig(trust_domain="example.org")
    worker.apply(Sync(changes={}, mesh=mesh, mesh_changed=True, loaded=True, extra=None))
    assert worker.push.mesh_config == mesh
    assert worker.store.revision > revision  # the push loop's debouncer is told
    generator = worker.push.rebuild(changed_at=0.0)
    assert generator.options.trust_domain == "example.org"


def test_a_worker_leaves_logging_rejections_to_the_main_process() -> None:
    import logging

    from meshd.wiring.worker import push_log

    def record(msg: str) -> logging.LogRecord:
        return logging.LogRecord("meshd.worker", logging.ERROR, __file__, 1, msg, None, None)

    assert not push_log.filter(record("event=%s resource=%s field=%s message=%r"))
    assert push_log.filter(record("event=push_generation generation=%d"))
