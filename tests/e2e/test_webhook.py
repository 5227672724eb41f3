"""The validating admission webhook over real HTTPS (a certificate from the test CA): an
AdmissionReview for a valid VirtualService is allowed, an invalid one refused with the text meshd
logs for it (resource, field, message), DELETE and kinds meshd does not read are allowed, and bad
bodies get a 4xx while the server keeps answering."""

from __future__ import annotations

import asyncio
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

from meshd.api.meta import InvalidResource
from meshd.api.parse import parse_resource
from meshd.kube.webhook import serve_webhook
from tests.certs import Authority
from tests.e2e.harness import Meshd, eventually, free_port

VS: dict[str, Any] = {
    "apiVersion": "networking.istio.io/v1",
    "kind": "VirtualService",
    "metadata": {"name": "web", "namespace": "shop"},
    "spec": {
        "hosts": ["web"],
        "http": [
            {
                "route": [
                    {"destination": {"host": "web", "subset": "v1"}, "weight": 90},
                    {"destination": {"host": "web", "subset": "v2"}, "weight": 10},
                ]
            }
        ],
    },
}


def bad_vs() -> dict[str, Any]:
    doc: dict[str, Any] = {
        **VS,
        "spec": {
            **VS["spec"],
            "http": [
                {
                    "route": [
                        {"destination": {"host": "web"}, "weight": 0},
                        {"destination": {"host": "web"}, "weight": 0},
                    ]
                }
            ],
        },
    }
    return doc


def review(
    obj: dict[str, Any] | None, *, operation: str = "CREATE", uid: str = "u-1", group: str = "networking.istio.io"
) -> dict[str, Any]:
    request: dict[str, Any] = {
        "uid": uid,
        "kind": {"group": group, "version": "v1", "kind": obj["kind"] if obj else "VirtualService"},
        "resource": {"group": group, "version": "v1", "resource": "virtualservices"},
        "namespace": "shop",
        "name": "web",
        "operation": operation,
        "userInfo": {"username": "admin"},
        "object": obj,
    }
    if operation == "DELETE":
        request["object"], request["oldObject"] = None, obj
    return {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": request}


class Webhook:
    def __init__(self, port: int, ssl_context: ssl.SSLContext) -> None:
        self.url = f"https://127.0.0.1:{port}"
        self.session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ssl_context))

    async def post(self, body: bytes | str, *, content_type: str = "application/json") -> tuple[int, Any]:
        data = io.BytesIO(body) if isinstance(body, bytes) and len(body) > 1 << 20 else body
        async with self.session.post(self.url + "/validate", data=data, headers={"Content-Type": content_type}) as resp:
            text = await resp.text()
            try:
                return resp.status, json.loads(text)
            except ValueError:
                return resp.status, text

    async def review(self, body: dict[str, Any]) -> dict[str, Any]:
        status, answer = await self.post(json.dumps(body))
        assert status == 200, answer
        assert answer["apiVersion"] == "admission.k8s.io/v1" and answer["kind"] == "AdmissionReview"
        assert answer["response"]["uid"] == body["request"]["uid"]
        return dict(answer["response"])


@pytest.fixture
async def webhook(tmp_path: pathlib.Path) -> AsyncIterator[Webhook]:
    ca = Authority()
    cert, key = ca.issue("meshd.istio-system.svc", sans=("127.0.0.1", "meshd.istio-system.svc")).write(
        tmp_path, "webhook"
    )
    port = free_port()
    task = asyncio.create_task(
        serve_webhook(host="127.0.0.1", port=port, cert=cert, key=key, log=logging.getLogger("test"))
    )
    client_ctx = ssl.create_default_context(cadata=ca.pem.decode())
    hook = Webhook(port, client_ctx)

    async def ready() -> bool:
        async with hook.session.get(hook.url + "/ready") as resp:
            return resp.status == 200

    await eventually(ready, what="webhook /ready over HTTPS")
    yield hook
    await hook.session.close()
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def test_valid_virtual_service_is_allowed(webhook: Webhook) -> None:
    assert (await webhook.review(review(VS)))["allowed"] is True
    assert (await webhook.review(review(VS, operation="UPDATE", uid="u-2")))["allowed"] is True


async def test_invalid_virtual_service_is_refused_with_the_message_meshd_logs(webhook: Webhook) -> None:
    response = await webhook.review(review(bad_vs()))
    assert response["allowed"] is False
    with pytest.raises(InvalidResource) as rejected:
        parse_resource(bad_vs(), default_namespace="shop")  # what meshd logs when it reads this object
    err = rejected.value
    assert (err.field, err.message) == ("spec.http[0].route", "destination weights add up to 0")
    assert response["status"]["message"] == f"VirtualService shop/web: {err.field}: {err.message}"
    assert response["status"]["code"] == 400


async def test_gateways_are_validated_as_meshd_reads_them(webhook: Webhook) -> None:
    server = {"port": {"number": 443, "name": "https", "protocol": "HTTPS"}, "hosts": ["*"]}
    good = {"apiVersion": "networking.istio.io/v1", "kind": "Gateway", "metadata": {"name": "gw"},
            "spec": {"selector": {"istio": "ingressgateway"},
                     "servers": [{**server, "tls": {"mode": "SIMPLE", "credentialName": "cred"}}]}}  # fmt: skip
    assert (await webhook.review(review(good)))["allowed"] is True
    bad = {**good, "spec": {**good["spec"], "servers": [{**server, "tls": {"mode": "SIMPLE"}}]}}
    response = await webhook.review(review(bad))
    assert response["allowed"] is False
    assert response["status"]["message"].startswith(
        "Gateway shop/gw: spec.servers[0].tls.mode: SIMPLE needs a server certificate"
    ), response
    unknown = {**good, "spec": {**good["spec"], "servers": [{**server, "tls": {"mode": "SIMPLE", "sds": "x"}}]}}
    response = await webhook.review(review(unknown))
    assert response["status"]["message"].startswith("Gateway shop/gw: spec.servers[0].tls.sds: unknown field")


async def test_namespace_comes_from_the_request_when_the_object_has_none(webhook: Webhook) -> None:
    doc = bad_vs()
    doc["metadata"] = {"name": "web"}
    response = await webhook.review(review(doc))
    assert response["status"]["message"].startswith("VirtualService shop/web: spec.http[0].route:")


async def test_delete_and_kinds_meshd_does_not_read_are_allowed(webhook: Webhook) -> None:
    assert (await webhook.review(review(bad_vs(), operation="DELETE")))["allowed"] is True
    unread = {"apiVersion": "networking.istio.io/v1", "kind": "Frobnicator", "metadata": {"name": "f"},
              "spec": {"x": 1}}  # fmt: skip
    assert (await webhook.review(review(unread)))["allowed"] is True
    other = {**bad_vs(), "apiVersion": "example.com/v1"}
    assert (await webhook.review(review(other, group="example.com")))["allowed"] is True


@pytest.mark.parametrize(
    ("name", "body", "status"),
    [
        ("not-json", b"{this is not json", 400),
        ("not-utf8", b"\xff\xfe\x00garbage", 400),
        ("empty", b"", 400),
        ("a-list", b"[1, 2, 3]", 400),
        ("deeply-nested", b"[" * 200_000 + b"]" * 200_000, 400),
        ("nested-past-the-limit", b'{"a":' * 150 + b"1" + b"}" * 150, 400),
        ("huge", b'{"kind": "AdmissionReview", "pad": "' + b"x" * (7 * 1024 * 1024) + b'"}', 413),
        ("no-request", b'{"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview"}', 400),
        ("no-uid", b'{"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": {"kind": {}}}', 400),
        ("wrong-api-version", b'{"apiVersion": "v9", "kind": "AdmissionReview", "request": {"uid": "x"}}', 400),
        (
            "object-not-a-mapping",
            b'{"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": {"uid": "x",'
            b' "kind": {"group": "networking.istio.io"}, "operation": "CREATE", "object": 7}}',
            400,
        ),
    ],
)
async def test_bad_bodies_get_4xx_and_the_server_stays_healthy(
    webhook: Webhook, name: str, body: bytes, status: int
) -> None:
    got, _ = await webhook.post(body)
    assert got == status, name
    assert (await webhook.review(review(VS, uid="after")))["allowed"] is True
    assert (await webhook.review(review(bad_vs(), uid="after-bad")))["allowed"] is False


async def test_plaintext_is_not_served(webhook: Webhook) -> None:
    async with aiohttp.ClientSession() as plain:
        with pytest.raises(aiohttp.ClientError):
            async with plain.post(webhook.url.replace("https", "http") + "/validate", data=b"{}") as resp:
                await resp.read()


async def test_meshd_serve_serves_the_webhook_and_survives_a_broken_one(tmp_path: pathlib.Path) -> None:
    ca = Authority()
    cert, key = ca.issue("meshd", sans=("127.0.0.1",)).write(tmp_path, "webhook")
    config = tmp_path / "config"
    config.mkdir()
    port = free_port()
    meshd = Meshd(
        config_dir=config,
        log_path=tmp_path / "meshd.log",
        extra_args=("--webhook-cert", str(cert), "--webhook-key", str(key), "--webhook-host", "127.0.0.1",
                    "--webhook-port", str(port)),
    )  # fmt: skip
    broken = Meshd(
        config_dir=config,
        log_path=tmp_path / "broken.log",
        extra_args=("--webhook-cert", str(tmp_path / "missing.pem"), "--webhook-key", str(key)),
    )
    hook = Webhook(port, ssl.create_default_context(cadata=ca.pem.decode()))
    try:
        await meshd.start()

        async def denied() -> bool:
            return (await hook.review(review(bad_vs())))["allowed"] is False

        await eventually(denied, what="meshd serve answers on its webhook port")
        await broken.start()  # an unreadable certificate: reported, xDS still served
        assert await broken.ready()

        async def reported() -> bool:
            return "event=webhook_failed" in broken.log()

        await eventually(reported, what="the broken webhook reported")
        assert await broken.ready()
    finally:
        await hook.session.close()
        await meshd.close()
        await broken.close()


async def test_request_authentication_is_validated_with_the_message_meshd_logs(webhook: Webhook) -> None:
    def ra(rule: dict[str, Any]) -> dict[str, Any]:
        return {
            "apiVersion": "security.istio.io/v1",
            "kind": "RequestAuthentication",
            "metadata": {"name": "web", "namespace": "shop"},
            "spec": {"selector": {"matchLabels": {"app": "web"}}, "jwtRules": [rule]},
        }

    good = ra({"issuer": "https://issuer.example", "jwksUri": "https://issuer.example/jwks"})
    assert (await webhook.review(review(good, group="security.istio.io")))["allowed"] is True
    bad = ra({"issuer": "https://issuer.example", "fromHeaders": [{"name": "x y"}]})
    response = await webhook.review(review(bad, group="security.istio.io"))
    assert response["allowed"] is False
    with pytest.raises(InvalidResource) as rejected:
        parse_resource(bad, fail_closed=False)  # as the webhook reads it (meshd itself keeps it, failing closed)
    assert response["status"]["message"] == str(rejected.value)
    assert response["status"]["message"].startswith(
        "RequestAuthentication shop/web: spec.jwtRules[0].fromHeaders[0].name: 'x y' is not a valid HTTP header name"
    )
