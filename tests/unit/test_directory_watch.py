"""DirectorySource.run: file events (inotify) and polling both pick up added, edited and deleted
files, and the task stops cleanly when cancelled."""

from __future__ import annotations

import asyncio
import logging
import pathlib

import pytest

from meshd.clock import SystemClock
from meshd.model.store import ConfigStore
from meshd.sources.directory import DirectorySource

SERVICE = (
    "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: default}}\nspec:\n  ports: [{{port: 80}}]\n"
)


POLL_S = 0.01


async def _until(check: object, what: str, timeout: float = 10.0) -> None:
    """Poll a condition with a deadline (the watcher runs in its own task)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not check():  # type: ignore[operator]
        assert loop.time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(POLL_S)


def _names(store: ConfigStore) -> set[str]:
    return {r.metadata.name for _, r in store.resources()}


@pytest.mark.parametrize("watch", ["events", "poll"])
async def test_run_follows_the_directory(tmp_path: pathlib.Path, watch: str) -> None:
    (tmp_path / "a.yaml").write_text(SERVICE.format(name="a"))
    store = ConfigStore()
    source = DirectorySource(
        directory=tmp_path, store=store, clock=SystemClock(), interval_s=0.02, log=logging.getLogger("t"), watch=watch
    )
    task = asyncio.create_task(source.run())
    try:
        await _until(lambda: store.loaded and _names(store) == {"a"}, "the initial load")
        (tmp_path / "b.yaml").write_text(SERVICE.format(name="b"))
        await _until(lambda: _names(store) == {"a", "b"}, "an added file")
        (tmp_path / "a.yaml").write_text(SERVICE.format(name="a2"))
        await _until(lambda: _names(store) == {"a2", "b"}, "an edited file")
        (tmp_path / "b.yaml").unlink()
        await _until(lambda: _names(store) == {"a2"}, "a deleted file")
        sub = tmp_path / "more"
        sub.mkdir()
        (sub / "c.yaml").write_text(SERVICE.format(name="c"))
        await _until(lambda: _names(store) == {"a2", "c"}, "a file in a new subdirectory")
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(task, 5)


def test_rescan_touches_only_the_named_paths(tmp_path: pathlib.Path) -> None:
    store = ConfigStore()
    source = DirectorySource(
        directory=tmp_path, store=store, clock=SystemClock(), interval_s=1, log=logging.getLogger("t")
    )
    (tmp_path / "a.yaml").write_text(SERVICE.format(name="a"))
    (tmp_path / "b.yaml").write_text(SERVICE.format(name="b"))
    assert source.rescan([str(tmp_path / "a.yaml"), str(tmp_path / "notes.txt")])
    assert _names(store) == {"a"}  # b.yaml was not named, so not read
    (tmp_path / "a.yaml").unlink()
    assert source.rescan([str(tmp_path / "a.yaml")])
    assert _names(store) == set()
