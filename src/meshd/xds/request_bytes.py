"""A SotW ACK recognised from its bytes, without parsing it.

Envoy's ACK repeats the names of its last request: at 1000 services an endpoint ACK names 3000 clusters
(~150 kB). Parsing it (~40 us) and hashing its names (~37 us) cost more than everything else done for
the ACK. Envoy serialises a DiscoveryRequest in field order: version_info (1), node (2, on the first
request), resource_names (3), type_url (4), response_nonce (5), error_detail (6, a NACK). An ACK of the
same names differs from the last request only in fields 1 and 5. So:

- a request read the slow way (parsed) keeps the bytes between its leading field 1 (and the node, when
  one follows) and its trailing fields 4 + 5: its names (`names_bytes`), when it is laid out so and is not
  a NACK; equal such bytes are one object across streams (`NamesBytes`: every proxy of a scope subscribes
  the same names);
- a later request that ends with the type and the nonce last sent for a type, and whose middle is those
  very bytes (a memcmp), is that type's ACK of the same names (`recognise_ack`): its version is read
  from its head, its names are the last request's tuple. Nothing else is parsed.

Bytes not laid out so (a NACK, another order, unknown fields around the names, a stale nonce) are parsed.
The names' bytes matched were parsed once in a request without an error, between these very fields, so
the request parses to what the fast path says, but for what only a client forging its bytes could cause
(a field 1 among its names), which can only confuse its own subscription. A node (left out of what is
compared) is parsed on its own, at the depth it has in the request: one protobuf refuses is refused.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from envoy.service.discovery.v3 import discovery_pb2

from meshd.obs.logsafe import quoted
from meshd.protowire import read_varint, string_field
from meshd.xds.stream import Request, SotwStream

VERSION_TAG = 0x0A  # field 1, wire type 2
NODE_TAG = 0x12  # field 2, wire type 2


@dataclass(frozen=True)
class Received:
    """A SotW request as the deserializer hands it in: its bytes, parsed (or not) by the stream's task."""

    data: bytes


@dataclass(frozen=True)
class Unparsable:
    """What a request parses to when protobuf cannot parse its bytes (instead of raising, which in the
    deserializer gRPC turned into a silent end of the stream with status OK)."""

    reason: str


def parser(message_type: Any) -> Callable[[bytes], Any]:
    def parse(data: bytes) -> Any:
        try:
            return message_type.FromString(data)
        except Exception as exc:  # DecodeError (e.g. nested beyond protobuf's depth limit), RecursionError
            return Unparsable(f"{message_type.DESCRIPTOR.name} cannot be parsed: {quoted(str(exc), 300)}")

    return parse


parse_sotw = parser(discovery_pb2.DiscoveryRequest)


def names_bytes(data: bytes, *, version: str, type_url: str, nonce: str, nack: bool) -> bytes | None:
    """The names' bytes of a parsed SotW DiscoveryRequest (`data`: its bytes; the rest: its fields as
    parsed), or None for a NACK or bytes not laid out as Envoy writes them."""
    head = string_field(1, version)
    tail = string_field(4, type_url) + string_field(5, nonce)
    end = len(data) - len(tail)
    if nack or end < len(head) or not data.startswith(head) or not data.endswith(tail):
        return None
    start = _after_node(data, len(head), end)
    return data[start:end] if start is not None else None


def _after_node(data: bytes, pos: int, end: int) -> int | None:
    """Where the names begin: after the node when one leads them (Envoy sends it on a stream's first
    request, or on every one without `set_node_on_first_message_only`, as the benchmarks' load client
    does; meshd reads it only when the stream opens, so it is left out of what is compared and kept).
    None when its length runs past `end`."""
    if pos >= end or data[pos] != NODE_TAG:
        return pos
    read = read_varint(data, pos + 1)
    if read is None or read[0] + read[1] > end:
        return None
    return read[0] + read[1]


def _head(data: bytes) -> tuple[str, int] | None:
    """The version a request starts with and where it ends; ("", 0) without one; None when unreadable."""
    if not data or data[0] != VERSION_TAG:
        return "", 0
    read = read_varint(data, 1)
    if read is None or read[0] + read[1] > len(data):
        return None
    start, length = read
    try:
        return data[start : start + length].decode(), start + length
    except UnicodeDecodeError:
        return None  # protobuf refuses it: parsed, and refused, the slow way


def recognise_ack(data: bytes, stream: SotwStream) -> Request | None:
    """The request `data` is when it answers the last response of a type of `stream` without an error and
    names what that type's last request named; else None (then it is parsed)."""
    for type_url, st in stream.types.items():
        key, nonce = st.requested_key, st.sent_nonce
        if key is None or not nonce or not data.endswith(nonce.encode()):
            continue
        tail = string_field(4, type_url) + string_field(5, nonce)
        if not data.endswith(tail):
            continue
        head = _head(data)
        if head is None:
            return None
        version, start = head
        end = len(data) - len(tail)
        names = _after_node(data, start, end)
        if names is None or end - names != len(key) or not data.startswith(key, names):
            return None
        if names != start and isinstance(parse_sotw(data[start:names]), Unparsable):
            return None  # a node protobuf refuses (nested too deep): the request is parsed, and refused
        return Request(
            type_url=type_url,
            version_info=version,
            response_nonce=nonce,
            resource_names=st.requested if st.requested is not None else (),
            names_key=key,
        )
    return None


class NamesBytes:
    """One object per distinct names' bytes, shared by the streams holding them (a stream keeps its last
    request's; thousands of proxies subscribe the same). Bounded by size: when full it starts again (an
    uninterned copy costs memory, never a wrong answer)."""

    def __init__(self, limit_bytes: int = 64 << 20) -> None:
        self._limit = limit_bytes
        self._size = 0
        self._held: dict[bytes, bytes] = {}

    def __call__(self, data: bytes) -> bytes:
        found = self._held.get(data)
        if found is None:
            if self._size + len(data) > self._limit:
                self._held.clear()
                self._size = 0
            found = self._held[data] = data
            self._size += len(data)
        return found


def message_of(item: Any) -> Any:
    """What a stream's inbox holds, as a request message (or PUSH, CLOSED, an Unparsable)."""
    return parse_sotw(item.data) if isinstance(item, Received) else item
