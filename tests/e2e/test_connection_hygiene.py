"""Connection hygiene on the secure port (issue 20, defect 12), against the in-process CA server as
`meshd serve` wires it: TLS handshakes time out, TLS connections that send no request are closed, the
open-connection cap refuses the excess (counted), and real clients keep working."""

from __future__ import annotations

import asyncio
import pathlib
import socket
import ssl
from collections.abc import AsyncIterator

import pytest

from tests.ca_fixture import CaUnderTest, start_ca
from tests.e2e.harness import eventually

pytestmark = pytest.mark.e2e
PREFACE_AND_SETTINGS = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"


@pytest.fixture
async def ca(tmp_path: pathlib.Path) -> AsyncIterator[CaUnderTest]:
    under_test = await start_ca(
        tmp_path, tls_handshake_timeout_s=0.5, first_request_timeout_s=0.5, secure_max_connections=4
    )
    try:
        yield under_test
    finally:
        await under_test.stop()


def _client_context() -> ssl.SSLContext:
    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    context.set_alpn_protocols(["h2"])
    return context


async def _tls(ca: CaUnderTest) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", ca.security.port, ssl=_client_context())


def _count(ca: CaUnderTest, name: str) -> float:
    return ca.metrics.registry.get_sample_value(name, {"listener": "secure"}) or 0.0


async def _closed_by_server(reader: asyncio.StreamReader, timeout: float = 5.0) -> bool:
    try:
        return await asyncio.wait_for(reader.read(65536), timeout) == b"" or await _closed_by_server(reader, timeout)
    except (ConnectionError, ssl.SSLError):
        return True


async def test_tls_connection_that_sends_nothing_is_closed(ca: CaUnderTest) -> None:
    reader, writer = await _tls(ca)
    assert await _closed_by_server(reader)
    assert _count(ca, "meshd_connections_closed_idle") == 1
    writer.transport.abort()
    await ca.assert_healthy()


async def test_tls_connection_that_opens_no_request_is_closed(ca: CaUnderTest) -> None:
    reader, writer = await _tls(ca)
    writer.write(PREFACE_AND_SETTINGS)  # HTTP/2 set up, never a HEADERS frame
    assert await _closed_by_server(reader)
    assert _count(ca, "meshd_connections_closed_idle") == 1
    writer.transport.abort()


async def test_connections_carrying_requests_outlive_the_first_request_timeout(ca: CaUnderTest) -> None:
    from meshd._gen.istio.v1.auth import ca_pb2, ca_pb2_grpc
    from meshd.agent.ca_client import generate_csr, secure_channel

    async with secure_channel(address=ca.address, root_cert_pem=ca.root, client_cert=None) as channel:
        stub = ca_pb2_grpc.IstioCertificateServiceStub(channel)
        for _ in range(3):
            request = ca_pb2.IstioCertificateRequest(csr=generate_csr()[1], validity_duration=600)
            await stub.CreateCertificate(request, metadata=(("authorization", "Bearer tok-web"),), timeout=10)
            waited = asyncio.get_running_loop().time() + 0.6  # past the 0.5 s first-request timeout
            await eventually(lambda w=waited: _after(w), what="the first-request timeout to pass")
    assert _count(ca, "meshd_connections_closed_idle") == 0


async def _after(when: float) -> bool:
    return asyncio.get_running_loop().time() > when


async def test_handshake_that_never_starts_times_out(ca: CaUnderTest) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", ca.security.port)  # TCP only, no ClientHello
    assert await _closed_by_server(reader)
    assert _count(ca, "meshd_tls_handshake_failures") == 1
    writer.close()


async def test_connection_cap_refuses_the_excess_and_frees_slots(ca: CaUnderTest) -> None:
    held = [socket.create_connection(("127.0.0.1", ca.security.port)) for _ in range(4)]
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", ca.security.port)
        assert await _closed_by_server(reader, timeout=0.4)  # closed at once, well before the handshake timeout
        writer.close()
        assert _count(ca, "meshd_connections_refused") == 1
    finally:
        for sock in held:
            sock.close()

    async def slots_free() -> bool:
        return ca.metrics.registry.get_sample_value("meshd_connections_open", {"listener": "secure"}) == 0

    await eventually(slots_free, what="the closed connections to give their places back")
    await ca.assert_healthy()
