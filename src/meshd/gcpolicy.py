"""Garbage-collector policy for a long-running control plane.

CPython's cyclic collector walks every tracked object in a full collection; with a large mesh in
memory that is a pause of 100-300 ms, landing at random in a push. After each push the live
config is frozen (left out of collections: it is referenced, not garbage), and every `every`
pushes the heap is unfrozen and fully collected once, so cyclic garbage cannot accumulate.
"""

from __future__ import annotations

import gc


class GcPolicy:
    def __init__(self, *, every: int = 100, enabled: bool = True) -> None:
        self._every = every
        self._enabled = enabled
        self._pushes = 0
        self.full_collections = 0

    def after_push(self) -> None:
        if not self._enabled:
            return
        self._pushes += 1
        if self._pushes % self._every == 0:
            gc.unfreeze()
            gc.collect()
            self.full_collections += 1
        gc.freeze()
