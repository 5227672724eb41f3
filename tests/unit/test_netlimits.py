"""GatedListener: descriptor exhaustion on accept is shed, counted and logged once per interval, not
once per failure (issue 20, defect 12: 226,592 log errors), and the listener keeps serving after it."""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import socket

import pytest

from meshd.netlimits import ConnectionGate, GatedListener


async def test_descriptor_exhaustion_is_counted_and_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    counts = {"refused": 0, "exhausted": 0}
    listener = GatedListener(
        name="secure",
        host="127.0.0.1",
        port=0,
        max_connections=100,
        on_refused=lambda: counts.__setitem__("refused", counts["refused"] + 1),
        on_exhausted=lambda: counts.__setitem__("exhausted", counts["exhausted"] + 1),
        log=logging.getLogger("test.netlimits"),
        log_every_s=3600,
    )
    real_accept = listener.socket._accept  # type: ignore[attr-defined]
    failures = 500

    def accept() -> tuple[int, object]:
        nonlocal failures
        if failures > 0:
            failures -= 1
            raise OSError(errno.EMFILE, "Too many open files")
        return real_accept()  # type: ignore[no-any-return]

    listener.socket._accept = accept  # type: ignore[attr-defined]
    served = asyncio.Event()

    async def handle(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        served.set()
        writer.close()

    server = await asyncio.start_server(handle, sock=listener.socket)
    client = socket.create_connection(("127.0.0.1", listener.port))
    try:
        with caplog.at_level(logging.ERROR):
            await asyncio.wait_for(served.wait(), 10)
        assert counts["exhausted"] >= 250  # each event also tries to shed the pending connection (one more accept)
        lines = [r for r in caplog.records if "accept_failed" in r.getMessage()]
        assert len(lines) == 1 and "EMFILE" in lines[0].getMessage()
        assert not [r for r in caplog.records if r.name == "asyncio"]  # asyncio logged nothing either
    finally:
        client.close()
        server.close()
        await server.wait_closed()
        listener.close()


def test_a_handed_over_connection_is_counted_and_refused_over_the_cap() -> None:
    refused: list[int] = []
    gate = ConnectionGate(name="secure", max_connections=1, on_refused=lambda: refused.append(1))
    a_client, a_server = socket.socketpair()
    b_client, b_server = socket.socketpair()
    try:
        adopted = gate.adopt(os.dup(a_server.fileno()))
        assert adopted is not None and gate.open == 1
        b_fd = os.dup(b_server.fileno())
        assert gate.adopt(b_fd) is None and refused == [1]
        with pytest.raises(OSError):
            os.fstat(b_fd)  # refused: closed at once
        a_client.sendall(b"x")
        assert adopted.recv(1) == b"x"  # the same connection, family and type read from the descriptor
        adopted.close()
        assert gate.open == 0
        again = gate.adopt(os.dup(a_server.fileno()))
        assert again is not None and gate.open == 1
        again.close()
    finally:
        for sock in (a_client, a_server, b_client, b_server):
            sock.close()
