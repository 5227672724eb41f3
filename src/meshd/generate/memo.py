"""The resource memo: every resource built and serialised once per distinct spec key, carried
from one push to the next (only what the current push used survives), and layers that keep their
identity when their content is unchanged. In check mode a reused resource is built again and must
come out byte-identical: a spec key that misses an input fails there, naming the resource."""

from __future__ import annotations

from collections.abc import Hashable, Iterable
from types import MappingProxyType

from meshd.generate.reads import MissedInput
from meshd.translate.spec import Spec
from meshd.xds.resource import Snapshot, XdsResource, make_raw_resource, make_resource

MemoEntry = tuple[Hashable, XdsResource]


class ResourceMemo:
    """Built resources by spec key: this generation's, falling back to the previous generation's.
    Only what the current generation used survives into the next (no unbounded growth)."""

    def __init__(self, previous: ResourceMemo | None = None, *, check: bool = False) -> None:
        self._old: dict[Hashable, XdsResource] = previous._entries if previous is not None else {}
        self._entries: dict[Hashable, XdsResource] = {}
        self._check = check
        self.built = 0
        self.reused = 0

    def keep(self, entries: Iterable[MemoEntry]) -> None:
        """Carry entries of a layer reused as a whole into this generation (they are still in use)."""
        for key, resource in entries:
            self._entries.setdefault(key, resource)

    def resolve(self, specs: Iterable[Spec], used: list[MemoEntry] | None = None) -> dict[str, XdsResource]:
        """Resources for the specs, by name; `used` collects (key, resource) for a later `keep`."""
        out: dict[str, XdsResource] = {}
        for spec in specs:
            resource = self._entries.get(spec.key)
            hit = resource is not None
            if resource is None:
                resource = self._old.get(spec.key)
                hit = resource is not None
                if resource is None:
                    resource = _build(spec)
                    self.built += 1
                else:
                    self.reused += 1
                self._entries[spec.key] = resource
            if hit and self._check:
                _verify(spec, resource)
            out[spec.name] = resource
            if used is not None:
                used.append((spec.key, resource))
        return out


def _build(spec: Spec) -> XdsResource:
    built = spec.build()
    if isinstance(built, bytes):
        return make_raw_resource(spec.name, spec.type_url, built)
    return make_resource(spec.name, built)


def _verify(spec: Spec, resource: XdsResource) -> None:
    """Check mode: the resource kept under this key is what the spec builds now (its reads are recorded)."""
    fresh = _build(spec)
    if fresh.body != resource.body or fresh.name != resource.name:
        raise MissedInput(
            f"memo entry {spec.name!r} reused under spec key {spec.key!r} but its build now gives other bytes: "
            "the key does not cover an input of the build"
        )


def build_all(specs: Iterable[Spec]) -> dict[str, XdsResource]:
    return {spec.name: make_resource(spec.name, spec.build()) for spec in specs}


def reuse_layer(by_type: dict[str, dict[str, XdsResource]], previous: Snapshot | None) -> Snapshot:
    layer = Snapshot(resources=MappingProxyType({t: MappingProxyType(r) for t, r in by_type.items() if r}))
    return previous if previous is not None and layer.same_content(previous) else layer
