"""The injection webhook over real HTTPS (a certificate from the test CA): `/inject` answers a Pod
AdmissionReview with a JSONPatch that adds the sidecar, refuses bad bodies with a 4xx and keeps
answering; `/validate` on the same server is unaffected."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import json
import logging
import pathlib
import ssl
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from meshd.kube.inject_template import InjectionConfig
from meshd.kube.webhook import serve_webhook
from tests.certs import Authority
from tests.e2e.harness import eventually, free_port
from tests.e2e.test_webhook import VS, bad_vs
from tests.e2e.test_webhook import review as validation_review
from tests.kubeapi.patch import json_patch
from tests.unit.kube.test_inject import make_pod, make_review


class Client:
    def __init__(self, port: int, context: ssl.SSLContext) -> None:
        self.url = f"https://127.0.0.1:{port}"
        self.session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=context))

    async def post(self, path: str, body: bytes) -> tuple[int, Any]:
        data = io.BytesIO(body) if len(body) > 1 << 20 else body
        async with self.session.post(self.url + path, data=data, headers={"Content-Type": "application/json"}) as resp:
            text = await resp.text()
            with contextlib.suppress(ValueError):
                return resp.status, json.loads(text)
            return resp.status, text

    async def response(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        status, answer = await self.post(path, json.dumps(body).encode())
        assert status == 200, answer
        assert answer["response"]["uid"] == body["request"]["uid"]
        return dict(answer["response"])


async def serve(tmp_path: pathlib.Path, injection: InjectionConfig | None) -> AsyncIterator[Client]:
    ca = Authority()
    cert, key = ca.issue("meshd.istio-system.svc", sans=("127.0.0.1",)).write(tmp_path, "webhook")
    port = free_port()
    task = asyncio.create_task(
        serve_webhook(
            host="127.0.0.1", port=port, cert=cert, key=key, log=logging.getLogger("test"), injection=injection
        )
    )
    client = Client(port, ssl.create_default_context(cadata=ca.pem.decode()))

    async def ready() -> bool:
        async with client.session.get(client.url + "/ready") as resp:
            return resp.status == 200

    try:
        await eventually(ready, what="webhook /ready over HTTPS")
        yield client
    finally:
        await client.session.close()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


@pytest.fixture
async def webhook(tmp_path: pathlib.Path) -> AsyncIterator[Client]:
    async for client in serve(tmp_path, InjectionConfig(image="meshd:test")):
        yield client


async def test_inject_answers_with_a_patch_that_adds_the_sidecar(webhook: Client) -> None:
    pod = make_pod()
    response = await webhook.response("/inject", make_review(pod))
    assert response["allowed"] is True and response["patchType"] == "JSONPatch"
    patched = json_patch(pod, json.loads(base64.b64decode(response["patch"])))
    assert [c["name"] for c in patched["spec"]["containers"]] == ["app", "istio-proxy"]
    assert patched["spec"]["containers"][1]["image"] == "meshd:test"
    again = await webhook.response("/inject", make_review(patched, uid="again"))
    assert again["allowed"] is True and "patch" not in again


async def test_validate_is_unaffected(webhook: Client) -> None:
    assert (await webhook.response("/validate", validation_review(VS)))["allowed"] is True
    refused = await webhook.response("/validate", validation_review(bad_vs()))
    assert refused["allowed"] is False and "destination weights" in refused["status"]["message"]


@pytest.mark.parametrize(
    ("name", "body", "status"),
    [
        ("not-json", b"{nope", 400),
        ("not-a-review", b'{"kind": "Pod"}', 400),
        ("nested-past-the-limit", b'{"a":' * 150 + b"1" + b"}" * 150, 400),
        ("huge", b'{"kind": "AdmissionReview", "pad": "' + b"x" * (7 * 1024 * 1024) + b'"}', 413),
    ],
)
async def test_bad_bodies_get_4xx_and_the_injector_stays_healthy(
    webhook: Client, name: str, body: bytes, status: int
) -> None:
    got, _ = await webhook.post("/inject", body)
    assert got == status, name
    missing = make_review(make_pod(), uid="missing")
    del missing["request"]["object"]
    refused = await webhook.response("/inject", missing)
    assert refused["allowed"] is False and "request.object is missing" in refused["status"]["message"]
    assert "patch" in await webhook.response("/inject", make_review(make_pod(), uid="after"))


async def test_no_inject_route_when_injection_is_off(tmp_path: pathlib.Path) -> None:
    async for client in serve(tmp_path, None):
        status, _ = await client.post("/inject", json.dumps(make_review(make_pod())).encode())
        assert status in (404, 405)
        assert (await client.response("/validate", validation_review(VS)))["allowed"] is True
