"""The hand-written wire primitives: a varint read back is the value written, at every length boundary,
and a varint cut short or too long for a length is refused."""

from __future__ import annotations

from meshd.protowire import read_varint, varint


def test_a_varint_reads_back_what_was_written() -> None:
    for value in (0, 1, 127, 128, 300, 16383, 16384, 2**21 - 1, 2**21, 2**28 - 1, 2**28, 2**32 - 1):
        data = b"\x0a" + varint(value) + b"rest"
        assert read_varint(data, 1) == (1 + len(varint(value)), value)


def test_a_varint_cut_short_or_longer_than_five_bytes_is_refused() -> None:
    assert read_varint(b"\x80\x80", 0) is None
    assert read_varint(b"", 0) is None
    assert read_varint(b"\x80\x80\x80\x80\x80\x01", 0) is None
