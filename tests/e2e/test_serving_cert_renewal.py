"""meshd's serving certificate on the secure port renews itself (issue 20, defect 5): `meshd serve`
as a real process with a 4-second serving-certificate lifetime; after the first certificate has
expired, a client verifying the chain connects, gets a new certificate and has its CSR signed. The same
with two worker processes serving the port: each loads the main process's renewed certificate."""

from __future__ import annotations

import asyncio
import datetime
import pathlib
import ssl

import pytest
from cryptography import x509

from meshd.agent.ca_client import generate_csr, request_certificate
from tests.ca_fixture import TOKEN_FILE
from tests.e2e.harness import Meshd, eventually

pytestmark = pytest.mark.e2e


async def _served(meshd: Meshd, root: str) -> x509.Certificate:
    """The certificate a new, verifying TLS client gets on the secure port."""
    context = ssl.create_default_context(cadata=root)
    context.set_alpn_protocols(["h2"])
    _, writer = await asyncio.open_connection(
        "127.0.0.1", meshd.secure_port, ssl=context, server_hostname="istiod.istio-system.svc"
    )
    try:
        der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
        return x509.load_der_x509_certificate(der)
    finally:
        writer.close()


@pytest.mark.parametrize("workers", ["1", "2"])
async def test_secure_port_certificate_is_renewed_before_it_expires(tmp_path: pathlib.Path, workers: str) -> None:
    config = tmp_path / "config"
    config.mkdir()
    tokens = tmp_path / "tokens.yaml"
    tokens.write_text(TOKEN_FILE)
    meshd = Meshd(
        config_dir=config,
        log_path=tmp_path / "meshd.log",
        extra_args=("--ca-token-file", str(tokens), "--serving-cert-ttl", "4", "--workers", workers),
    )
    await meshd.start()
    try:
        root = (meshd.ca_dir / "root-cert.pem").read_text()
        first = await _served(meshd, root)
        assert first.not_valid_after_utc - datetime.datetime.now(datetime.UTC) < datetime.timedelta(seconds=5)

        async def first_expired() -> bool:
            return datetime.datetime.now(datetime.UTC) > first.not_valid_after_utc + datetime.timedelta(seconds=0.5)

        await eventually(first_expired, timeout=10, interval=0.1, what="the first serving certificate to expire")
        # verified: a valid chain for the name; new connections, spread over the workers by the kernel
        for _ in range(12 if workers == "2" else 1):
            later = await _served(meshd, root)
            assert later.serial_number != first.serial_number
            assert later.not_valid_after_utc > datetime.datetime.now(datetime.UTC)
        chain = await request_certificate(
            address=f"127.0.0.1:{meshd.secure_port}", root_cert_pem=root, token="tok-web", csr_pem=generate_csr()[1],
            ttl_s=600,
        )  # fmt: skip
        assert len(chain) >= 2
        metrics = await meshd.metrics()
        assert 'meshd_serving_cert_renewals{server="secure"}' in metrics
        assert "event=serving_cert_renewed server=secure" in meshd.log()
    finally:
        await meshd.close()
