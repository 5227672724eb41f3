"""Upstream TLS for a DestinationRule's `trafficPolicy.tls`.

STUB (wt-policy): always plaintext until the TLS helper's version of this module is merged; the
lead takes that version at merge time."""

from __future__ import annotations

from envoy.config.core.v3.base_pb2 import TransportSocket

from meshd.api.destinationrule import ClientTLSSettings


def transport_socket(tls: ClientTLSSettings | None, *, host: str, namespace: str) -> TransportSocket | None:
    return None  # STUB: replaced by the TLS slice (None = plaintext)
