"""Checked cache keys (generate.reads): a reused entry whose key misses an input its build read fails,
naming the cache and the read; a memo spec whose key misses an input fails, naming the resource."""

from __future__ import annotations

from typing import Any

import pytest
from envoy.config.cluster.v3 import cluster_pb2

from meshd.api.parse import parse_resource
from meshd.generate.layers import LayerCache
from meshd.generate.memo import ResourceMemo
from meshd.generate.reads import Context, MissedInput, Tracer
from meshd.model.state import WorldState
from meshd.model.world import World
from meshd.translate.spec import Spec


def _world(state: WorldState, ips: list[str]) -> World:
    docs: list[dict[str, Any]] = [
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "s", "namespace": "a"},
         "spec": {"ports": [{"name": "http", "port": 80}]}},
        {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
         "metadata": {"name": "s", "namespace": "a", "labels": {"kubernetes.io/service-name": "s"}},
         "ports": [{"name": "http", "port": 80}], "endpoints": [{"addresses": [ip]} for ip in ips]},
    ]  # fmt: skip
    state.apply({r.key: r for r in (parse_resource(d) for d in docs)})
    return state.world()


def _count(ctx: Context, previous: int | None) -> tuple[int, list[Any]]:
    return len(ctx.world.endpoints.get(("s.a.svc.cluster.local", 80), ())), []


def test_reusing_an_entry_whose_key_misses_a_read_input_fails_naming_the_read() -> None:
    state, tracer = WorldState(domain_suffix="cluster.local"), Tracer()
    first = LayerCache[str, int]("counts", previous=None, memo=ResourceMemo(), tracer=tracer)
    assert first.get("s", context=Context(_world(state, ["10.0.0.1"])), build=_count) == 1
    world = _world(state, ["10.0.0.1", "10.0.0.2"])
    # a key that covers the endpoints: rebuilt, no complaint
    covered = LayerCache[str, int]("counts", previous=first, memo=ResourceMemo(), tracer=tracer)
    endpoints = world.endpoints.get(("s.a.svc.cluster.local", 80))
    assert covered.get("s", inputs=lambda: ("s", endpoints), context=Context(world), build=_count) == 2
    # a key that misses them (the group alone, as before): the reuse is caught
    missed = LayerCache[str, int]("counts", previous=first, memo=ResourceMemo(), tracer=tracer)
    with pytest.raises(MissedInput, match=r"cache 'counts' .* world\.endpoints\[\('s\.a\.svc\.cluster\.local', 80\)\]"):
        missed.get("s", context=Context(world), build=_count)
    # without a tracer nothing is checked (production): the stale value is served
    unchecked = LayerCache[str, int]("counts", previous=first, memo=ResourceMemo(), tracer=None)
    assert unchecked.get("s", context=Context(world), build=_count) == 1


def test_a_memo_spec_whose_key_misses_an_input_fails_naming_the_resource() -> None:
    timeout = [1]

    def spec() -> Spec:
        def build() -> cluster_pb2.Cluster:
            message = cluster_pb2.Cluster(name="c")
            message.connect_timeout.seconds = timeout[0]
            return message

        return Spec("c", ("cds", "c"), build)  # the key leaves the timeout out

    first = ResourceMemo(check=True)
    first.resolve([spec()])
    ResourceMemo(first, check=True).resolve([spec()])  # same input: reused and verified
    timeout[0] = 2
    with pytest.raises(MissedInput, match="memo entry 'c' reused under spec key"):
        ResourceMemo(first, check=True).resolve([spec()])
