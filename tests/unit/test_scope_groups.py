"""A push adopts the proxy groups of a scope it leaves as it was all at once (generate/scope_groups.py): no proxy
of it is carried one by one. It does not when a proxy of the scope left (the scope is filed again without it,
then adopted at the next push), nor when one of its addresses moved (that proxy is rebuilt, the rest kept).
Every adoption is checked in check mode, and a random run compares every connection with a fresh build."""

from __future__ import annotations

import random
from collections.abc import Iterator

import pytest

from meshd.api.meta import Resource, ResourceKey
from meshd.generate.generator import ConfigGenerator
from meshd.translate.proxy import Proxy
from meshd.xds.hub import Connection, Hub
from meshd.xds.stream import SotwStream
from tests.unit.test_cache import OPTIONS, Mesh, _content, _docs, _proxy, _resources


@pytest.fixture
def kept_one_by_one(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """The pods `_keep` is asked about (the one-by-one path), push after push."""
    asked: list[str] = []
    keep = ConfigGenerator._keep

    def recording(self: ConfigGenerator, proxy: Proxy, *args: object) -> bool:
        asked.append(f"{proxy.pod}.{proxy.namespace}")
        return keep(self, proxy, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(ConfigGenerator, "_keep", recording)
    yield asked


def _of(pods: list[str], namespace: str) -> list[str]:
    return sorted(pod for pod in pods if pod.endswith(f".{namespace}"))


class PlainMesh(Mesh):
    """Generations without check mode: an adoption that should not have happened shows as a stale snapshot (in
    check mode it raises, and the hub, asking again proxy by proxy, recovers)."""

    def apply(self, resources: list[Resource], *, deleted: tuple[ResourceKey, ...] = ()) -> ConfigGenerator:
        self.state.apply({**{r.key: r for r in resources}, **dict.fromkeys(deleted)})
        self.generator = ConfigGenerator(self.state.world(), options=OPTIONS, previous=self.generator)
        return self.generator


def _mesh(hub: Hub, *, check: bool = True) -> tuple[Mesh, dict[str, Connection]]:
    mesh = Mesh() if check else PlainMesh()
    assert mesh.generator is not None
    hub.publish(mesh.generator, changed_at=0.0)
    conns = {
        f"client-{n}.{ns}": hub.connect(proxy=_proxy(ns, n), stream=SotwStream(nonce_prefix=f"{ns}{n}"), now=0.0)
        for ns in ("a", "b")
        for n in (1, 2, 3)
    }
    return mesh, conns


def _endpoint_change(mesh: Mesh, ns: str, step: int) -> ConfigGenerator:
    return mesh.apply(_resources(_docs(ns, "s2", ["10.0.0.2", f"10.0.{step}.3"])[1:2]))


def test_an_untouched_scope_is_adopted_whole(kept_one_by_one: list[str]) -> None:
    hub = Hub()
    mesh, conns = _mesh(hub)
    before = {pod: conn.snapshot for pod, conn in conns.items()}
    generator = _endpoint_change(mesh, "b", 1)
    assert hub.publish(generator, changed_at=1.0) == 3  # the proxies of b
    assert _of(kept_one_by_one, "a") == []  # adopted at once (check mode built each again: the same snapshot)
    for pod, conn in conns.items():
        assert (conn.snapshot is before[pod]) == pod.endswith(".a"), pod
        assert conn.push_pending == pod.endswith(".b"), pod
    # ... and the next push adopts what this one filed: a again, and now b (untouched by a change in a)
    kept_one_by_one.clear()
    generator = _endpoint_change(mesh, "a", 2)
    assert hub.publish(generator, changed_at=2.0) == 3
    assert _of(kept_one_by_one, "b") == []
    fresh = ConfigGenerator(generator.world, options=OPTIONS)
    for conn in conns.values():
        assert conn.snapshot is not None and _content(conn.snapshot) == _content(fresh.snapshot(conn.proxy))


def test_a_scope_a_proxy_left_is_filed_again_without_it(kept_one_by_one: list[str]) -> None:
    hub = Hub()
    mesh, conns = _mesh(hub)
    hub.publish(_endpoint_change(mesh, "b", 1), changed_at=1.0)
    hub.disconnect(conns.pop("client-2.a"))
    kept_one_by_one.clear()
    hub.publish(_endpoint_change(mesh, "b", 2), changed_at=2.0)
    assert _of(kept_one_by_one, "a") == ["client-1.a", "client-3.a"]  # its filing held client-2 too
    kept_one_by_one.clear()
    hub.publish(_endpoint_change(mesh, "b", 3), changed_at=3.0)
    assert _of(kept_one_by_one, "a") == []  # filed without it: adopted whole again
    # a proxy that comes (back) is filed with the groups already there: still adopted whole
    conns["client-2.a"] = hub.connect(proxy=_proxy("a", 2), stream=SotwStream(nonce_prefix="back"), now=4.0)
    kept_one_by_one.clear()
    hub.publish(_endpoint_change(mesh, "b", 4), changed_at=4.0)
    assert _of(kept_one_by_one, "a") == []


@pytest.mark.parametrize("check", [True, False])
def test_a_moved_address_keeps_its_scope_from_being_adopted(kept_one_by_one: list[str], check: bool) -> None:
    hub = Hub()
    mesh, conns = _mesh(hub, check=check)
    hub.publish(_endpoint_change(mesh, "b", 1), changed_at=1.0)
    held = conns["client-3.a"].snapshot
    # proxy 3 of namespace a now backs a service of b: its inbound side changes, its scope's layers do not
    generator = mesh.apply(_resources(_docs("b", "s1", ["10.0.0.1", _proxy("a", 3).ip])[1:2]))
    kept_one_by_one.clear()
    hub.publish(generator, changed_at=2.0)
    assert _of(kept_one_by_one, "a") == ["client-1.a", "client-2.a"]  # one by one; client-3 rebuilt
    assert conns["client-3.a"].snapshot is not held and conns["client-3.a"].push_pending
    fresh = ConfigGenerator(generator.world, options=OPTIONS)
    assert _content(conns["client-3.a"].snapshot) == _content(fresh.snapshot(_proxy("a", 3)))


@pytest.mark.parametrize("check", [True, False])
@pytest.mark.parametrize("seed", range(4))
def test_every_connection_holds_what_a_fresh_build_gives_while_scopes_are_adopted(
    seed: int, check: bool, kept_one_by_one: list[str]
) -> None:
    rng = random.Random(seed)
    hub = Hub()
    mesh, conns = _mesh(hub, check=check)
    adoptions = 0
    for step in range(40):
        pick = rng.random()
        ns = rng.choice("ab")
        if pick < 0.5:
            generator = _endpoint_change(mesh, ns, step)
        elif pick < 0.65:  # an address of a proxy backs a service (or stops): it moved
            ips = ["10.0.0.1"] + [_proxy(rng.choice("ab"), rng.choice([1, 2, 3])).ip] * rng.randint(0, 1)
            generator = mesh.apply(_resources(_docs(ns, "s1", ips)[1:2]))
        elif pick < 0.8:  # a route's weights
            generator = mesh.apply(_resources(_docs(ns, "s1", ["10.0.0.1"], weight=rng.choice([10, 50, 80]))[3:]))
        else:  # a proxy leaves or comes back
            pod = f"client-{rng.choice([1, 2, 3])}.{ns}"
            if pod in conns:
                hub.disconnect(conns.pop(pod))
            else:
                proxy = _proxy(ns, int(pod[7]))
                conns[pod] = hub.connect(proxy=proxy, stream=SotwStream(nonce_prefix=f"{step}"), now=float(step))
            generator = _endpoint_change(mesh, "ab"[ns == "a"], step)
        kept_one_by_one.clear()
        hub.publish(generator, changed_at=float(step))
        assert not hub.failures, hub.failures
        adoptions += not _of(kept_one_by_one, "ab"[ns == "a"])  # the namespace not named
        fresh = ConfigGenerator(generator.world, options=OPTIONS)
        for pod, conn in conns.items():
            assert conn.snapshot is not None
            assert _content(conn.snapshot) == _content(fresh.snapshot(conn.proxy)), (step, pod)
    assert adoptions >= 10, adoptions  # the random changes did leave scopes to adopt
