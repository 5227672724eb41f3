"""A serialised xDS resource: name, type URL, bytes and a content-hash version.

Each resource is serialised once; the same object (and bytes) is shared by every proxy that
receives it.
"""

from __future__ import annotations

import hashlib
import weakref
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from google.protobuf import any_pb2

from meshd.protowire import length_delimited, read_varint, string_field
from meshd.translate.envoyfilter.bootstrap import BOOTSTRAP_PATCH

CLUSTER = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
ENDPOINT = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"
LISTENER = "type.googleapis.com/envoy.config.listener.v3.Listener"
ROUTE = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"
SECRET = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"

# Push order that lets Envoy warm without dropping traffic: clusters before their endpoints,
# listeners before the routes they reference.
PUSH_ORDER = (CLUSTER, ENDPOINT, LISTENER, ROUTE, SECRET)
# (BOOTSTRAP_PATCH: a node agent's EnvoyFilter bootstrap patches, all of them, none when none apply)
WILDCARD_TYPES = frozenset({CLUSTER, LISTENER, BOOTSTRAP_PATCH})
SHORT_NAMES = {
    CLUSTER: "cds", ENDPOINT: "eds", LISTENER: "lds", ROUTE: "rds", SECRET: "sds", BOOTSTRAP_PATCH: "bootstrap"
}  # fmt: skip


def short_name(type_url: str) -> str:
    return SHORT_NAMES.get(type_url, type_url.rsplit(".", 1)[-1])


@dataclass(frozen=True, slots=True)
class XdsResource:
    """A resource, serialised once, held as its entry in a SotW response (an Any, the resource's bytes at
    its end): every response that carries it copies these bytes as they are. The bytes are held once:
    `body` is cut from the entry when asked for (config dumps, patches; never on the push path), and
    the entry of a delta response is made the first time a delta stream sends the resource."""

    name: str
    type_url: str
    version: str
    sotw_entry: bytes  # DiscoveryResponse.resources: Any{type_url = 1, value = 2}, the body last
    body_size: int
    _delta: bytes = field(default=b"", compare=False, repr=False)  # the delta entry, once made

    @property
    def body(self) -> bytes:
        return self.sotw_entry[len(self.sotw_entry) - self.body_size :]

    @property
    def delta_entry(self) -> bytes:
        """DeltaDiscoveryResponse.resources: Resource{version = 1, resource = 2, name = 3}."""
        entry = self._delta
        if not entry:
            packed = self.sotw_entry[_prefix_size(self.sotw_entry) :]  # the Any
            entry = length_delimited(
                2, string_field(1, self.version) + length_delimited(2, packed) + string_field(3, self.name)
            )
            object.__setattr__(self, "_delta", entry)  # a cache: not part of the value (frozen otherwise)
        return entry

    def to_any(self) -> any_pb2.Any:
        return any_pb2.Any(type_url=self.type_url, value=self.body)


def _prefix_size(entry: bytes) -> int:
    """The size of a length-delimited field's tag (one byte: field 2) and length varint."""
    read = read_varint(entry, 1)
    assert read is not None  # (an entry this module made)
    return read[0]


def make_raw_resource(name: str, type_url: str, body: bytes) -> XdsResource:
    """A resource from its serialised bytes (built by protobuf or assembled from parts)."""
    version = hashlib.sha256(body).hexdigest()[:16]
    packed = string_field(1, type_url) + length_delimited(2, body)  # google.protobuf.Any
    return XdsResource(name, type_url, version, length_delimited(2, packed), len(body))


def make_resource(name: str, message: Any) -> XdsResource:
    body = message.SerializeToString(deterministic=True)
    return make_raw_resource(name, "type.googleapis.com/" + message.DESCRIPTOR.full_name, body)


def version_of(resources: Iterable[XdsResource]) -> str:
    """A SotW version: a hash of the (name, version) pairs; equal content gives an equal version,
    so versions never collide across meshd restarts."""
    digest = hashlib.sha256()
    for r in sorted(resources, key=lambda r: r.name):
        digest.update(r.name.encode())
        digest.update(b"\0")
        digest.update(r.version.encode())
        digest.update(b"\n")
    return digest.hexdigest()[:16]


class Snapshot:
    """Everything one proxy may receive, by type URL then name.

    A snapshot is either a plain mapping of resources or a stack of shared layers (e.g. what its
    scope sees, then what is specific to the proxy; a later layer wins on equal names). Versions
    are cached per (type, subscription) on each layer, so proxies sharing a layer share its work.
    """

    __slots__ = ("__weakref__", "_diffs", "_layers", "_merged", "_own", "_versions")

    def __init__(
        self,
        resources: Mapping[str, Mapping[str, XdsResource]] | None = None,
        *,
        layers: tuple[Snapshot, ...] = (),
    ) -> None:
        self._own = resources or {}
        self._layers = layers
        self._versions: dict[tuple[str, frozenset[str] | None], str] = {}
        self._merged: dict[str, dict[str, XdsResource]] | None = None
        # per type: the layer last compared with (weakly: no chain of old layers is kept) and what differs
        self._diffs: dict[str, tuple[weakref.ref[Snapshot], frozenset[str]]] = {}

    @property
    def layers(self) -> tuple[Snapshot, ...]:
        return self._layers

    @property
    def resources(self) -> Mapping[str, Mapping[str, XdsResource]]:
        if not self._layers:
            return self._own
        if self._merged is None:
            merged: dict[str, dict[str, XdsResource]] = {}
            for layer in self._layers:
                for type_url, by_name in layer.resources.items():
                    merged.setdefault(type_url, {}).update(by_name)
            self._merged = merged
        return self._merged

    def of_type(self, type_url: str) -> Mapping[str, XdsResource]:
        """The resources of one type by name. A stack is not merged for this (a proxy's merged stack would
        be held as long as its snapshot: at 1000 services ~0.3 MB for each proxy): the one layer holding
        the type is returned as it is, several are merged into a dict the caller drops."""
        if self._merged is not None or not self._layers:
            return self.resources.get(type_url, {})
        found = [by_name for layer in self._layers if (by_name := layer.of_type(type_url))]
        if len(found) == 1:
            return found[0]
        merged: dict[str, XdsResource] = {}
        for by_name in found:
            merged.update(by_name)
        return merged

    def select(self, type_url: str, names: frozenset[str] | None) -> list[XdsResource]:
        """Resources of a type, all of them (names None: wildcard) or the named ones that exist."""
        by_name = self.of_type(type_url)
        if names is None:
            return [by_name[n] for n in sorted(by_name)]
        return [by_name[n] for n in sorted(names) if n in by_name]

    def get(self, type_url: str, name: str) -> XdsResource | None:
        """One resource (the last layer holding the name wins), without merging the layers."""
        if self._merged is not None or not self._layers:
            return self.resources.get(type_url, {}).get(name)
        for layer in reversed(self._layers):
            found = layer.get(type_url, name)
            if found is not None:
                return found
        return None

    def changed_names(self, before: Snapshot, type_url: str) -> frozenset[str] | None:
        """The names of a type whose resource may differ from `before`'s (a superset of those that do),
        found from the layers that changed: an endpoint change costs the changed layer's size once (the
        diff is kept on the new layer, shared by every proxy of its scope), then the changed names per
        proxy, however many it subscribes. None when the two are not stacks of the same shape."""
        if before is self:
            return frozenset()
        if not self._layers or len(self._layers) != len(before._layers):
            return None
        changed: frozenset[str] = frozenset()
        for mine, theirs in zip(self._layers, before._layers, strict=True):
            if mine is not theirs:
                changed = changed | mine._layer_diff(theirs, type_url)
        return changed

    def _layer_diff(self, before: Snapshot, type_url: str) -> frozenset[str]:
        cached = self._diffs.get(type_url)
        if cached is not None and cached[0]() is before:
            return cached[1]
        mine, theirs = self.of_type(type_url), before.of_type(type_url)
        if mine is theirs:
            diff: frozenset[str] = frozenset()
        else:
            diff = frozenset(n for n in mine.keys() | theirs.keys() if mine.get(n) is not theirs.get(n))
        self._diffs[type_url] = (weakref.ref(before), diff)
        return diff

    def version(self, type_url: str, names: frozenset[str] | None) -> str:
        key = (type_url, names)
        cached = self._versions.get(key)
        if cached is None:
            if self._layers:
                parts = [layer.version(type_url, names) for layer in self._layers if type_url in layer.resources]
                if len(parts) == 1:
                    cached = parts[0]
                else:
                    cached = hashlib.sha256("|".join(parts).encode()).hexdigest()[:16] if parts else version_of(())
            else:
                cached = version_of(self.select(type_url, names))
            self._versions[key] = cached
        return cached

    def same_content(self, other: Snapshot | None) -> bool:
        """True when both hold the very same resource objects (cheap identity comparison)."""
        if other is None or self.resources.keys() != other.resources.keys():
            return False
        for type_url, mine in self.resources.items():
            theirs = other.resources[type_url]
            if len(mine) != len(theirs) or any(theirs.get(n) is not r for n, r in mine.items()):
                return False
        return True


EMPTY_SNAPSHOT = Snapshot(resources={})
