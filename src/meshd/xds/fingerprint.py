"""A SotW request's subscription, recognised from its bytes without reading its names.

Envoy's ACK repeats the names of its last request: at 1000 services an endpoint ACK names 3000 clusters,
and turning them into Python strings to compare them with the last list cost more than everything else
done for the ACK. Envoy serialises a DiscoveryRequest in field order: version_info (1), node (2, on the
first request), resource_names (3), type_url (4), response_nonce (5), error_detail (6, a NACK). An ACK
of the same names differs from the last request only in fields 1 and 5. So the bytes between a leading
field 1 and trailing fields 4 + 5 (node and names) are fingerprinted instead: equal fingerprints of two
requests on one stream mean equal names (64-bit SipHash with a per-process key; the bytes are compared
by length too). Bytes not laid out so (a NACK, another order, unknown fields) have no fingerprint and
their names are read; nothing depends on the layout for correctness but the one client that sends it:
at worst a client that forges a layout confuses its own subscription.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from meshd.protowire import string_field

Fingerprint = tuple[int, int]


@dataclass(frozen=True)
class Received:
    """A SotW request as the deserializer hands it in: the message and its names' fingerprint."""

    message: Any
    names_key: Fingerprint | None


def message_of(item: Any) -> Any:
    """What a stream's inbox holds, as a request message (or PUSH, CLOSED, an unparsable request)."""
    return item.message if isinstance(item, Received) else item


def names_fingerprint(data: bytes, *, version: str, type_url: str, nonce: str) -> Fingerprint | None:
    """The fingerprint of a SotW DiscoveryRequest's node and names (`data`: its bytes; the other
    arguments: its fields as parsed), or None when its bytes are not laid out as Envoy writes them."""
    head = string_field(1, version)
    tail = string_field(4, type_url) + string_field(5, nonce)
    end = len(data) - len(tail)
    if end < len(head) or not data.startswith(head) or not data.endswith(tail):
        return None
    middle = memoryview(data)[len(head) : end]
    return len(middle), hash(middle)
