"""Discovery responses written straight to bytes: the header fields, then each resource's
pre-encoded entry. No response message is built, so a push costs a join per proxy, and streams sending
the very same response share one join (`ResponseBytes`)."""

from __future__ import annotations

import collections
from collections.abc import Hashable

from meshd.protowire import length_delimited, string_field
from meshd.xds.resource import XdsResource
from meshd.xds.stream import Response

# DiscoveryResponse: version_info = 1, resources = 2, type_url = 4, nonce = 5
# DeltaDiscoveryResponse: system_version_info = 1, resources = 2, type_url = 4, nonce = 5,
#                         removed_resources = 6


def sotw_response(resp: Response) -> bytes:
    return b"".join(
        [
            string_field(1, resp.version),
            *(r.sotw_entry for r in resp.resources),
            string_field(4, resp.type_url),
            string_field(5, resp.nonce),
        ]
    )


def delta_response(resp: Response) -> bytes:
    return b"".join(
        [
            string_field(1, resp.version),
            *(r.delta_entry for r in resp.resources),
            string_field(4, resp.type_url),
            string_field(5, resp.nonce),
            *(length_delimited(6, name.encode()) for name in resp.removed),  # repeated: always written
        ]
    )


class ResponseBytes:
    """The bytes of responses, shared by the streams that send the same one.

    A scope's proxies are sent the same resources at the same version, and as their streams go through
    the same requests their nonces (the process's prefix and the stream's count of responses) are the same
    too: without Sidecars, at 1000 services every one of 2000 proxies is sent one 3.8 MB cluster response
    and one 0.5 MB route response per VirtualService edit. Joining each of them again cost most of a push
    (a fresh allocation of that size faults in its pages). A response is looked up by its type, version,
    nonce, removed names and the identity of each resource, in order; the resources are held with the
    bytes, so an identity cannot be reused while its entry lives. Bounded by size and count (least
    recently used first out): a response nobody else sends costs a lookup and a short stay."""

    def __init__(self, *, limit_bytes: int = 64 << 20, limit_entries: int = 256) -> None:
        self._limit_bytes, self._limit_entries = limit_bytes, limit_entries
        self._size = 0
        self._held: collections.OrderedDict[Hashable, tuple[tuple[XdsResource, ...], bytes]] = collections.OrderedDict()
        self.hits = self.misses = 0

    def __call__(self, resp: Response, *, delta: bool) -> bytes:
        key = (delta, resp.type_url, resp.version, resp.nonce, resp.removed, tuple(map(id, resp.resources)))
        held = self._held.get(key)
        if held is not None:
            self._held.move_to_end(key)
            self.hits += 1
            return held[1]
        self.misses += 1
        data = delta_response(resp) if delta else sotw_response(resp)
        self._held[key] = (resp.resources, data)
        self._size += len(data)
        while self._held and (self._size > self._limit_bytes or len(self._held) > self._limit_entries):
            _, (_, dropped) = self._held.popitem(last=False)
            self._size -= len(dropped)
        return data
