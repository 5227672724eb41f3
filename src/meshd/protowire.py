"""The few protobuf wire-format primitives meshd writes (and reads) by hand: varints and length-delimited
fields. Used to assemble messages from pre-serialised parts (a route configuration from its
virtual hosts, a discovery response from its resources) without re-encoding the parts, and to read
the few fields of a request that are read without parsing it (xds/request_bytes.py)."""

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


def read_varint(data: bytes, pos: int) -> tuple[int, int] | None:
    """The varint at `pos` as (where it ends, its value), or None when it is cut short or longer than the
    5 bytes a length may take."""
    value, shift = 0, 0
    while pos < len(data) and shift < 35:
        byte = data[pos]
        value |= (byte & 0x7F) << shift
        pos += 1
        if not byte & 0x80:
            return pos, value
        shift += 7
    return None
