"""Discovery responses written straight to bytes: the header fields, then each resource's
pre-encoded entry. No response message is built, so a push costs a join per proxy."""

from __future__ import annotations

from meshd.protowire import length_delimited, string_field
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
