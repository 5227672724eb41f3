"""DirectorySource.scan(): one pass over a directory of YAML files into a ConfigStore, called
directly (no run loop): added, changed, broken and deleted files, and no notification when
nothing changed."""

from __future__ import annotations

import logging
import os
import pathlib
from collections.abc import Callable

import pytest

from meshd.api.kube import Service
from meshd.api.meta import ResourceKey
from meshd.model.store import ConfigStore
from meshd.sources.directory import DirectorySource
from tests.unit.test_yaml_file import service

LOGGER = "meshd.test.directory"
SVC_A = ResourceKey("Service", "ns", "a")
SVC_B = ResourceKey("Service", "ns", "b")
SVC_C = ResourceKey("Service", "ns", "c")


class NoSleepClock:
    def now(self) -> float:
        return 0.0

    async def sleep(self, seconds: float) -> None:
        raise AssertionError("scan() must not sleep")


class Harness:
    def __init__(self, directory: pathlib.Path) -> None:
        self.dir = directory
        self.store = ConfigStore()
        self.notified = 0
        self.store.subscribe(self._notify)
        self.source = DirectorySource(
            directory=directory, store=self.store, clock=NoSleepClock(), interval_s=1.0, log=logging.getLogger(LOGGER)
        )

    def _notify(self) -> None:
        self.notified += 1

    def write(self, name: str, text: str) -> pathlib.Path:
        path = self.dir / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        return path

    def ports(self) -> dict[ResourceKey, int]:
        out = {}
        for _, r in self.store.resources():
            assert isinstance(r, Service)
            out[r.key] = r.spec.ports[0].port
        return out

    def origins(self) -> dict[ResourceKey, str]:
        return {r.key: pathlib.Path(origin).name for origin, r in self.store.resources()}


@pytest.fixture
def h(tmp_path: pathlib.Path) -> Harness:
    return Harness(tmp_path)


def test_scan_loads_yaml_files_recursively_and_ignores_other_suffixes(h: Harness) -> None:
    h.write("one.yaml", service("a", 80))
    h.write("sub/two.yml", service("b", 81))
    h.write("notes.txt", service("c", 82))

    assert h.source.scan() is True

    assert h.ports() == {SVC_A: 80, SVC_B: 81}
    assert h.origins() == {SVC_A: "one.yaml", SVC_B: "two.yml"}
    assert h.store.errors() == []
    assert h.notified == h.store.revision > 0


def test_missing_directory_is_an_empty_scan(tmp_path: pathlib.Path) -> None:
    harness = Harness(tmp_path / "absent")
    assert harness.source.scan() is False
    assert harness.store.resources() == []
    assert harness.notified == 0


# edit -> (what it does to the file, whether the bytes differ so the file is parsed again)
UNCHANGED: dict[str, tuple[Callable[[pathlib.Path], object], bool]] = {
    "not-touched": (lambda path: None, False),
    "same-bytes-rewritten": (lambda path: path.write_bytes(path.read_bytes()), False),
    "mtime-changed": (lambda path: os.utime(path, (1_000_000_000, 1_000_000_000)), False),
    "comment-added": (lambda path: path.write_text("# a comment\n" + path.read_text()), True),
    "reformatted": (
        lambda path: path.write_text(
            "{apiVersion: v1, kind: Service, metadata: {name: a, namespace: ns},"
            " spec: {ports: [{name: http, port: 80}]}}\n"
        ),
        True,
    ),
}


@pytest.mark.parametrize("edit", UNCHANGED)
def test_unchanged_content_does_not_notify_the_store(h: Harness, caplog: pytest.LogCaptureFixture, edit: str) -> None:
    path = h.write("one.yaml", service("a", 80))
    h.source.scan()
    revision, notified = h.store.revision, h.notified
    apply, reparsed = UNCHANGED[edit]

    apply(path)
    with caplog.at_level(logging.INFO, logger=LOGGER):
        assert h.source.scan() is False

    assert (h.store.revision, h.notified) == (revision, notified)
    assert h.ports() == {SVC_A: 80}
    assert any("event=file_loaded" in m for m in caplog.messages) is reparsed


def test_changed_file_replaces_its_resources(h: Harness) -> None:
    h.write("one.yaml", service("a", 80) + "---\n" + service("b", 80))
    h.source.scan()
    revision = h.store.revision

    h.write("one.yaml", service("a", 81) + "---\n" + service("c", 80))

    assert h.source.scan() is True
    assert h.ports() == {SVC_A: 81, SVC_C: 80}
    assert h.store.revision == revision + 1


@pytest.mark.parametrize(
    ("broken", "where"),
    [
        pytest.param(service("a", 99) + "  selector: {app: [x\n", "line 11 column 1", id="unclosed-flow"),
        pytest.param("apiVersion: v1\nkind: Service\n\tmetadata: {}\n", "line 3 column 1", id="tab"),
    ],
)
def test_malformed_yaml_keeps_the_files_previous_resources(
    h: Harness, caplog: pytest.LogCaptureFixture, broken: str, where: str
) -> None:
    h.write("one.yaml", service("a", 80))
    h.write("two.yaml", service("b", 80))
    h.source.scan()
    revision = h.store.revision

    h.write("one.yaml", broken)
    with caplog.at_level(logging.INFO, logger=LOGGER):
        assert h.source.scan() is False

    assert h.ports() == {SVC_A: 80, SVC_B: 80}
    assert h.store.revision == revision
    [err] = h.store.errors()
    assert err.field == where
    assert err.origin.endswith("one.yaml")
    assert "malformed YAML" in err.message
    assert any(f"field={where}" in m and "event=invalid_resource" in m for m in caplog.messages)

    # Fixing the file clears the error and applies the new content.
    h.write("one.yaml", service("a", 81))
    assert h.source.scan() is True
    assert h.ports() == {SVC_A: 81, SVC_B: 80}
    assert h.store.errors() == []


def test_invalid_document_keeps_that_resource_while_others_in_the_file_update(h: Harness) -> None:
    h.write("one.yaml", service("a", 80) + "---\n" + service("b", 80))
    h.source.scan()

    h.write("one.yaml", service("a", 70000) + "---\n" + service("b", 81))
    assert h.source.scan() is True
    assert h.ports() == {SVC_A: 80, SVC_B: 81}
    [err] = h.store.errors()
    assert (err.key, err.field) == (SVC_A, "spec.ports[0].port")

    # The kept version is the last good one, through further edits of the file.
    h.write("one.yaml", service("a", 70000) + "---\n" + service("b", 82))
    h.source.scan()
    assert h.ports() == {SVC_A: 80, SVC_B: 82}


def test_deleting_a_file_removes_its_resources_and_errors(h: Harness) -> None:
    one = h.write("one.yaml", service("a", 80) + "---\napiVersion: v1\nkind: Service\n")
    h.write("two.yaml", service("b", 80))
    h.source.scan()
    assert len(h.store.errors()) == 1
    revision = h.store.revision

    one.unlink()

    assert h.source.scan() is True
    assert h.ports() == {SVC_B: 80}
    assert h.store.errors() == []
    assert h.store.revision == revision + 1
    # Gone for good: a later scan has nothing to do, and re-adding the file loads it again.
    assert h.source.scan() is False
    h.write("one.yaml", service("a", 80))
    assert h.source.scan() is True
    assert h.ports() == {SVC_A: 80, SVC_B: 80}


def test_document_without_identity_is_reported_as_document_n(h: Harness, caplog: pytest.LogCaptureFixture) -> None:
    h.write("one.yaml", service("a", 80) + "---\n" + service("b", 80) + "---\napiVersion: v1\nkind: Service\n")
    with caplog.at_level(logging.INFO, logger=LOGGER):
        h.source.scan()

    assert h.ports() == {SVC_A: 80, SVC_B: 80}
    [err] = h.store.errors()
    assert err.key is None
    assert err.field == "document 3: metadata"
    assert any("resource=- field=document 3: metadata" in m for m in caplog.messages)
