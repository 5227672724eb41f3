"""The per-World walks that follow the World's changes (WorldChanges) instead of walking the mesh give what a
walk over the whole mesh gives, after random pod changes that empty and fill namespaces."""

from __future__ import annotations

import random

import pytest

from meshd.api.meta import Resource, ResourceKey
from meshd.api.parse import parse_resource
from meshd.generate.checks import WorldChecks
from meshd.generate.scope_keys import ScopeKeys
from meshd.generate.tls_files import FileCheck
from meshd.model.state import WorldState
from meshd.translate.proxy import parse_node_id

NAMESPACES = ("a", "b", "c", "d")


def _pod(ns: str, name: str, ip: str) -> Resource:
    return parse_resource(
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name, "namespace": ns, "labels": {"app": name}},
            "status": {"podIP": ip},
        }
    )


@pytest.mark.parametrize("seed", range(5))
def test_namespaces_with_workloads_follow_the_changes(seed: int) -> None:
    rng = random.Random(seed)
    state = WorldState(domain_suffix="cluster.local")
    checks: WorldChecks | None = None
    pods: dict[ResourceKey, Resource] = {}
    followed = 0
    for step in range(80):
        changes: dict[ResourceKey, Resource | None] = {}
        for _ in range(rng.randint(1, 3)):
            ns, name = rng.choice(NAMESPACES), f"p{rng.randint(0, 2)}"
            pod = _pod(ns, name, f"10.{NAMESPACES.index(ns)}.0.{rng.randint(1, 4)}")  # some addresses shared
            if pod.key in pods and rng.random() < 0.5:
                del pods[pod.key]
                changes[pod.key] = None
            else:
                pods[pod.key] = changes[pod.key] = pod
        state.apply(changes)
        world = state.world()
        followed += checks is not None and world.changes_since(checks.world) is not None
        checks = WorldChecks(world, root_namespace="istio-system", files=FileCheck(world, read=None), previous=checks)
        checks.run(lambda vs: [])
        assert checks.namespaces is not None
        assert checks.namespaces[2] == frozenset(w.namespace for w in world.workloads.values()), step
    assert followed >= 70


def test_proxies_of_one_scope_share_one_key_object_across_generations() -> None:
    """Pods of one namespace with other labels are of one scope: they get the very same ScopeKey object (the
    hub groups 5000 connections by it: equal objects would be compared field by field), and so does a later
    generation whose keys were computed again (a Sidecar change elsewhere)."""
    state = WorldState(domain_suffix="cluster.local")
    pods = [_pod("a", f"p{i}", f"10.0.0.{i + 1}") for i in range(3)]
    state.apply({p.key: p for p in pods})
    proxies = [parse_node_id(f"sidecar~10.0.0.{i + 1}~p{i}.a~a.svc.cluster.local") for i in range(3)]
    keys = ScopeKeys(state.world(), root_namespace="istio-system")
    first = [keys.for_proxy(p) for p in proxies]
    assert first[0] is first[1] is first[2]
    sidecar = parse_resource(
        {
            "apiVersion": "networking.istio.io/v1",
            "kind": "Sidecar",
            "metadata": {"name": "default", "namespace": "b"},
            "spec": {"egress": [{"hosts": ["./*"]}]},
        }
    )
    state.apply({sidecar.key: sidecar})
    again = ScopeKeys(state.world(), root_namespace="istio-system", previous=keys)
    assert not again.carried  # computed again: a Sidecar changed
    assert all(again.for_proxy(p) is first[0] for p in proxies)
