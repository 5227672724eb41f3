"""The proxy groups of one scope, filed together by the generation that decided them (built or kept), so that
the next generation can adopt them all at once when nothing about the scope changed.

A push used to carry each connected proxy's group into the new generation one by one (its named layers, its
snapshot, its own-layer cache entry and their memo entries: about 3 µs a proxy, 15-20 ms at 5000 proxies for
an endpoint change that touches one scope). Filed by scope, adopting a scope's groups is a few dict updates
done in C, after one identity check per proxy (`ConfigGenerator._adopt`).
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import TYPE_CHECKING

from meshd.generate.layers import Entry
from meshd.generate.memo import Built
from meshd.translate.scope import ScopeKey
from meshd.xds.resource import Snapshot

if TYPE_CHECKING:
    from meshd.generate.generator import ProxyLayers

Group = tuple[str, ScopeKey]


def same_shared(a: ProxyLayers, b: ProxyLayers) -> bool:
    """Whether two groups' layers share the scope's layers (the same objects; the own layer aside)."""
    return a.clusters is b.clusters and a.routes is b.routes and a.secrets is b.secrets


class ScopeGroups:
    """One scope's proxy groups as one generation holds them: all built on the scope's shared layers `shared`."""

    __slots__ = ("by_ip", "held", "layers", "own", "shared", "snapshots", "used")

    def __init__(self, shared: ProxyLayers) -> None:
        self.shared = shared
        self.by_ip: dict[str, Snapshot] = {}  # a group's snapshot by its address (a group is address + scope)
        self.snapshots: dict[Hashable, Snapshot] = {}  # by group
        self.layers: dict[Group, ProxyLayers] = {}
        self.own: dict[Group, Entry[Snapshot]] = {}  # the own-layer cache entries
        self.used: dict[Hashable, Built] = {}  # the memo entries those hold, merged
        # the hub's list of (proxy, snapshot) these groups were last adopted for, held so that its identity cannot
        # be taken by another list (the hub keeps its list while nothing in it changes)
        self.held: object = None

    def add(self, group: Group, snapshot: Snapshot, layers: ProxyLayers, own: Entry[Snapshot]) -> None:
        """File a group (once per generation: a group is decided once)."""
        self.held = None
        self.by_ip[group[0]] = snapshot
        self.snapshots[group] = snapshot
        self.layers[group] = layers
        self.own[group] = own
        self.used.update(own.used)
