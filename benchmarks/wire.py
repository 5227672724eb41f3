"""xDS on the wire for the load client and the reference server: type URLs, the ADS method paths,
and hand-encoded protobuf fields, so that hot paths handle bytes instead of building messages.

Protobuf lets fields come in any order and concatenated encodings merge, so a DiscoveryRequest
can be assembled from pre-encoded parts (node, resource names, ...) with one bytes.join.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from typing import Any

from meshd.protowire import length_delimited, varint

CDS = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
EDS = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"
LDS = "type.googleapis.com/envoy.config.listener.v3.Listener"
RDS = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"
TYPE_URLS = (CDS, EDS, LDS, RDS)
TYPE_NAMES = ("cds", "eds", "lds", "rds")
TYPE_INDEX = {url: i for i, url in enumerate(TYPE_URLS)}
T_CDS, T_EDS, T_LDS, T_RDS = range(4)

SOTW_METHOD = "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources"
DELTA_METHOD = "/envoy.service.discovery.v3.AggregatedDiscoveryService/DeltaAggregatedResources"


def field(number: int, data: bytes | str) -> bytes:
    """One length-delimited field (string, bytes or embedded message)."""
    return length_delimited(number, data.encode() if isinstance(data, str) else data)


def field_size(number: int, length: int) -> int:
    return len(varint((number << 3) | 2)) + len(varint(length)) + length


def repeated(number: int, values: Iterable[str]) -> bytes:
    return b"".join(field(number, v) for v in values)


def digest(data: bytes) -> bytes:
    return hashlib.blake2b(data, digest_size=16).digest()


def any_bytes(type_url: str, body: bytes) -> bytes:
    """An encoded google.protobuf.Any (type_url = 1, value = 2), as upb serialises it."""
    return field(1, type_url) + field(2, body)


def sotw_resources_slice(raw: bytes, msg: Any) -> tuple[int, int] | None:
    """Where the repeated `resources` (field 2) of a serialised DiscoveryResponse lie in `raw`.

    Serializers write fields in number order: version_info(1), resources(2), then type_url(4),
    nonce(5). None if the message has anything that breaks that layout (then decode it fully)."""
    if msg.canary or msg.HasField("control_plane") or len(msg.resource_errors):
        return None
    version = msg.version_info.encode()
    head = field_size(1, len(version)) if version else 0
    tail = 0
    if msg.type_url:
        tail += field_size(4, len(msg.type_url.encode()))
    if msg.nonce:
        tail += field_size(5, len(msg.nonce.encode()))
    end = len(raw) - tail
    if end < head or (head and raw[0] != 0x0A) or (end > head and raw[head] != 0x12):
        return None
    return head, end


def delta_resources_slice(raw: bytes, msg: Any) -> tuple[int, int] | None:
    """Like sotw_resources_slice for a DeltaDiscoveryResponse: system_version_info(1),
    resources(2), then type_url(4), nonce(5), removed_resources(6)."""
    if msg.HasField("control_plane") or len(msg.removed_resource_names) or len(msg.resource_errors):
        return None
    version = msg.system_version_info.encode()
    head = field_size(1, len(version)) if version else 0
    tail = 0
    if msg.type_url:
        tail += field_size(4, len(msg.type_url.encode()))
    if msg.nonce:
        tail += field_size(5, len(msg.nonce.encode()))
    for name in msg.removed_resources:
        tail += field_size(6, len(name.encode()))
    end = len(raw) - tail
    if end < head or (head and raw[0] != 0x0A) or (end > head and raw[head] != 0x12):
        return None
    return head, end
