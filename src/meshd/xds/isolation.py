"""Per-resource isolation of what a proxy rejected (pure, one per connection).

When Envoy NACKs a response, meshd works out which resources it rejected: those the error names (Envoy
names listeners and some clusters), otherwise those that changed since the last response of that type the
proxy accepted (the rest were already accepted); when it accepted none yet, the one resource sent, or those
whose content holds a word of the error (a Wasm config's module path). From then on the proxy is served, for
each rejected resource, the version it last accepted (or nothing, if it never had one) while meshd still generates the
rejected version: the rest of its config keeps flowing, and the rejected version is never sent again. A
new version of the resource (the user fixed the input) is tried again.

What the proxy holds is tracked by reference to the snapshots (shared by every proxy of a scope) it was
sent and accepted, never by copying resources, so a connection with nothing rejected costs two
references per type."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from meshd.xds.resource import Snapshot, XdsResource

MAX_OUTSTANDING = 4  # snapshots kept per type for responses not yet answered (delta can have several)


@dataclass(frozen=True)
class Rejected:
    """A resource version a proxy rejected, and what Envoy said."""

    type_url: str
    name: str
    version: str
    error: str


@dataclass
class _Track:
    outstanding: dict[str, Snapshot] = field(default_factory=dict)  # nonce -> what that response came from
    accepted: Snapshot | None = None  # the snapshot of the last response the proxy accepted
    held: dict[str, Rejected] = field(default_factory=dict)  # name -> the rejected version


class Isolation:
    def __init__(self) -> None:
        self._tracks: dict[str, _Track] = {}
        # whether any version is held back: read for every connection whenever errors are listed
        self.holding = False

    @property
    def rejected(self) -> list[Rejected]:
        return [r for track in self._tracks.values() for r in track.held.values()]

    def view(self, snapshot: Snapshot) -> Snapshot:
        """What to serve instead of `snapshot`: itself unless something it holds was rejected."""
        for type_url, track in self._tracks.items():
            if track.held:
                current = snapshot.resources.get(type_url, {})
                for name, rejected in list(track.held.items()):
                    resource = current.get(name)
                    if resource is None or resource.version != rejected.version:
                        del track.held[name]  # gone or changed: try the new version
        self.holding = any(t.held for t in self._tracks.values())
        if not self.holding:
            return snapshot
        patched: dict[str, Mapping[str, XdsResource]] = dict(snapshot.resources)
        for type_url, track in self._tracks.items():
            if not track.held:
                continue
            resources = dict(snapshot.resources.get(type_url, {}))
            accepted = track.accepted.resources.get(type_url, {}) if track.accepted is not None else {}
            for name in track.held:
                previous = accepted.get(name)
                if previous is not None:
                    resources[name] = previous
                else:
                    resources.pop(name, None)
            patched[type_url] = resources
        return Snapshot(resources=patched)

    def sent(self, type_url: str, nonce: str, view: Snapshot) -> None:
        outstanding = self._track(type_url).outstanding
        outstanding[nonce] = view
        while len(outstanding) > MAX_OUTSTANDING:
            del outstanding[next(iter(outstanding))]

    def accepted(self, type_url: str, nonce: str) -> None:
        track = self._tracks.get(type_url)
        if track is not None and (view := track.outstanding.pop(nonce, None)) is not None:
            track.accepted = view

    def nacked(self, type_url: str, nonce: str, error: str) -> list[Rejected]:
        """The resources this NACK rejected (now held back); empty when meshd cannot tell."""
        track = self._tracks.get(type_url)
        view = track.outstanding.pop(nonce, None) if track is not None else None
        if track is None or view is None:
            return []
        sent = view.resources.get(type_url, {})
        names = named_in(error, sent)
        if not names and track.accepted is not None:
            before = track.accepted.resources.get(type_url, {})
            names = [n for n, r in sent.items() if (b := before.get(n)) is None or b.version != r.version]
        elif not names:
            names = first_rejected(error, sent)
        found = [Rejected(type_url, n, sent[n].version, error) for n in sorted(names)]
        for rejected in found:
            track.held[rejected.name] = rejected
        self.holding = self.holding or bool(found)
        return found

    def _track(self, type_url: str) -> _Track:
        return self._tracks.setdefault(type_url, _Track())


def named_in(error: str, sent: Mapping[str, XdsResource]) -> list[str]:
    """Names of sent resources that Envoy's error names (as a whole word: `listener(s) 0.0.0.0_80: ...`)."""
    out = []
    for name in sent:
        if name and re.search(rf"(?:^|[\s'\"(,]){re.escape(name)}(?:$|[\s'\":),])", error):
            out.append(name)
    return out


MAX_ERROR_WORDS = 64  # an error's words compared with what was sent (bounds the work of a long error)
_WORD = re.compile(r"[^\s'\"(),;\[\]]{6,}")


def first_rejected(error: str, sent: Mapping[str, XdsResource]) -> list[str]:
    """The first response of a type was rejected (no accepted one to compare with) and the error names no
    resource: the one resource sent, else those whose content holds a word of the error that not every sent
    resource holds (Envoy's rejection of a Wasm config quotes the module's path, not the resource's name)."""
    if len(sent) == 1:
        return list(sent)
    found: set[str] = set()
    for word in sorted(set(_WORD.findall(error)))[:MAX_ERROR_WORDS]:
        holders = [name for name, resource in sent.items() if word.encode() in resource.body]
        if len(holders) < len(sent):
            found.update(holders)
    return sorted(found)
