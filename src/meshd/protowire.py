"""The few protobuf wire-format primitives meshd writes by hand: varints and length-delimited
fields. Used to assemble messages from pre-serialised parts (a route configuration from its
virtual hosts, a discovery response from its resources) without re-encoding the parts."""

from __future__ import annotations


def varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def length_delimited(field_number: int, payload: bytes) -> bytes:
    """A field of wire type 2 (string, bytes, embedded message)."""
    return varint(field_number << 3 | 2) + varint(len(payload)) + payload


def string_field(field_number: int, value: str) -> bytes:
    """A proto3 string field; the empty string is the default and is not written."""
    return length_delimited(field_number, value.encode()) if value else b""
