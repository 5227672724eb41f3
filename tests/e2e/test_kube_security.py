"""meshd's CA in Kubernetes mode, end to end against the fake API server: `meshd serve --kubeconfig`
creates its root in Secret `istio-ca-secret`, the leader publishes it to every namespace as
ConfigMap `istio-ca-root-cert` (also to a namespace created later), and a workload authenticated by
a TokenReview gets a certificate whose only SAN is its own SPIFFE identity, also from a worker process's
secure port."""

from __future__ import annotations

import asyncio
import base64
import pathlib
import sys
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from cryptography import x509

from meshd.agent.ca_client import generate_csr, request_certificate
from tests.ca_fixture import fake_jwt
from tests.e2e.harness import eventually, free_port
from tests.kubeapi import FakeApiServer, TokenIdentity

pytestmark = pytest.mark.e2e


def namespace(name: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}


@pytest.fixture(params=["1", "2"], ids=["main", "workers"])
async def cluster(request: pytest.FixtureRequest, tmp_path: pathlib.Path) -> AsyncIterator[tuple[FakeApiServer, int]]:
    """meshd serving the secure port itself, or from two workers (the main process reviews the token)."""
    server = FakeApiServer()
    await server.start()
    for name in ("istio-system", "default", "shop"):
        server.create(namespace(name))
    secure_port = free_port()
    log = (tmp_path / "meshd.log").open("ab")
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "meshd", "serve", "--kubeconfig", str(server.write_kubeconfig(tmp_path / "kubeconfig")),
        "--xds-host", "127.0.0.1", "--xds-port", str(free_port()),
        "--http-host", "127.0.0.1", "--http-port", str(free_port()),
        "--secure-host", "127.0.0.1", "--secure-port", str(secure_port),
        "--lease-duration", "4", "--workers", request.param,
        stdout=log, stderr=log,
    )  # fmt: skip
    try:
        yield server, secure_port
    finally:
        process.terminate()
        await process.wait()
        log.close()
        await server.stop()


async def test_root_in_a_secret_published_to_every_namespace_and_token_reviewed_csrs(
    cluster: tuple[FakeApiServer, int],
) -> None:
    server, secure_port = cluster

    async def root_secret() -> str | None:
        secret = server.get("v1", "Secret", "istio-system", "istio-ca-secret")
        return base64.b64decode(secret["data"]["ca-cert.pem"]).decode() if secret else None

    root = await eventually(root_secret, what="the CA root in Secret istio-ca-secret")

    def published(ns: str) -> bool:
        config_map = server.get("v1", "ConfigMap", ns, "istio-ca-root-cert")
        return config_map is not None and config_map["data"]["root-cert.pem"].strip() == root.strip()

    async def everywhere() -> bool:
        return all(published(ns) for ns in ("istio-system", "default", "shop"))

    await eventually(everywhere, what="istio-ca-root-cert in every namespace")
    server.create(namespace("late"))

    async def late() -> bool:
        return published("late")

    await eventually(late, timeout=10, what="istio-ca-root-cert in a namespace created later")

    token = fake_jwt({"sub": "system:serviceaccount:shop:cart"})
    server.tokens[token] = TokenIdentity(username="system:serviceaccount:shop:cart")
    _, csr = generate_csr(identity="spiffe://cluster.local/ns/default/sa/admin")  # asks for someone else's SAN

    async def signed() -> list[str] | None:
        try:
            return await request_certificate(
                address=f"127.0.0.1:{secure_port}",
                root_cert_pem=root,
                token=token,
                csr_pem=csr,
                ttl_s=3600,
                server_name="istiod.istio-system.svc",
            )
        except grpc.aio.AioRpcError as exc:  # workers still starting: nothing listens yet
            if exc.code() != grpc.StatusCode.UNAVAILABLE:
                raise
            return None

    chain = await eventually(signed, timeout=20, what="a CSR signed on the secure port")
    leaf = x509.load_pem_x509_certificate(chain[0].encode())
    sans = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert [str(uri) for uri in sans.get_values_for_type(x509.UniformResourceIdentifier)] == [
        "spiffe://cluster.local/ns/shop/sa/cart"
    ]
    assert server.count(verb="tokenreview") >= 1
