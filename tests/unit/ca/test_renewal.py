"""Serving certificates renew themselves at half life, on the injected clock, and new handshakes get
the new certificate from the same SSLContext (issue 20, defect 5)."""

from __future__ import annotations

import asyncio
import datetime
import logging
import ssl

import pytest
from cryptography import x509
from prometheus_client import CollectorRegistry

from meshd.ca.material import generate_root, load
from meshd.ca.renewal import RenewedCertificate
from meshd.ca.serving import ServingCert, issue_serving_cert, secure_port_context, webhook_ssl_context
from meshd.ca.signer import Signer, SignerUnavailable
from meshd.obs.metrics import Metrics

START = datetime.datetime(2030, 1, 1, tzinfo=datetime.UTC)
log = logging.getLogger("test.renewal")


class FakeTime:
    """One fake time for the Clock (sleep advances it) and the signer's wall clock. After `limit`
    sleeps, sleep blocks until cancelled."""

    def __init__(self, limit: int) -> None:
        self.wall_time, self.limit = START, limit
        self.sleeps: list[float] = []

    def wall(self) -> datetime.datetime:
        return self.wall_time

    def now(self) -> float:
        return (self.wall_time - START).total_seconds()

    async def sleep(self, seconds: float) -> None:
        if len(self.sleeps) >= self.limit:
            await asyncio.Event().wait()
        self.sleeps.append(seconds)
        self.wall_time += datetime.timedelta(seconds=seconds)
        await asyncio.sleep(0)


def _leaf_der(cert: ServingCert) -> bytes:
    return ssl.PEM_cert_to_DER_cert(cert.chain_pem.decode())


async def _served_der(context: ssl.SSLContext) -> bytes:
    """The certificate a new handshake gets from a server using `context`."""
    server = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0, ssl=context)
    client = ssl.create_default_context()
    client.check_hostname, client.verify_mode = False, ssl.CERT_NONE
    try:
        port = server.sockets[0].getsockname()[1]
        _, writer = await asyncio.open_connection("127.0.0.1", port, ssl=client)
        der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
        writer.close()
        return bytes(der)
    finally:
        server.close()
        await server.wait_closed()


@pytest.mark.parametrize("server", ["secure", "webhook"])
async def test_renews_at_half_life_and_new_handshakes_get_the_new_certificate(server: str) -> None:
    time = FakeTime(limit=2)
    signer = Signer(
        ca=load(generate_root(now=START, trust_domain="cluster.local"), now=START),
        trust_domain="cluster.local",
        wall=time.wall,
    )
    metrics = Metrics(CollectorRegistry())

    def issue() -> ServingCert:
        return issue_serving_cert(signer, sans=["istiod.istio-system.svc"], ttl_s=100)

    first = issue()
    context = secure_port_context(signer, cert=first) if server == "secure" else webhook_ssl_context(cert=first)
    renewed = RenewedCertificate(
        server=server,
        context=context,
        current=first,
        issue=issue,
        clock=time,
        wall=time.wall,
        metrics=metrics.ca,
        log=log,
    )
    assert await _served_der(context) == _leaf_der(first)
    task = asyncio.create_task(renewed.run())
    deadline = asyncio.get_running_loop().time() + 10
    while len(time.sleeps) < 2 or metrics.ca.serving_renewals.get(server) < 2:
        assert asyncio.get_running_loop().time() < deadline, (time.sleeps, metrics.ca.serving_renewals.values)
        await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert time.sleeps == [pytest.approx(50.0, abs=1), pytest.approx(50.0, abs=1)]  # half of each life
    served = await _served_der(context)
    assert served == _leaf_der(renewed.current) != _leaf_der(first)
    not_after = x509.load_der_x509_certificate(served).not_valid_after_utc
    assert not_after == START + datetime.timedelta(seconds=200)  # issued at t=100 for 100 s
    expiry = metrics.registry.get_sample_value("meshd_serving_cert_expiry_timestamp", {"server": server})
    assert expiry == not_after.timestamp()


async def test_failed_renewal_is_retried_and_counted_while_the_current_certificate_serves() -> None:
    time = FakeTime(limit=2)
    signer = Signer(
        ca=load(generate_root(now=START, trust_domain="cluster.local"), now=START),
        trust_domain="cluster.local",
        wall=time.wall,
    )
    metrics = Metrics(CollectorRegistry())
    first = issue_serving_cert(signer, sans=["localhost"], ttl_s=100)
    calls = 0

    def issue() -> ServingCert:
        nonlocal calls
        calls += 1
        raise SignerUnavailable("down")

    renewed = RenewedCertificate(
        server="secure",
        context=secure_port_context(signer, cert=first),
        current=first,
        issue=issue,
        clock=time,
        wall=time.wall,
        metrics=metrics.ca,
        log=log,
    )
    task = asyncio.create_task(renewed.run())
    deadline = asyncio.get_running_loop().time() + 10
    while calls < 2:
        assert asyncio.get_running_loop().time() < deadline
        await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert time.sleeps == [pytest.approx(50.0, abs=1), pytest.approx(5.0, abs=1)]  # a tenth of what remains
    assert metrics.ca.serving_renewal_failures.get("secure") == 2
    assert renewed.current is first
