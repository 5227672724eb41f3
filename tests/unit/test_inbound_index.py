"""The inbound index kept up to date change by change equals one built from scratch, and says which
addresses it touched (the push looks again only at those proxies)."""

from __future__ import annotations

import random

import pytest

from benchmarks.synthetic import mesh
from meshd.api.kube import EndpointSlice, Service
from meshd.generate.inbound_index import build_index, update_index
from meshd.model.state import WorldState


def _slice(name: str, namespace: str, addresses: list[str], target: int) -> EndpointSlice:
    return EndpointSlice.model_validate(
        {
            "apiVersion": "discovery.k8s.io/v1",
            "kind": "EndpointSlice",
            "metadata": {"name": f"{name}-1", "namespace": namespace, "labels": {"kubernetes.io/service-name": name}},
            "ports": [{"name": "http", "port": target}],
            "endpoints": [{"addresses": [a]} for a in addresses],
        }
    )


@pytest.mark.parametrize("seed", range(5))
def test_an_updated_index_equals_a_fresh_one_after_random_endpoint_changes(seed: int) -> None:
    rng = random.Random(seed)
    state = WorldState(domain_suffix="cluster.local")
    state.apply({r.key: r for r in mesh(services=12, namespaces=3)})
    before = state.world()
    index = build_index(before)
    pool = [f"10.7.0.{i}" for i in range(1, 9)]  # few addresses: workloads backing several services
    for step in range(60):
        i = rng.randrange(12)
        name, namespace = f"svc-{i}", f"ns-{i % 3}"
        if rng.random() < 0.1:  # a service changes: the entries hold it
            port = rng.choice([9080, 9081])
            svc = Service.model_validate(
                {
                    "apiVersion": "v1",
                    "kind": "Service",
                    "metadata": {"name": name, "namespace": namespace},
                    "spec": {"ports": [{"name": "http", "port": port, "targetPort": 8080}]},
                }
            )
            change = {svc.key: svc}
        else:
            addresses = rng.sample(pool, rng.randint(0, 3))
            eps = _slice(name, namespace, addresses, rng.choice([8080, 8081]))
            change = {eps.key: eps}
        state.apply(change)
        world = state.world()
        updated = update_index(index, before=before, world=world)
        fresh = build_index(world)
        assert dict(updated.entries) == dict(fresh.entries), step
        assert dict(updated.keys) == dict(fresh.keys), step
        if updated.touched is not None:
            differ = {
                a
                for a in updated.entries.keys() | index.entries.keys()
                if updated.entries.get(a) != index.entries.get(a)
            }
            assert differ <= updated.touched, step
        index, before = updated, world


def test_an_endpoint_change_touches_only_its_addresses() -> None:
    state = WorldState(domain_suffix="cluster.local")
    state.apply({r.key: r for r in mesh(services=50, namespaces=5)})
    before = state.world()
    index = build_index(before)
    eps = _slice("svc-7", "ns-2", ["10.7.0.1"], 8080)
    state.apply({eps.key: eps})
    updated = update_index(index, before=before, world=state.world())
    assert updated.touched == {"10.7.0.1", "10.0.7.1", "10.0.7.2", "10.0.7.3"}  # the new and the old addresses
    assert updated.entries["10.0.8.1"] is index.entries["10.0.8.1"]  # the rest carried as is
