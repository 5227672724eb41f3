"""The inbound index, kept up to date change by change: for every workload address, the (service, service
port, target port) entries it backs (what its sidecar's inbound side serves).

Built in full once (`translate.listeners.inbound_index` gives the same entries); each later generation
updates only the addresses of the endpoint sets that changed, so an endpoint change costs what it touches,
not the size of the mesh: the World derived change by change names the endpoint keys that changed
(`World.changes_since`; else every key is compared, an unchanged set being the same object), and the
index's mappings are Layered (a new version without a copy). A change of any service rebuilds it in full
(entries hold the service). Pure.
"""

from __future__ import annotations

from dataclasses import dataclass

from meshd.model.layered import Layered
from meshd.model.world import World
from meshd.translate.listeners import InboundEntry, inbound_index
from meshd.translate.scope import same_items

EndpointKey = tuple[str, int]  # (service hostname, service port)

# More changed endpoint sets than this: a full build is as cheap.
_MAX_CHANGED = 256


@dataclass(frozen=True)
class InboundIndex:
    entries: Layered[str, tuple[InboundEntry, ...]]
    keys: Layered[str, frozenset[EndpointKey]]  # address -> the endpoint sets it appears in
    # addresses whose entries may differ from the index this one was updated from; None: any
    touched: frozenset[str] | None = None


def build_index(world: World) -> InboundIndex:
    keys: dict[str, set[EndpointKey]] = {}
    for key, endpoints in world.endpoints.items():
        for endpoint in endpoints:
            keys.setdefault(endpoint.address, set()).add(key)
    return InboundIndex(Layered(inbound_index(world)), Layered({a: frozenset(k) for a, k in keys.items()}))


def update_index(previous: InboundIndex, *, before: World, world: World) -> InboundIndex:
    """The index of `world`, from the index of `before`."""
    if not same_items(before.services, world.services):
        return build_index(world)
    now, then = world.endpoints, before.endpoints
    changes = world.changes_since(before)
    candidates = changes.endpoints if changes is not None else now.keys() | then.keys()
    changed = [k for k in candidates if now.get(k) is not then.get(k)]
    if not changed:
        return InboundIndex(previous.entries, previous.keys, frozenset())
    if len(changed) > _MAX_CHANGED:
        return build_index(world)
    held_keys = previous.keys
    keys: dict[str, frozenset[EndpointKey]] = {}
    affected: set[str] = set()
    for key in sorted(changed):
        old = {e.address for e in then.get(key, ())}
        new = {e.address for e in now.get(key, ())}
        for address in old - new:
            keys[address] = keys.get(address, held_keys.get(address, frozenset())) - {key}
        for address in new - old:
            keys[address] = keys.get(address, held_keys.get(address, frozenset())) | {key}
        affected |= old | new
    entries: dict[str, tuple[InboundEntry, ...]] = {}
    gone: list[str] = []
    for address in affected:
        held = keys.get(address, held_keys.get(address))
        if not held:
            gone.append(address)
            continue
        entries[address] = tuple(
            (world.services[host], port, next(e.port for e in now[(host, port)] if e.address == address))
            for host, port in sorted(held)
        )
    return InboundIndex(
        previous.entries.updated(entries, gone),
        previous.keys.updated({a: k for a, k in keys.items() if k}, gone),
        frozenset(affected),
    )
