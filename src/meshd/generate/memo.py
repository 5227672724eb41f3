"""The resource memo: every resource built and serialised once per distinct spec key, carried
from one push to the next (only what the current push used survives), and layers that keep their
identity when their content is unchanged. In check mode a reused resource is built again and must
come out byte-identical: a spec key that misses an input fails there, naming the resource.

Every built message passes the proto guard (translate.proto_guard) before it is serialised: one that
breaks a rule of Envoy's protos is not served (it would make Envoy refuse the whole update of its
type); its memo entry is a `Refused` holding the error, so the error is reported by every generation
that uses the entry, also one that carries its layer over unchanged (`refused`)."""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Mapping
from types import MappingProxyType
from typing import NamedTuple

from meshd.api.meta import InvalidResource
from meshd.generate.reads import MissedInput
from meshd.translate.proto_guard import violations
from meshd.translate.spec import Partial, Spec, refusal
from meshd.xds.resource import Snapshot, XdsResource, make_raw_resource, make_resource, short_name


class Refused(NamedTuple):
    """A build the guard refused: wholly (`resource` None: not served) or in part (parts left out)."""

    resource: XdsResource | None
    errors: tuple[InvalidResource, ...]


Built = XdsResource | Refused
MemoEntry = tuple[Hashable, Built]


class ResourceMemo:
    """Built resources by spec key: this generation's, falling back to the previous generation's.
    Only what the current generation used survives into the next (no unbounded growth)."""

    def __init__(self, previous: ResourceMemo | None = None, *, check: bool = False) -> None:
        self._old: dict[Hashable, Built] = previous._entries if previous is not None else {}
        self._old_refused = bool(previous.refused) if previous is not None else False
        self._entries: dict[Hashable, Built] = {}
        self._check = check
        self.built = 0
        self.reused = 0
        # the refused entries this generation uses, by key (reported while in use)
        self.refused: dict[Hashable, tuple[InvalidResource, ...]] = {}

    def keep_carried(self, entries: Mapping[Hashable, Built]) -> None:
        """Carry the entries of a layer the previous generation used, reused as a whole (every layer
        carried at each push: this is on the push path of every unchanged scope). A key has one live
        entry: a layer the previous generation used put its entries there (built, found or carried), and
        this generation finds them there before building one. So they are added wholesale (checked in
        check mode); refused ones are looked for only if the previous generation used any."""
        if self._check:
            for key, built in entries.items():
                found = self._entries.get(key)
                if found is not None and found is not built:
                    raise AssertionError(f"two live memo entries under key {key!r}")
        self._entries.update(entries)
        if self._old_refused:
            for key, built in entries.items():
                if type(built) is Refused:
                    self.refused[key] = built.errors

    def keep(self, entries: Iterable[MemoEntry]) -> None:
        """Carry entries of a layer reused as a whole into this generation (they are still in use)."""
        for key, built in entries:
            self._entries.setdefault(key, built)
            if type(built) is Refused:
                self.refused[key] = built.errors

    def resolve_one(self, spec: Spec) -> Built:
        """One spec's entry (built or reused; in check mode a reused one is built again and compared). A
        refused one is not reported here: `resolve` reports those it serves, and a build that uses an
        entry as a part (virtualInbound's skeleton) carries its errors in its own entry."""
        built = self._entries.get(spec.key)
        if built is None:
            built = self._old.get(spec.key)
            if built is None:
                built = _build(spec)
                self.built += 1
            else:
                self.reused += 1
                if self._check:
                    _verify(spec, built)
            self._entries[spec.key] = built
        elif self._check:
            _verify(spec, built)
        return built

    def resolve(self, specs: Iterable[Spec], used: list[MemoEntry] | None = None) -> dict[str, XdsResource]:
        """Resources for the specs, by name (a refused one left out); `used` collects (key, entry) for a
        later `keep`."""
        out: dict[str, XdsResource] = {}
        for spec in specs:
            built = self.resolve_one(spec)
            if used is not None:
                used.append((spec.key, built))
            if type(built) is Refused:
                self.refused[spec.key] = built.errors
                if built.resource is not None:
                    out[spec.name] = built.resource
            else:
                out[spec.name] = built  # type: ignore[assignment]
        return out


def _build(spec: Spec) -> Built:
    built = spec.build()
    if isinstance(built, bytes):
        return make_raw_resource(spec.name, spec.type_url, built)
    if isinstance(built, Partial):
        body = built.body
        return Refused(None if body is None else make_raw_resource(spec.name, spec.type_url, body), built.errors)
    found = violations(built)
    if found:
        kind = short_name("type.googleapis.com/" + built.DESCRIPTOR.full_name)
        return Refused(None, (refusal(kind, spec.name, found),))
    return make_resource(spec.name, built)


def _verify(spec: Spec, built: Built) -> None:
    """Check mode: the entry kept under this key is what the spec builds now (its reads are recorded)."""
    if _build(spec) != built:
        raise MissedInput(
            f"memo entry {spec.name!r} reused under spec key {spec.key!r} but its build now gives other bytes: "
            "the key does not cover an input of the build"
        )


def build_all(specs: Iterable[Spec], refused: list[MemoEntry]) -> dict[str, XdsResource]:
    """Resources built without the memo (bound to one proxy: nothing to share); a refused one is left
    out and its entry added to `refused` (for the memo to report while the layer is in use)."""
    out: dict[str, XdsResource] = {}
    for spec in specs:
        built = _build(spec)
        if type(built) is Refused:
            refused.append((built, built))
            if built.resource is not None:
                out[spec.name] = built.resource
        else:
            out[spec.name] = built  # type: ignore[assignment]
    return out


def reuse_layer(by_type: dict[str, dict[str, XdsResource]], previous: Snapshot | None) -> Snapshot:
    layer = Snapshot(resources=MappingProxyType({t: MappingProxyType(r) for t, r in by_type.items() if r}))
    return previous if previous is not None and layer.same_content(previous) else layer
