"""ConfigStore: every valid resource meshd currently knows, grouped by origin (a file, the cluster).

The store is the only mutable state of the pipeline. Sources replace what one origin holds;
subscribers are told that something changed. A key defined by two origins is taken from the first
origin (sorted) and the other copy is reported. Consumers either read everything (`resources()`)
or take just what changed since they last asked (`drain_changes()`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from types import MappingProxyType

from meshd.api.meta import InvalidResource, Resource, ResourceKey


class ConfigStore:
    def __init__(self) -> None:
        self._by_origin: dict[str, dict[ResourceKey, Resource]] = {}
        self._origins_of: dict[ResourceKey, set[str]] = {}
        self._winners: dict[ResourceKey, Resource] = {}
        self._contested: set[ResourceKey] = set()  # keys defined by more than one origin
        self._changes: dict[ResourceKey, Resource | None] = {}
        self._errors: dict[str, tuple[InvalidResource, ...]] = {}
        self._listeners: list[Callable[[], None]] = []
        self._kinds: dict[str, set[ResourceKey]] = {}  # kind -> keys with a winner
        self._feeds: list[dict[ResourceKey, Resource | None]] = []  # feed(): each consumer's changed keys
        self.revision = 0
        self.updates = 0  # bumped by every change, resourceVersion-only ones too (what status writing reads)
        self.loaded = False

    def subscribe(self, callback: Callable[[], None]) -> None:
        self._listeners.append(callback)

    def replace_origin(
        self,
        origin: str,
        resources: Mapping[ResourceKey, Resource],
        errors: Iterable[InvalidResource] = (),
        *,
        rejected: Iterable[ResourceKey] = (),
    ) -> bool:
        """Set what `origin` holds; returns True (and notifies) when the resources changed.
        `rejected`: keys whose new version was refused (its errors say why): what this origin held for
        them stays, so a bad edit never takes away the last accepted version, whatever the source."""
        self._errors[origin] = tuple(errors)
        if not self._errors[origin]:
            del self._errors[origin]
        previous = self._by_origin.get(origin, {})
        kept = {k: previous[k] for k in rejected if k in previous and k not in resources}
        if kept:
            resources = {**resources, **kept}
        if dict(resources) == previous:
            return False
        # an equal copy (the rest of a rewritten file, newly parsed) is no change: keep the object held
        current = {k: held if (held := previous.get(k)) is not None and held == v else v for k, v in resources.items()}
        if current.keys() == previous.keys() and all(_same_but_version(current[k], previous[k]) for k in current):
            self._take_versions(origin, current)
            return False
        if current:
            self._by_origin[origin] = current
        else:
            self._by_origin.pop(origin, None)
        touched = [k for k in previous.keys() | current.keys() if previous.get(k) is not current.get(k)]
        for key in touched:
            origins = self._origins_of.setdefault(key, set())
            if key in current:
                origins.add(origin)
            else:
                origins.discard(origin)
            self._elect(key)
        self._changed()
        return True

    def _take_versions(self, origin: str, current: dict[ResourceKey, Resource]) -> None:
        """Only resourceVersions moved (e.g. a status write meshd made): keep the new copies, so
        readers see the current version, without a new revision (nothing to translate)."""
        self.updates += 1
        self._by_origin[origin] = current
        for key, resource in current.items():
            if min(self._origins_of[key]) == origin:
                self._winners[key] = resource
                if key in self._changes:
                    self._changes[key] = resource

    def take_version(self, origin: str, resource_version: str) -> bool:
        """The origin's one resource moved to `resource_version` and nothing else changed (the caller
        compared its source: a status write): the copy held takes the version, unparsed (`_take_versions`).
        False, changing nothing, if the origin holds anything else or has errors (the last accepted version
        of a refused object keeps its own)."""
        held = self._by_origin.get(origin)
        if held is None or len(held) != 1 or origin in self._errors:
            return False
        [(key, resource)] = held.items()
        metadata = resource.metadata.model_copy(update={"resource_version": resource_version})
        self._take_versions(origin, {key: resource.model_copy(update={"metadata": metadata})})
        return True

    def refuse_origin(self, origin: str, errors: Iterable[InvalidResource]) -> bool:
        """The origin's whole new content was refused (e.g. not YAML at all): it keeps all it held."""
        return self.replace_origin(origin, {}, errors, rejected=list(self._by_origin.get(origin, {})))

    def remove_origin(self, origin: str) -> bool:
        self._errors.pop(origin, None)
        if origin not in self._by_origin:
            return False
        return self.replace_origin(origin, {})

    def _elect(self, key: ResourceKey) -> None:
        origins = self._origins_of.get(key)
        if origins is not None and len(origins) > 1:
            self._contested.add(key)
        else:
            self._contested.discard(key)
        winner = self._by_origin[min(origins)][key] if origins else None
        if not origins:
            self._origins_of.pop(key, None)
        if winner is not self._winners.get(key):
            if winner is None:
                del self._winners[key]
                self._kinds[key.kind].discard(key)
            else:
                self._winners[key] = winner
                self._kinds.setdefault(key.kind, set()).add(key)
            self._changes[key] = winner
            for feed in self._feeds:
                feed[key] = winner

    def feed(self) -> Callable[[], dict[ResourceKey, Resource | None]]:
        """A change consumer of its own (besides `drain_changes`): each call returns the keys whose winning
        resource changed since its previous call (since `feed()` for the first), the new one or None."""
        changes: dict[ResourceKey, Resource | None] = dict(self._winners)
        self._feeds.append(changes)

        def drain() -> dict[ResourceKey, Resource | None]:
            out = dict(changes)
            changes.clear()
            return out

        return drain

    def mark_loaded(self) -> None:
        """Sources call this once their first full load is in the store."""
        if not self.loaded:
            self.loaded = True
            self._changed()

    def touch(self) -> None:
        """An input that is not a resource changed (the mesh config): a new revision, subscribers told."""
        self._changed()

    def resources(self) -> list[tuple[str, Resource]]:
        """(origin, resource) pairs of the winning copies, sorted by key."""
        return [(min(self._origins_of[key]), self._winners[key]) for key in sorted(self._winners)]

    def winners(self) -> Mapping[ResourceKey, Resource]:
        """Every key's winning copy (a read-only view: what a replica of this store must hold)."""
        return MappingProxyType(self._winners)

    def of_kind(self, kind: str) -> list[Resource]:
        """The winning copies of one kind, sorted by key (without walking the rest)."""
        return [self._winners[key] for key in sorted(self._kinds.get(kind, ()))]

    def drain_changes(self) -> dict[ResourceKey, Resource | None]:
        """Keys whose winning resource changed since the last call: the new resource, or None if gone."""
        changes, self._changes = self._changes, {}
        return changes

    def errors(self) -> list[InvalidResource]:
        errors = [e for origin in sorted(self._errors) for e in self._errors[origin]]
        for key in sorted(self._contested):
            first, *others = sorted(self._origins_of[key])
            errors += [
                InvalidResource(key, "metadata.name", f"also defined in {first}; this copy is ignored", origin)
                for origin in others
            ]
        return errors

    def _changed(self) -> None:
        self.revision += 1
        self.updates += 1
        for callback in self._listeners:
            callback()


def _same_but_version(a: Resource, b: Resource) -> bool:
    """Equal except for metadata.resourceVersion (which changes with every write, status included)."""
    if a.metadata.resource_version == b.metadata.resource_version:
        return a == b
    unversioned = {"resource_version": ""}
    return a.model_copy(update={"metadata": a.metadata.model_copy(update=unversioned)}) == b.model_copy(
        update={"metadata": b.metadata.model_copy(update=unversioned)}
    )
