"""The resource memo: every resource built and serialised once per distinct spec key, carried
from one push to the next (only what the current push used survives), and layers that keep their
identity when their content is unchanged."""

from __future__ import annotations

from collections.abc import Hashable, Iterable
from types import MappingProxyType

from meshd.translate.spec import Spec
from meshd.xds.resource import Snapshot, XdsResource, make_raw_resource, make_resource


class ResourceMemo:
    """Built resources by spec key: this generation's, falling back to the previous generation's.
    Only what the current generation used survives into the next (no unbounded growth)."""

    def __init__(self, previous: ResourceMemo | None = None) -> None:
        self._old: dict[Hashable, XdsResource] = previous._entries if previous is not None else {}
        self._entries: dict[Hashable, XdsResource] = {}
        self.built = 0
        self.reused = 0

    def keep(self, entries: Iterable[tuple[Hashable, XdsResource]]) -> None:
        """Carry entries of a layer reused as a whole into this generation (they are still in use)."""
        for key, resource in entries:
            self._entries.setdefault(key, resource)

    def resolve(
        self, specs: Iterable[Spec], used: list[tuple[Hashable, XdsResource]] | None = None
    ) -> dict[str, XdsResource]:
        """Resources for the specs, by name; `used` collects (key, resource) for a later `keep`."""
        out: dict[str, XdsResource] = {}
        for spec in specs:
            resource = self._entries.get(spec.key)
            if resource is None:
                resource = self._old.get(spec.key)
                if resource is None:
                    built = spec.build()
                    if isinstance(built, bytes):
                        resource = make_raw_resource(spec.name, spec.type_url, built)
                    else:
                        resource = make_resource(spec.name, built)
                    self.built += 1
                else:
                    self.reused += 1
                self._entries[spec.key] = resource
            out[spec.name] = resource
            if used is not None:
                used.append((spec.key, resource))
        return out


def build_all(specs: Iterable[Spec]) -> dict[str, XdsResource]:
    return {spec.name: make_resource(spec.name, spec.build()) for spec in specs}


def reuse_layer(by_type: dict[str, dict[str, XdsResource]], previous: Snapshot | None) -> Snapshot:
    layer = Snapshot(resources=MappingProxyType({t: MappingProxyType(r) for t, r in by_type.items() if r}))
    return previous if previous is not None and layer.same_content(previous) else layer
