"""Garbage-collector policy for a long-running control plane.

CPython's cyclic collector walks every tracked object in a full collection; with a large mesh in
memory that is a pause of 100-300 ms. After each push the live config is frozen (left out of
collections: it is referenced, not garbage). Once `every` pushes have gone by, the heap is
unfrozen and fully collected at the next idle moment (no change pending), so cyclic garbage cannot
accumulate and the pause never lands inside a push; under endless churn it runs anyway after
`every * 10` pushes.

Between pushes the heap also grows: the World is first loaded, and a cold storm builds thousands of
proxies' snapshots before the next push freezes them. CPython then runs a full collection whenever the
objects not yet frozen have grown by a quarter, every tenth middle collection; each walks all of them
(measured at 1000 services / 2000 proxies with a Sidecar per namespace: 11 full collections of
50-400 ms, 2.2 s in all, between start and the end of the storm). `install` makes those automatic full
collections ten times rarer (`FULL_EVERY_MIDDLE`): the live config is not garbage, and the idle-time
collection above still bounds what cyclic garbage can accumulate.

A push itself runs with the collector off (`pushing`). What it allocates is the next generation's config,
long-lived and frozen at its end: collections inside it only walked what it had made so far, large dicts
included, again and again (measured in-process at 5000 services / 5000 proxies with a Sidecar per namespace:
14 young and one middle collection per endpoint change, 30-40 ms of a 60-90 ms publish). Garbage a push
leaves is freed by reference counting; a cycle among it is frozen with the rest and freed by the next full
collection.

A proxy connecting outside a push has its snapshot built then (a cold storm builds the scopes' layers that
way), and the same holds (`building`): no collection inside, frozen after (in-process, 5000 proxies
connecting at 5000 services: 4.5-4.8 s of CPU instead of 4.9-5.3 s). Each build counts toward the next
idle full collection (due after `every * 10` of them), so what they froze cannot pile up: a full collection
runs anyway after `every * 100` builds.
"""

from __future__ import annotations

import gc
from collections.abc import Callable, Iterator
from contextlib import contextmanager

FULL_EVERY_MIDDLE = 100  # CPython's third threshold (default 10)


@contextmanager
def importing() -> Iterator[None]:
    """Around a command's imports: no collection inside them, what they built frozen after.

    Importing meshd's serving path builds some 500 000 objects (modules, classes, pydantic schemas), none of
    them garbage: collections among them walked them again and again (about 35 ms of a 0.45 s start-up),
    and left unfrozen they would all be walked by the first collections after."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()
        if enabled:
            gc.enable()


class GcPolicy:
    def __init__(self, *, every: int = 100, enabled: bool = True) -> None:
        self._every = every
        self._enabled = enabled
        self._since_full = 0
        self._builds = 0  # proxy builds outside pushes since the last full collection (`building`)
        self.full_collections = 0

    def install(self) -> tuple[int, ...]:
        """Make automatic full collections rarer (see the module docstring); returns the thresholds it
        replaced, for `uninstall`."""
        before = gc.get_threshold()
        if self._enabled:
            gc.set_threshold(before[0], before[1], FULL_EVERY_MIDDLE)
        return before

    @staticmethod
    def uninstall(thresholds: tuple[int, ...]) -> None:
        gc.set_threshold(*thresholds)

    @property
    def due(self) -> bool:
        """A full collection is wanted at the next idle moment."""
        return self._enabled and (self._since_full >= self._every or self._builds >= self._every * 10)

    @contextmanager
    def pushing(self) -> Iterator[None]:
        """Around one push: no collection inside it, then `after_push` (the push's config frozen before the
        collector is back on: a collection in between would walk all of it)."""
        with self._off(self.after_push):
            yield

    @contextmanager
    def building(self) -> Iterator[None]:
        """Around one proxy's build outside a push (it connected): no collection inside, frozen after."""
        with self._off(self._after_build):
            yield

    def _after_build(self) -> None:
        self._builds += 1
        if self._builds >= self._every * 100:
            self.collect()
        gc.freeze()

    @contextmanager
    def _off(self, then: Callable[[], None]) -> Iterator[None]:
        """The collector off around the block; `then` runs before it is on again."""
        if not self._enabled:
            yield
            return
        was_enabled = gc.isenabled()
        gc.disable()
        try:
            yield
        finally:
            try:
                then()
            finally:
                if was_enabled:
                    gc.enable()

    def after_push(self) -> None:
        if not self._enabled:
            return
        self._since_full += 1
        if self._since_full >= self._every * 10:
            self.collect()
        gc.freeze()

    def collect(self) -> None:
        """Unfreeze, collect everything, freeze what is still alive."""
        if not self._enabled:
            return
        gc.unfreeze()
        gc.collect()
        gc.freeze()
        self._since_full = self._builds = 0
        self.full_collections += 1
