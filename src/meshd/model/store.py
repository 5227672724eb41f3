"""ConfigStore: every valid resource meshd currently knows, grouped by origin (a file, the cluster).

The store is the only mutable state of the pipeline. Sources replace what one origin holds;
subscribers are told that something changed and build a fresh World from `resources()`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

from meshd.api.meta import InvalidResource, Resource, ResourceKey


class ConfigStore:
    def __init__(self) -> None:
        self._by_origin: dict[str, dict[ResourceKey, Resource]] = {}
        self._errors: dict[str, tuple[InvalidResource, ...]] = {}
        self._listeners: list[Callable[[], None]] = []
        self.revision = 0
        self.loaded = False

    def subscribe(self, callback: Callable[[], None]) -> None:
        self._listeners.append(callback)

    def replace_origin(
        self,
        origin: str,
        resources: Mapping[ResourceKey, Resource],
        errors: Iterable[InvalidResource] = (),
    ) -> bool:
        """Set what `origin` holds; returns True (and notifies) when the resources changed."""
        self._errors[origin] = tuple(errors)
        if not self._errors[origin]:
            del self._errors[origin]
        previous = self._by_origin.get(origin, {})
        if dict(resources) == previous:
            return False
        if resources:
            self._by_origin[origin] = dict(resources)
        else:
            self._by_origin.pop(origin, None)
        self._changed()
        return True

    def remove_origin(self, origin: str) -> bool:
        self._errors.pop(origin, None)
        if self._by_origin.pop(origin, None) is None:
            return False
        self._changed()
        return True

    def mark_loaded(self) -> None:
        """Sources call this once their first full load is in the store."""
        if not self.loaded:
            self.loaded = True
            self._changed()

    def resources(self) -> list[tuple[str, Resource]]:
        """(origin, resource) pairs, sorted by origin then key. A key defined by two origins is
        taken from the first origin only (see `errors`)."""
        seen: set[ResourceKey] = set()
        out = []
        for origin in sorted(self._by_origin):
            for key in sorted(self._by_origin[origin]):
                if key not in seen:
                    seen.add(key)
                    out.append((origin, self._by_origin[origin][key]))
        return out

    def errors(self) -> list[InvalidResource]:
        errors = [e for origin in sorted(self._errors) for e in self._errors[origin]]
        first: dict[ResourceKey, str] = {}
        for origin in sorted(self._by_origin):
            for key in sorted(self._by_origin[origin]):
                if key in first:
                    errors.append(
                        InvalidResource(
                            key,
                            "metadata.name",
                            f"also defined in {first[key]}; this copy is ignored",
                            origin,
                        )
                    )
                else:
                    first[key] = origin
        return errors

    def _changed(self) -> None:
        self.revision += 1
        for callback in self._listeners:
            callback()
