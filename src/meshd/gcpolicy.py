"""Garbage-collector policy for a long-running control plane.

CPython's cyclic collector walks every tracked object in a full collection; with a large mesh in
memory that is a pause of 100-300 ms. After each push the live config is frozen (left out of
collections: it is referenced, not garbage). Once `every` pushes have gone by, the heap is
unfrozen and fully collected at the next idle moment (no change pending), so cyclic garbage cannot
accumulate and the pause never lands inside a push; under endless churn it runs anyway after
`every * 10` pushes.
"""

from __future__ import annotations

import gc


class GcPolicy:
    def __init__(self, *, every: int = 100, enabled: bool = True) -> None:
        self._every = every
        self._enabled = enabled
        self._since_full = 0
        self.full_collections = 0

    @property
    def due(self) -> bool:
        """A full collection is wanted at the next idle moment."""
        return self._enabled and self._since_full >= self._every

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
        self._since_full = 0
        self.full_collections += 1
