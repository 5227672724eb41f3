"""One shared reflector per watched kind (never a watch per consumer): consumers add handlers to it
and read its cache. `synced` is true once every kind has listed (an absent CRD counts as listed)."""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable, Iterable
from typing import Any

from meshd.clock import Clock
from meshd.kube.backoff import Backoff
from meshd.kube.kinds import KindSpec
from meshd.kube.metrics import KubeMetrics
from meshd.kube.reflector import Handler, Obj, Reflector, ReflectorSettings
from meshd.kube.transport import Transport


class Informers:
    def __init__(
        self,
        *,
        kinds: Iterable[KindSpec],
        transport: Transport,
        clock: Clock,
        log: logging.Logger,
        metrics: KubeMetrics | None = None,
        settings: ReflectorSettings | None = None,
        rand: random.Random | None = None,
    ) -> None:
        rand = rand or random.Random()
        self.reflectors: dict[str, Reflector] = {
            spec.identity: Reflector(
                spec=spec,
                transport=transport,
                clock=clock,
                log=log,
                metrics=metrics,
                settings=settings or ReflectorSettings(),
                backoff=Backoff(rand=rand),
                rand=rand,
            )
            for spec in kinds
        }
        self._on_all_synced: list[Callable[[], None]] = []
        for reflector in self.reflectors.values():
            reflector.on_synced(self._check_synced)
        self.synced = False

    def add_handler(self, kind: str, handler: Handler) -> None:
        self.reflectors[kind].add_handler(handler)

    def on_synced(self, callback: Callable[[], None]) -> None:
        self._on_all_synced.append(callback)

    def _check_synced(self) -> None:
        if not self.synced and all(r.has_synced for r in self.reflectors.values()):
            self.synced = True
            for callback in self._on_all_synced:
                callback()

    def objects(self, kind: str) -> list[Obj]:
        """The current objects of a kind (e.g. every Namespace, for a publisher that writes to each)."""
        return list(self.reflectors[kind].cache.values())

    def status(self) -> dict[str, Any]:
        return {"synced": self.synced, "kinds": [r.status() for r in self.reflectors.values()]}

    async def run(self) -> None:
        async with asyncio.TaskGroup() as tasks:
            for reflector in self.reflectors.values():
                tasks.create_task(reflector.run(), name=f"reflector-{reflector.spec.kind}")
