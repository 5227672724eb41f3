"""One named cache of built values (layers, a service's clusters), carried from one generation to the next.

An entry is looked up by its group (what it is for: a scope signature, a proxy group...) and reused
when its inputs equal those it was built from; otherwise it is built again, given the previous value
so that an unchanged layer keeps its identity. Only what a generation used is carried to the next.
With a Tracer (check mode) every reuse is checked against what the build read (generate.reads).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping
from typing import Generic, NamedTuple, TypeVar

from meshd.generate.memo import Built, MemoEntry, ResourceMemo
from meshd.generate.reads import Context, Read, Tracer

G = TypeVar("G", bound=Hashable)
V = TypeVar("V")

# A build: (context to read, the previous generation's value of the group or None) -> (value, memo entries used)
Build = Callable[[Context, "V | None"], tuple[V, list[MemoEntry]]]


class Entry(NamedTuple, Generic[V]):
    inputs: Hashable
    value: V
    # the memo entries the value holds (kept alive while it is reused), by key: a dict, so carrying them
    # into the next generation's memo reuses their hashes (ResourceMemo.keep_carried)
    used: dict[Hashable, Built]
    reads: list[Read]  # what its build read (check mode only)


class LayerCache(Generic[G, V]):
    def __init__(
        self, name: str, *, previous: LayerCache[G, V] | None, memo: ResourceMemo, tracer: Tracer | None
    ) -> None:
        self.name = name
        self._memo = memo
        self._tracer = tracer
        self.entries: dict[G, Entry[V]] = {}
        self._before: dict[G, Entry[V]] = previous.entries if previous is not None else {}

    def current(self, group: G) -> Entry[V] | None:
        """The entry this generation already has for the group (no check, no build)."""
        return self.entries.get(group)

    def get(self, group: G, *, context: Context, build: Build[V], inputs: Callable[[], Hashable] | None = None) -> V:
        """`inputs`: what the entry is built from beyond its group, computed only when the group is not yet
        in this generation (within one World the group decides them); None: the group is all its inputs."""
        entry = self.entries.get(group)
        if entry is not None:
            self._reused(entry, context)
            return entry.value
        key = inputs() if inputs is not None else group
        carried = self._before.get(group)
        if carried is not None and carried.inputs == key:
            self._memo.keep_carried(carried.used)
            self._reused(carried, context)
            self.entries[group] = carried
            return carried.value
        previous = carried.value if carried is not None else None
        if self._tracer is None:
            value, used = build(context, previous)
            reads: list[Read] = []
        else:
            with self._tracer.building() as reads:
                value, used = build(self._tracer.traced(context), previous)
        self.entries[group] = Entry(key, value, dict(used), reads)
        return value

    def carry(self, group: G, entry: Entry[V]) -> None:
        """Adopt an entry of the previous generation known to be current (decided by the caller)."""
        self._memo.keep_carried(entry.used)
        self.entries[group] = entry

    def carry_all(self, entries: Mapping[G, Entry[V]], used: Mapping[Hashable, Built]) -> None:
        """Adopt entries of the previous generation known to be current, all at once; `used`: the memo entries
        they hold, merged (one update each, whatever their number)."""
        self._memo.keep_carried(used)
        self.entries.update(entries)

    def previous(self, group: G) -> Entry[V] | None:
        return self._before.get(group)

    def _reused(self, entry: Entry[V], context: Context) -> None:
        if self._tracer is not None:
            self._tracer.reused(cache=self.name, key=entry.inputs, reads=entry.reads, context=context)
