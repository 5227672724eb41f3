"""Webhook certificates from meshd's own CA, end to end against the fake API server: `meshd serve
--kubeconfig` (no --webhook-cert) serves `/inject` and `/validate` with a certificate issued by its CA,
the leader writes that CA's root into the `caBundle` of every webhook of the MutatingWebhookConfiguration
and the ValidatingWebhookConfiguration (installed with an empty caBundle and `failurePolicy: Ignore`),
and, once meshd is ready, switches the validating webhooks to `failurePolicy: Fail`."""

from __future__ import annotations

import asyncio
import base64
import json
import pathlib
import ssl
import sys
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from tests.e2e.harness import eventually, free_port
from tests.kubeapi import FakeApiServer
from tests.unit.kube.test_inject import make_pod, make_review

pytestmark = pytest.mark.e2e

ADMISSION = "admissionregistration.k8s.io/v1"


def webhook(name: str, path: str) -> dict[str, Any]:
    return {
        "name": name,
        "clientConfig": {"service": {"name": "meshd", "namespace": "istio-system", "path": path, "port": 443}},
        "failurePolicy": "Ignore",
        "sideEffects": "None",
        "admissionReviewVersions": ["v1"],
        "rules": [{"operations": ["CREATE"], "apiGroups": [""], "apiVersions": ["v1"], "resources": ["pods"]}],
    }


def configurations() -> list[dict[str, Any]]:
    injector = {
        "apiVersion": ADMISSION,
        "kind": "MutatingWebhookConfiguration",
        "metadata": {"name": "meshd-sidecar-injector"},
        "webhooks": [
            {
                **webhook("namespace.sidecar-injector.istio.io", "/inject"),
                "namespaceSelector": {"matchLabels": {"istio-injection": "enabled"}},
            },
            {
                **webhook("object.sidecar-injector.istio.io", "/inject"),
                "objectSelector": {"matchLabels": {"sidecar.istio.io/inject": "true"}},
            },
        ],
    }
    validator = {
        "apiVersion": ADMISSION,
        "kind": "ValidatingWebhookConfiguration",
        "metadata": {"name": "meshd-validator"},
        "webhooks": [webhook("rev.validation.istio.io", "/validate")],
    }
    return [injector, validator]


@pytest.fixture
async def cluster(tmp_path: pathlib.Path) -> AsyncIterator[tuple[FakeApiServer, int]]:
    server = FakeApiServer()
    await server.start()
    for name in ("istio-system", "shop"):
        server.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
    for obj in configurations():
        server.create(obj)
    webhook_port = free_port()
    log = (tmp_path / "meshd.log").open("ab")
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "meshd", "serve", "--kubeconfig", str(server.write_kubeconfig(tmp_path / "kubeconfig")),
        "--xds-host", "127.0.0.1", "--xds-port", str(free_port()),
        "--http-host", "127.0.0.1", "--http-port", str(free_port()),
        "--secure-host", "127.0.0.1", "--secure-port", str(free_port()),
        "--webhook-host", "127.0.0.1", "--webhook-port", str(webhook_port),
        "--inject-image", "meshd:ca-bundle-test",
        "--lease-duration", "4",
        stdout=log, stderr=log,
    )  # fmt: skip
    try:
        yield server, webhook_port
    finally:
        process.terminate()
        await process.wait()
        log.close()
        await server.stop()


def bundles(server: FakeApiServer, kind: str, name: str) -> list[str]:
    obj = server.get(ADMISSION, kind, "", name)
    assert obj is not None
    return [hook["clientConfig"].get("caBundle", "") for hook in obj["webhooks"]]


def policies(server: FakeApiServer, kind: str, name: str) -> list[str]:
    obj = server.get(ADMISSION, kind, "", name)
    assert obj is not None
    return [hook["failurePolicy"] for hook in obj["webhooks"]]


async def test_ca_bundle_patched_with_the_root_that_verifies_the_webhook_and_failure_policy_flipped(
    cluster: tuple[FakeApiServer, int],
) -> None:
    server, port = cluster

    async def root() -> str | None:
        secret = server.get("v1", "Secret", "istio-system", "istio-ca-secret")
        return base64.b64decode(secret["data"]["ca-cert.pem"]).decode() if secret else None

    root_pem = await eventually(root, timeout=30, what="the CA root in Secret istio-ca-secret")

    async def patched() -> bool:
        every = bundles(server, "MutatingWebhookConfiguration", "meshd-sidecar-injector") + bundles(
            server, "ValidatingWebhookConfiguration", "meshd-validator"
        )
        return all(every)

    await eventually(patched, timeout=30, what="caBundle of both webhook configurations")
    for bundle in bundles(server, "MutatingWebhookConfiguration", "meshd-sidecar-injector") + bundles(
        server, "ValidatingWebhookConfiguration", "meshd-validator"
    ):
        assert base64.b64decode(bundle).decode().strip() == root_pem.strip()

    async def failing_closed() -> bool:
        return policies(server, "ValidatingWebhookConfiguration", "meshd-validator") == ["Fail"]

    await eventually(failing_closed, timeout=30, what="the validating webhook flipped to failurePolicy Fail")
    # the injector keeps the policy the chart chose (a broken injector must not block every pod)
    assert policies(server, "MutatingWebhookConfiguration", "meshd-sidecar-injector") == ["Ignore", "Ignore"]

    # The API server's view: trust exactly the caBundle, check the Service's DNS name.
    bundle = base64.b64decode(bundles(server, "ValidatingWebhookConfiguration", "meshd-validator")[0]).decode()
    context = ssl.create_default_context(cadata=bundle)
    resolver = aiohttp.resolver.ThreadedResolver()

    class Fixed(aiohttp.abc.AbstractResolver):
        async def resolve(self, host: str, port: int = 0, family: int = 0) -> list[dict[str, Any]]:
            return await resolver.resolve("127.0.0.1", port, family)

        async def close(self) -> None:
            await resolver.close()

    connector = aiohttp.TCPConnector(ssl=context, resolver=Fixed())
    async with aiohttp.ClientSession(connector=connector) as session:
        url = f"https://meshd.istio-system.svc:{port}/inject"
        async with session.post(url, data=json.dumps(make_review(make_pod()))) as resp:
            assert resp.status == 200
            answer = await resp.json()
    assert answer["response"]["allowed"] is True
    ops = json.loads(base64.b64decode(answer["response"]["patch"]))
    assert any(op["value"].get("image") == "meshd:ca-bundle-test" for op in ops if isinstance(op["value"], dict))

    # a client that does not trust meshd's root is refused
    other = ssl.create_default_context()
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=other, resolver=Fixed())) as session:
        with pytest.raises(aiohttp.ClientConnectorCertificateError):
            async with session.get(f"https://meshd.istio-system.svc:{port}/ready"):
                pass
