"""The CSDS status meshd reports per proxy and type for Istio's `istio.io/debug/syncz`."""

from __future__ import annotations

from envoy.service.status.v3 import csds_pb2

from meshd.xds.debug_types import is_debug_type, sync_status
from meshd.xds.stream import TypeState


def test_status_follows_what_was_sent_acked_and_nacked() -> None:
    assert sync_status(None) == csds_pb2.NOT_SENT
    assert sync_status(TypeState(subscribed=True)) == csds_pb2.NOT_SENT
    assert sync_status(TypeState(sent_version="v1")) == csds_pb2.STALE
    assert sync_status(TypeState(sent_version="v1", acked_version="v1")) == csds_pb2.SYNCED
    assert sync_status(TypeState(sent_version="v2", acked_version="v1")) == csds_pb2.STALE
    nacked = TypeState(sent_version="v2", acked_version="v1", nack_version="v2", nack_error="bad")
    assert sync_status(nacked) == csds_pb2.ERROR
    # a NACK of an older version does not taint a newer one that was acked
    assert sync_status(TypeState(sent_version="v3", acked_version="v3", nack_version="v2")) == csds_pb2.SYNCED


def test_debug_types_are_istios_prefix() -> None:
    assert is_debug_type("istio.io/debug/syncz")
    assert is_debug_type("istio.io/debug/config_dump")
    assert not is_debug_type("type.googleapis.com/envoy.config.cluster.v3.Cluster")
