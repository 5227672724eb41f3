"""Informers: one shared watch per kind whatever the number of consumers; synced once every kind
has listed, an absent CRD counting as listed (it never blocks readiness)."""

from __future__ import annotations

import asyncio
import random

from meshd.kube.informers import Informers
from meshd.kube.kinds import watched_kinds
from meshd.kube.reflector import ReflectorSettings
from tests.unit.kube.conftest import LOG, Api, Recorder, service, until


async def test_one_watch_per_kind_shared_by_every_consumer(api: Api) -> None:
    api.server.remove_crd("security.istio.io", "RequestAuthentication")  # absent: synced empty
    informers = Informers(
        kinds=watched_kinds(namespace="istio-system"),
        transport=api.transport,
        clock=api.clock,
        log=LOG,
        settings=ReflectorSettings(recheck_s=3600),
        rand=random.Random(1),
    )
    first, second = Recorder(), Recorder()
    informers.add_handler("Service", first)
    informers.add_handler("Service", second)
    synced: list[bool] = []
    informers.on_synced(lambda: synced.append(True))
    api.tasks.append(asyncio.create_task(informers.run()))
    await until(lambda: informers.synced, "every kind listed")
    assert synced == [True]
    # (the fake API server serves no Gateway API kinds: absent as well)
    watched = [k for k, r in informers.reflectors.items() if k != "RequestAuthentication" and not r.absent]
    gateway_api = {k for k, r in informers.reflectors.items() if r.spec.group == "gateway.networking.k8s.io"}
    assert set(informers.reflectors) - set(watched) == {"RequestAuthentication", *gateway_api}
    await until(lambda: api.server.open_watches() == len(watched), "one watch per present kind")
    assert all(api.server.open_watches(kind) == 1 for kind in watched)
    assert api.server.count(verb="list", kind="RequestAuthentication") == 0
    status = {k["kind"]: k for k in informers.status()["kinds"]}
    assert status["RequestAuthentication"]["absent"] and status["RequestAuthentication"]["synced"]
    assert status["VirtualService"]["apiVersion"] == "networking.istio.io/v1"
    api.server.create(service("web"))
    await until(lambda: first.of("web") == ["ADDED"] and second.of("web") == ["ADDED"], "both consumers told")
    assert api.server.count(verb="watch", kind="Service") == 1
