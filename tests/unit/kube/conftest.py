"""Reflector tests run meshd's real client (kubernetes-asyncio through a kubeconfig) against the
fake API server over real HTTP. Backoff sleeps go through a stepping clock: each sleep is recorded,
advances the clock's time and returns at once, so delays are asserted exactly and nothing waits."""

from __future__ import annotations

import asyncio
import logging
import pathlib
import random
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest

from meshd.kube.backoff import Backoff
from meshd.kube.client import new_api_client
from meshd.kube.kinds import KindSpec
from meshd.kube.reflector import Obj, Reflector, ReflectorSettings
from meshd.kube.transport import ApiClientTransport
from tests.e2e.harness import eventually
from tests.kubeapi import FakeApiServer

SERVICE = KindSpec("", "Service", "services", ("v1",))
LOG = logging.getLogger("meshd.test.kube")


class StepClock:
    def __init__(self) -> None:
        self.offset = 0.0
        self.sleeps: list[float] = []

    def now(self) -> float:
        return time.monotonic() + self.offset

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.offset += seconds
        await asyncio.sleep(0)  # yield only: virtual time never waits


@dataclass
class Recorder:
    events: list[tuple[str, str, str]] = field(default_factory=list)  # (type, name, uid)

    def __call__(self, kind: str, old: Obj | None, new: Obj | None) -> None:
        obj = new if new is not None else old
        assert obj is not None
        self.events.append((kind, obj["metadata"]["name"], obj["metadata"].get("uid", "")))

    def of(self, name: str) -> list[str]:
        return [t for t, n, _ in self.events if n == name]


def service(name: str, namespace: str = "default", port: int = 80) -> Obj:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"ports": [{"name": "http", "port": port}]},
    }


@dataclass
class Api:
    server: FakeApiServer
    transport: ApiClientTransport
    clock: StepClock
    tasks: list[asyncio.Task[Any]] = field(default_factory=list)

    def reflector(
        self, spec: KindSpec = SERVICE, *, settings: ReflectorSettings | None = None, jitter: float = 0.5
    ) -> tuple[Reflector, Recorder]:
        rand = random.Random(7)
        reflector = Reflector(
            spec=spec,
            transport=self.transport,
            clock=self.clock,
            log=LOG,
            settings=settings,
            backoff=Backoff(rand=rand, jitter=jitter),
            rand=rand,
        )
        recorder = Recorder()
        reflector.add_handler(recorder)
        return reflector, recorder

    def run(self, reflector: Reflector) -> None:
        self.tasks.append(asyncio.create_task(reflector.run()))


@pytest.fixture
async def api(tmp_path: pathlib.Path) -> AsyncIterator[Api]:
    server = FakeApiServer(bookmark_interval_s=3600)
    await server.start()
    client = await new_api_client(server.write_kubeconfig(tmp_path / "kubeconfig"))
    harness = Api(server, ApiClientTransport(client, request_timeout_s=5), StepClock())
    yield harness
    for task in harness.tasks:
        task.cancel()
    await asyncio.gather(*harness.tasks, return_exceptions=True)
    await client.close()
    await server.stop()


async def until(check: Callable[[], Any], what: str, timeout: float = 10.0) -> None:
    async def probe() -> Any:
        return check()

    await eventually(probe, timeout=timeout, interval=0.01, what=what)
