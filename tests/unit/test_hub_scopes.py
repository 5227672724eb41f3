"""The hub keeps its connections filed by scope between pushes: a push asks the generation about each scope
once, and a scope whose proxies all keep what they hold (the generation answers a bare True) costs no look at
any of its connections. A proxy whose scope moves is filed under its new one; one that disconnects, under
none; one whose first build failed is looked up at every push until it is built."""

from __future__ import annotations

from collections.abc import Hashable, Sequence

from meshd.translate.proxy import Proxy, parse_node_id
from meshd.xds.hub import Hub
from meshd.xds.resource import CLUSTER, Snapshot, make_raw_resource
from meshd.xds.stream import SotwStream


def _snapshot(tag: str) -> Snapshot:
    res = make_raw_resource(f"cluster-{tag}", CLUSTER, tag.encode())
    return Snapshot(resources={CLUSTER: {res.name: res}})


class Generation:
    """Scope = the proxy's namespace unless `moved` says otherwise; `kept` scopes answer True."""

    def __init__(self, *, kept: set[str], moved: dict[str, str] | None = None, failing: set[str] | None = None):
        self.revision = 1
        self.kept, self.moved, self.failing = kept, moved or {}, failing or set()
        self.asked: list[Hashable] = []  # scopes asked about, in order
        self.held: dict[Hashable, list[str]] = {}  # scope -> the pods asked about under it
        self.lists: dict[Hashable, Sequence[tuple[Proxy, Snapshot]]] = {}  # scope -> the very list asked with
        self.looked_up: list[str] = []  # pods whose scope key or snapshot was looked up
        self._snaps: dict[str, Snapshot] = {}

    def scope_key(self, proxy: Proxy) -> Hashable:
        self.looked_up.append(proxy.pod)
        return self.moved.get(proxy.pod, proxy.namespace)

    def snapshot(self, proxy: Proxy) -> Snapshot:
        self.looked_up.append(proxy.pod)
        if proxy.pod in self.failing:
            raise RuntimeError("build failed")
        key = str(self.moved.get(proxy.pod, proxy.namespace))
        return self._snaps.setdefault(key, _snapshot(key))

    def still_current_many(self, key: Hashable, held: Sequence[tuple[Proxy, Snapshot]]) -> list[bool] | bool:
        self.asked.append(key)
        self.held[key] = sorted(p.pod for p, _ in held)
        self.lists[key] = held
        return True if key in self.kept else [False] * len(held)


def _proxy(pod: str, namespace: str) -> Proxy:
    return parse_node_id(f"sidecar~10.0.0.1~{pod}.{namespace}~{namespace}.svc.cluster.local")


def _connect(hub: Hub, pod: str, namespace: str):  # type: ignore[no-untyped-def]
    return hub.connect(proxy=_proxy(pod, namespace), stream=SotwStream(nonce_prefix="t"), now=0.0)


def test_a_push_asks_each_scope_once_and_looks_at_no_proxy_of_a_kept_scope() -> None:
    hub = Hub()
    hub.publish(Generation(kept=set()), changed_at=0.0)
    for ns in ("a", "b", "c"):
        for i in range(4):
            _connect(hub, f"{ns}-{i}", ns)
    generation = Generation(kept={"a", "b"})
    woken = hub.publish(generation, changed_at=1.0)
    assert sorted(map(str, generation.asked)) == ["a", "b", "c"]
    assert sorted(set(generation.looked_up)) == ["c-0", "c-1", "c-2", "c-3"]
    assert woken == 4


def test_a_proxy_whose_scope_moved_is_asked_about_under_its_new_scope() -> None:
    hub = Hub()
    hub.publish(Generation(kept=set()), changed_at=0.0)
    conns = [_connect(hub, f"a-{i}", "a") for i in range(3)]
    hub.publish(Generation(kept=set(), moved={"a-0": "elsewhere"}), changed_at=1.0)
    assert conns[0].scope_key == "elsewhere"
    generation = Generation(kept={"a"}, moved={"a-0": "elsewhere"})
    hub.publish(generation, changed_at=2.0)
    assert generation.held == {"a": ["a-1", "a-2"], "elsewhere": ["a-0"]}
    assert generation.looked_up == ["a-0", "a-0"]  # the one proxy of the scope not kept


def test_a_disconnected_proxy_is_filed_under_no_scope() -> None:
    hub = Hub()
    hub.publish(Generation(kept=set()), changed_at=0.0)
    only = _connect(hub, "x-0", "x")
    _connect(hub, "y-0", "y")
    hub.disconnect(only)
    generation = Generation(kept=set())
    hub.publish(generation, changed_at=1.0)
    assert generation.asked == ["y"] and generation.looked_up == ["y-0", "y-0"]


def test_a_proxy_whose_first_build_failed_is_looked_up_until_it_is_built() -> None:
    hub = Hub()
    hub.publish(Generation(kept=set(), failing={"a-0"}), changed_at=0.0)
    conn = _connect(hub, "a-0", "a")
    assert conn.snapshot is None and conn.proxy.node_id in hub.failures
    failing = Generation(kept={"a"}, failing={"a-0"})
    hub.publish(failing, changed_at=1.0)
    assert failing.asked == [] and "a-0" in failing.looked_up and conn.snapshot is None
    fixed = Generation(kept={"a"})
    assert hub.publish(fixed, changed_at=2.0) == 1
    assert conn.snapshot is not None and conn.scope_key == "a"
    later = Generation(kept={"a"})
    hub.publish(later, changed_at=3.0)
    assert later.asked == ["a"] and later.looked_up == []


def test_an_unchanged_scope_is_asked_about_with_the_same_list_until_a_proxy_of_it_comes_goes_or_changes() -> None:
    hub = Hub()
    hub.publish(Generation(kept=set()), changed_at=0.0)
    conns = {pod: _connect(hub, pod, ns) for pod, ns in (("a-0", "a"), ("a-1", "a"), ("b-0", "b"))}
    first = Generation(kept={"a", "b"})
    hub.publish(first, changed_at=1.0)
    second = Generation(kept={"a", "b"})
    hub.publish(second, changed_at=2.0)
    assert second.lists["a"] is first.lists["a"] and second.lists["b"] is first.lists["b"]
    assert [(p.pod, s) for p, s in second.lists["a"]] == [
        ("a-0", conns["a-0"].snapshot),
        ("a-1", conns["a-1"].snapshot),
    ]
    _connect(hub, "a-2", "a")  # one comes
    third = Generation(kept={"b"})  # ... and a's proxies get new snapshots
    hub.publish(third, changed_at=3.0)
    assert third.lists["a"] is not second.lists["a"] and third.held["a"] == ["a-0", "a-1", "a-2"]
    assert third.lists["b"] is second.lists["b"]
    fourth = Generation(kept={"a", "b"})
    hub.publish(fourth, changed_at=4.0)
    assert fourth.lists["a"] is not third.lists["a"]  # they were given other snapshots
    now = sorted((c.proxy.pod, id(c.snapshot)) for c in hub.connections.values() if c.proxy.namespace == "a")
    assert sorted((p.pod, id(s)) for p, s in fourth.lists["a"]) == now
    hub.disconnect(conns["b-0"])  # one goes: its scope is asked about no more
    fifth = Generation(kept={"a", "b"})
    hub.publish(fifth, changed_at=5.0)
    assert fifth.lists["a"] is fourth.lists["a"] and "b" not in fifth.lists
