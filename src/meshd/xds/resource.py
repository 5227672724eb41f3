"""A serialised xDS resource: name, type URL, bytes and a content-hash version.

Each resource is serialised once; the same object (and bytes) is shared by every proxy that
receives it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from google.protobuf import any_pb2

CLUSTER = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
ENDPOINT = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"
LISTENER = "type.googleapis.com/envoy.config.listener.v3.Listener"
ROUTE = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"
SECRET = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"

# Push order that lets Envoy warm without dropping traffic: clusters before their endpoints,
# listeners before the routes they reference.
PUSH_ORDER = (CLUSTER, ENDPOINT, LISTENER, ROUTE, SECRET)
WILDCARD_TYPES = frozenset({CLUSTER, LISTENER})
SHORT_NAMES = {CLUSTER: "cds", ENDPOINT: "eds", LISTENER: "lds", ROUTE: "rds", SECRET: "sds"}


def short_name(type_url: str) -> str:
    return SHORT_NAMES.get(type_url, type_url.rsplit(".", 1)[-1])


@dataclass(frozen=True, slots=True)
class XdsResource:
    name: str
    type_url: str
    body: bytes
    version: str

    def to_any(self) -> any_pb2.Any:
        return any_pb2.Any(type_url=self.type_url, value=self.body)


def make_resource(name: str, message: Any) -> XdsResource:
    body = message.SerializeToString(deterministic=True)
    type_url = "type.googleapis.com/" + message.DESCRIPTOR.full_name
    return XdsResource(name=name, type_url=type_url, body=body, version=hashlib.sha256(body).hexdigest()[:16])


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


@dataclass(frozen=True)
class Snapshot:
    """Everything one proxy may receive, by type URL then name."""

    resources: Mapping[str, Mapping[str, XdsResource]]
    _versions: dict[tuple[str, frozenset[str] | None], str] = field(
        default_factory=dict, compare=False, repr=False
    )

    def select(self, type_url: str, names: frozenset[str] | None) -> list[XdsResource]:
        """Resources of a type, all of them (names None: wildcard) or the named ones that exist."""
        by_name = self.resources.get(type_url, {})
        if names is None:
            return [by_name[n] for n in sorted(by_name)]
        return [by_name[n] for n in sorted(names) if n in by_name]

    def version(self, type_url: str, names: frozenset[str] | None) -> str:
        key = (type_url, names)
        if key not in self._versions:
            self._versions[key] = version_of(self.select(type_url, names))
        return self._versions[key]


EMPTY_SNAPSHOT = Snapshot(resources={})
