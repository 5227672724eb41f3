"""Small protobuf builders every translator shares: a message packed into google.protobuf.Any, and an
Istio duration string ("1.5s", "250ms") as google.protobuf.Duration."""

from __future__ import annotations

from google.protobuf import any_pb2, duration_pb2

from meshd.api.values import seconds_nanos


def pack(message: object) -> any_pb2.Any:
    """`message` packed into an Any (type URL `type.googleapis.com/<full name>`)."""
    packed = any_pb2.Any()
    packed.Pack(message)
    return packed


def duration(text: str) -> duration_pb2.Duration:
    """An Istio duration string as protobuf Duration (seconds, nanos)."""
    seconds, nanos = seconds_nanos(text)
    return duration_pb2.Duration(seconds=seconds, nanos=nanos)
