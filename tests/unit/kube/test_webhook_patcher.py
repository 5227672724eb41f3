"""The leader's webhook configuration patcher against the fake API server (real client over HTTP):
caBundle written to every webhook, failurePolicy Fail on the validating ones only once meshd is ready,
nothing written by a non-leader, an edited caBundle repaired by the next pass, absent configurations
skipped, and the served certificate verifies against the bundle it writes."""

from __future__ import annotations

import base64
import contextlib
import datetime
import logging
import pathlib
import ssl
from collections.abc import AsyncIterator
from typing import Any

import pytest
from kubernetes_asyncio import client

from meshd.ca.material import generate_root, load
from meshd.ca.serving import issue_serving_cert, webhook_ssl_context
from meshd.ca.signer import Signer, utc_now
from meshd.kube.client import new_api_client
from meshd.kube.webhook_certs import webhook_sans
from meshd.kube.webhook_patcher import WebhookConfigPatcher
from meshd.settings import Settings
from tests.e2e.test_webhook_ca_bundle import ADMISSION, configurations
from tests.kubeapi import FakeApiServer

ROOT = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"
LOG = logging.getLogger("test.webhook_patcher")


@pytest.fixture
async def kube(server: FakeApiServer, tmp_path: pathlib.Path) -> AsyncIterator[client.ApiClient]:
    api_client = await new_api_client(server.write_kubeconfig(tmp_path / "kubeconfig"))
    yield api_client
    await api_client.close()


def patcher(api: client.ApiClient, *, leader: list[bool], ready: list[bool]) -> WebhookConfigPatcher:
    return WebhookConfigPatcher(
        api=api,
        root_pem=ROOT,
        mutating="meshd-sidecar-injector",
        validating="meshd-validator",
        is_leader=lambda: leader[0],
        is_ready=lambda: ready[0],
        log=LOG,
    )


def hooks(server: FakeApiServer, kind: str, name: str) -> list[dict[str, Any]]:
    obj = server.get(ADMISSION, kind, "", name)
    assert obj is not None
    return list(obj["webhooks"])


def state(server: FakeApiServer) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    def pairs(kind: str, name: str) -> list[tuple[str, str]]:
        return [(h["clientConfig"].get("caBundle", ""), h["failurePolicy"]) for h in hooks(server, kind, name)]

    return (
        pairs("MutatingWebhookConfiguration", "meshd-sidecar-injector"),
        pairs("ValidatingWebhookConfiguration", "meshd-validator"),
    )


BUNDLE = base64.b64encode(ROOT.encode()).decode()


async def test_ca_bundle_then_fail_once_ready_only_by_the_leader(server: FakeApiServer, kube: client.ApiClient) -> None:
    for obj in configurations():
        server.create(obj)
    leader, ready = [False], [False]
    p = patcher(kube, leader=leader, ready=ready)
    assert await p.sync() == 0
    assert state(server) == ([("", "Ignore")] * 2, [("", "Ignore")])
    assert server.count(verb="patch") == 0

    leader[0] = True
    assert await p.sync() == 2
    assert state(server) == ([(BUNDLE, "Ignore")] * 2, [(BUNDLE, "Ignore")])
    assert await p.sync() == 0  # nothing to change: no write

    ready[0] = True
    assert await p.sync() == 1
    assert state(server) == ([(BUNDLE, "Ignore")] * 2, [(BUNDLE, "Fail")])

    edited = server.get(ADMISSION, "MutatingWebhookConfiguration", "", "meshd-sidecar-injector")
    assert edited is not None
    edited["webhooks"][1]["clientConfig"]["caBundle"] = base64.b64encode(b"someone else").decode()
    server.update(edited)
    assert await p.sync() == 1
    assert state(server)[0] == [(BUNDLE, "Ignore")] * 2


async def test_absent_configurations_are_skipped(server: FakeApiServer, kube: client.ApiClient) -> None:
    p = patcher(kube, leader=[True], ready=[True])
    assert await p.sync() == 0
    server.create(configurations()[1])
    assert await p.sync() == 1
    validator = hooks(server, "ValidatingWebhookConfiguration", "meshd-validator")
    assert [(h["clientConfig"]["caBundle"], h["failurePolicy"]) for h in validator] == [(BUNDLE, "Fail")]


def test_webhook_certificate_from_the_ca_verifies_against_its_root() -> None:
    now = utc_now()
    ca = load(generate_root(now=now, trust_domain="cluster.local"), now=now)
    signer = Signer(
        ca=ca, trust_domain="cluster.local", wall=utc_now,
        default_ttl=datetime.timedelta(hours=1), max_ttl=datetime.timedelta(days=1),
    )  # fmt: skip
    settings = Settings(namespace="mesh", webhook_service="meshd-hooks")
    sans = webhook_sans(settings)
    assert sans[:3] == ["meshd-hooks.mesh.svc", "meshd.mesh.svc", "istiod.mesh.svc"]
    server_ctx = webhook_ssl_context(cert=issue_serving_cert(signer, sans=sans, ttl_s=3600))
    client_ctx = ssl.create_default_context(cadata=ca.root_pem())
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    s_in, s_out = ssl.MemoryBIO(), ssl.MemoryBIO()
    c = client_ctx.wrap_bio(incoming, outgoing, server_hostname="meshd-hooks.mesh.svc")
    s = server_ctx.wrap_bio(s_in, s_out, server_side=True)
    for _ in range(10):  # drive the handshake in memory
        for side in (c, s):
            with contextlib.suppress(ssl.SSLWantReadError):
                side.do_handshake()
        s_in.write(outgoing.read())
        incoming.write(s_out.read())
    c.do_handshake()
    assert c.getpeercert() is not None
