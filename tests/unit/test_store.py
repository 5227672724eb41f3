"""ConfigStore: resources by origin; subscribers are told only when something actually changed."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from meshd.api.meta import InvalidResource, Resource, ResourceKey
from meshd.api.parse import parse_resource
from meshd.model.store import ConfigStore


def service(name: str, port: int = 80, namespace: str = "ns", version: str = "") -> Resource:
    return parse_resource(
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": name, "namespace": namespace, "resourceVersion": version},
            "spec": {"ports": [{"port": port}]},
        }
    )


def by_key(*resources: Resource) -> dict[ResourceKey, Resource]:
    return {r.key: r for r in resources}


class Recorder:
    def __init__(self, store: ConfigStore) -> None:
        self.calls = 0
        store.subscribe(self)

    def __call__(self) -> None:
        self.calls += 1


@pytest.fixture
def store() -> ConfigStore:
    s = ConfigStore()
    s.replace_origin("a.yaml", by_key(service("x"), service("y")))
    return s


@pytest.mark.parametrize(
    ("replacement", "changed"),
    [
        pytest.param(lambda: by_key(service("x"), service("y")), False, id="equal-objects-newly-parsed"),
        pytest.param(lambda: by_key(service("y"), service("x")), False, id="same-content-other-order"),
        pytest.param(lambda: by_key(service("x"), service("y", port=81)), True, id="one-changed"),
        pytest.param(lambda: by_key(service("x")), True, id="one-removed"),
        pytest.param(lambda: by_key(service("x"), service("y"), service("z")), True, id="one-added"),
        pytest.param(lambda: {}, True, id="emptied"),
        # a status write moves only the resourceVersion: nothing to translate, but readers (the status
        # writer) see the new version
        pytest.param(lambda: by_key(service("x", version="7"), service("y")), False, id="only-version-moved"),
        pytest.param(lambda: by_key(service("x", port=81, version="7"), service("y")), True, id="version-and-spec"),
    ],
)
def test_replace_origin_notifies_only_on_change(
    store: ConfigStore, replacement: Callable[[], dict[ResourceKey, Resource]], changed: bool
) -> None:
    recorder = Recorder(store)
    revision = store.revision
    resources = replacement()

    assert store.replace_origin("a.yaml", resources) is changed

    assert recorder.calls == int(changed)
    assert store.revision == revision + int(changed)
    assert {r.key: r for _, r in store.resources()} == resources
    if not changed:
        assert store.drain_changes() == resources  # the fixture's load, in its newest copies


def test_replace_origin_with_identical_content_still_records_errors(store: ConfigStore) -> None:
    recorder = Recorder(store)
    err = InvalidResource(ResourceKey("Service", "ns", "bad"), "spec", "nope", "a.yaml")

    assert store.replace_origin("a.yaml", by_key(service("x"), service("y")), [err]) is False
    assert store.errors() == [err]
    assert store.replace_origin("a.yaml", by_key(service("x"), service("y"))) is False
    assert store.errors() == []
    assert recorder.calls == 0


def test_resources_are_sorted_by_key() -> None:
    s = ConfigStore()
    s.replace_origin("b.yaml", by_key(service("b2"), service("b1")))
    s.replace_origin("a.yaml", by_key(service("a1", namespace="zz"), service("a2", namespace="aa")))
    assert [(o, r.metadata.name) for o, r in s.resources()] == [
        ("a.yaml", "a2"),
        ("b.yaml", "b1"),
        ("b.yaml", "b2"),
        ("a.yaml", "a1"),
    ]


def test_drain_changes_reports_each_changed_winner_once() -> None:
    s = ConfigStore()
    first, second = service("x"), service("y")
    s.replace_origin("a.yaml", by_key(first, second))
    assert {k.name: r for k, r in s.drain_changes().items()} == {"x": first, "y": second}
    assert s.drain_changes() == {}

    # A copy in a later origin does not win; removing the winner promotes it; removing all deletes.
    copy = service("x")
    s.replace_origin("b.yaml", by_key(copy))
    assert s.drain_changes() == {}
    s.replace_origin("a.yaml", by_key(second))
    assert {k.name: r for k, r in s.drain_changes().items()} == {"x": copy}
    s.remove_origin("b.yaml")
    assert {k.name: r for k, r in s.drain_changes().items()} == {"x": None}


def test_an_unchanged_resource_in_a_rewritten_origin_is_not_a_change() -> None:
    s = ConfigStore()
    kept, edited = service("kept"), service("edited")
    s.replace_origin("a.yaml", by_key(kept, edited))
    s.drain_changes()
    s.replace_origin("a.yaml", by_key(kept, service("edited", namespace="other")))
    assert sorted((k.namespace, k.name, r is not None) for k, r in s.drain_changes().items()) == [
        ("ns", "edited", False),
        ("other", "edited", True),
    ]


def test_an_equal_copy_in_a_rewritten_origin_is_not_a_change_and_keeps_the_held_object() -> None:
    """A rewritten file is parsed again whole: its other resources come back as equal new objects."""
    s = ConfigStore()
    kept = service("kept")
    s.replace_origin("a.yaml", by_key(kept, service("edited")))
    s.drain_changes()
    s.replace_origin("a.yaml", by_key(service("kept"), service("edited", port=81)))
    assert [k.name for k in s.drain_changes()] == ["edited"]
    assert next(r for _, r in s.resources() if r.metadata.name == "kept") is kept  # consumers compare identity


@pytest.mark.parametrize(
    ("origin", "removed"),
    [pytest.param("a.yaml", True, id="known-origin"), pytest.param("unknown.yaml", False, id="unknown-origin")],
)
def test_remove_origin(store: ConfigStore, origin: str, removed: bool) -> None:
    store.replace_origin("b.yaml", by_key(service("z")))
    recorder = Recorder(store)
    revision = store.revision

    assert store.remove_origin(origin) is removed

    assert recorder.calls == int(removed)
    assert store.revision == revision + int(removed)
    expected = {"b.yaml"} if removed else {"a.yaml", "b.yaml"}
    assert {o for o, _ in store.resources()} == expected
    # Removing again is a no-op.
    assert store.remove_origin(origin) is False
    assert recorder.calls == int(removed)


def test_remove_origin_drops_its_errors(store: ConfigStore) -> None:
    err = InvalidResource(None, "line 1 column 1", "malformed YAML: x", "a.yaml")
    store.replace_origin("a.yaml", by_key(service("x"), service("y")), [err])
    assert store.errors() == [err]
    store.remove_origin("a.yaml")
    assert store.errors() == []


def test_mark_loaded_notifies_once() -> None:
    s = ConfigStore()
    recorder = Recorder(s)
    assert s.loaded is False

    s.mark_loaded()
    s.mark_loaded()
    s.mark_loaded()

    assert s.loaded is True
    assert recorder.calls == 1
    assert s.revision == 1


def test_every_subscriber_is_notified() -> None:
    s = ConfigStore()
    first, second = Recorder(s), Recorder(s)
    s.replace_origin("a.yaml", by_key(service("x")))
    assert (first.calls, second.calls) == (1, 1)


def test_of_kind_gives_the_winners_of_one_kind_sorted() -> None:
    s = ConfigStore()
    s.replace_origin("a.yaml", by_key(service("y"), service("x")))
    s.replace_origin("b.yaml", by_key(service("x", port=81)))  # contested: a.yaml's copy wins
    route = {"hosts": ["x"], "http": [{"route": [{"destination": {"host": "x"}}]}]}
    meta = {"name": "v", "namespace": "ns"}
    vs = parse_resource({"apiVersion": "networking.istio.io/v1", "kind": "VirtualService", "metadata": meta,
                         "spec": route})  # fmt: skip
    s.replace_origin("c.yaml", {vs.key: vs})
    assert [(r.metadata.name, r.spec.ports[0].port) for r in s.of_kind("Service")] == [("x", 80), ("y", 80)]  # type: ignore[attr-defined]
    assert s.of_kind("VirtualService") == [vs]
    s.remove_origin("a.yaml")
    assert [(r.metadata.name, r.spec.ports[0].port) for r in s.of_kind("Service")] == [("x", 81)]  # type: ignore[attr-defined]
    s.remove_origin("c.yaml")
    assert s.of_kind("VirtualService") == [] and s.of_kind("Pod") == []
