"""The verdict table on a real kube-apiserver with the chart's CRDs, and through meshd's validating webhook
(the HTTPS server `meshd serve` runs), registered on that API server as a cluster registers it:
- in a namespace without the webhook, the CRD alone refuses exactly the `layer: schema` objects (with
  `fieldValidation=Strict`, as `kubectl apply` sends it) and stores every other one;
- in a namespace the webhook covers, the API server refuses exactly the invalid objects, naming the field;
- the webhook's own answer to an AdmissionReview of each object is the table's verdict.
Objects are created with `dryRun=All`: nothing is stored, every admission step runs."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import pathlib
import ssl
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
import pytest_asyncio

from meshd.kube.webhook import serve_webhook
from tests.certs import Authority
from tests.e2e.harness import eventually, free_port
from tests.kubeapi import KubeRest
from tests.kubeapi.client import KubeError
from tests.kubeapi.kinds import by_kind, collection_path
from tests.kubereal.control_plane import ControlPlane
from tests.verdicts.cases import CASES, Case

pytestmark = [pytest.mark.e2e, pytest.mark.asyncio(loop_scope="module")]
PLAIN_NS = "verdicts-plain"
HOOKED_NS = "verdicts-hooked"
HOOK_NAME = "meshd-verdicts"
GROUPS = (
    "networking.istio.io",
    "security.istio.io",
    "telemetry.istio.io",
    "extensions.istio.io",
    "gateway.networking.k8s.io",
)


class Hook:
    def __init__(self, url: str, ca_pem: str) -> None:
        self.url = url
        self.ca_pem = ca_pem
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=ssl.create_default_context(cadata=ca_pem))
        )

    async def allowed(self, obj: dict[str, Any]) -> tuple[bool, str]:
        group, _, version = obj["apiVersion"].partition("/")
        plural = by_kind(obj["apiVersion"], obj["kind"]).plural
        review = {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": {
            "uid": "u-1", "kind": {"group": group, "version": version, "kind": obj["kind"]},
            "resource": {"group": group, "version": version, "resource": plural},
            "namespace": obj["metadata"]["namespace"], "name": obj["metadata"]["name"], "operation": "CREATE",
            "userInfo": {"username": "admin"}, "object": obj}}  # fmt: skip
        async with self.session.post(self.url + "/validate", json=review) as resp:
            assert resp.status == 200, await resp.text()
            answer = (await resp.json())["response"]
        return bool(answer["allowed"]), str((answer.get("status") or {}).get("message", ""))


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def hook(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Hook]:
    folder: pathlib.Path = tmp_path_factory.mktemp("verdicts-hook")
    ca = Authority()
    cert, key = ca.issue("meshd.istio-system.svc", sans=("127.0.0.1",)).write(folder, "webhook")
    port = free_port()
    task = asyncio.create_task(
        serve_webhook(host="127.0.0.1", port=port, cert=cert, key=key, log=logging.getLogger("verdicts"))
    )
    served = Hook(f"https://127.0.0.1:{port}", ca.pem.decode())

    async def ready() -> bool:
        with contextlib.suppress(aiohttp.ClientError):
            async with served.session.get(served.url + "/ready") as resp:
                return resp.status == 200
        return False

    await eventually(ready, what="the webhook's /ready")
    yield served
    await served.session.close()
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def rest(real_kube: ControlPlane, hook: Hook) -> AsyncIterator[KubeRest]:
    client = KubeRest.from_kubeconfig(real_kube.kubeconfig)
    for ns in (PLAIN_NS, HOOKED_NS):
        await client.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
    ca_bundle = base64.b64encode(hook.ca_pem.encode()).decode()
    config = {
        "apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingWebhookConfiguration",
        "metadata": {"name": HOOK_NAME},
        "webhooks": [{
            "name": "validation.verdicts.meshd.test",
            "clientConfig": {"url": f"{hook.url}/validate", "caBundle": ca_bundle},
            "rules": [{"apiGroups": list(GROUPS), "apiVersions": ["*"], "operations": ["CREATE", "UPDATE"],
                       "resources": ["*"]}],
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": HOOKED_NS}},
            "failurePolicy": "Fail", "sideEffects": "None", "admissionReviewVersions": ["v1"],
        }],
    }  # fmt: skip
    await client.apply(config)
    try:
        yield client
    finally:
        await client.delete(config["apiVersion"], config["kind"], "", HOOK_NAME)
        await client.close()


async def dry_create(rest: KubeRest, obj: dict[str, Any]) -> str:
    """ "" when the API server would store the object, else its message."""
    kind = by_kind(obj["apiVersion"], obj["kind"])
    path = collection_path(kind, obj["apiVersion"].rpartition("/")[2], obj["metadata"]["namespace"])
    try:
        await rest._request("POST", f"{path}?dryRun=All&fieldValidation=Strict", body=obj)
    except KubeError as error:
        body = error.body if isinstance(error.body, dict) else {"message": str(error.body)}
        return str(body.get("message") or json.dumps(body))
    return ""


def names_field(message: str, case: Case) -> bool:
    """The API server's and the webhook's messages name the field, in their own spellings."""
    dotted = case.field.replace("[", ".").replace("]", "")
    parent_dotted = dotted.rpartition(".")[0]
    return any(s in message for s in (case.field, dotted, case.field.rpartition(".")[0] + ".", parent_dotted))


async def test_webhook_answers_each_object_with_its_verdict(hook: Hook) -> None:
    wrong = []
    for case in CASES:
        allowed, message = await hook.allowed(case.document(HOOKED_NS))
        if allowed != case.valid or (not case.valid and case.field not in message):
            wrong.append(f"{case.name}: allowed={allowed} {message[:200]}")
    assert wrong == [], "\n".join(wrong)


async def test_crds_alone_refuse_exactly_the_schema_cases(rest: KubeRest) -> None:
    wrong = []
    for case in CASES:
        message = await dry_create(rest, case.document(PLAIN_NS))
        refused = message != ""
        if refused != case.schema or (refused and not names_field(message, case)):
            wrong.append(f"{case.name}: schema={case.schema} refused={refused} {message[:300]}")
    assert wrong == [], "\n".join(wrong)


async def test_api_server_with_the_webhook_refuses_exactly_the_invalid_cases(rest: KubeRest) -> None:
    async def webhook_called() -> bool:  # the configuration takes effect asynchronously
        invalid = next(c for c in CASES if not c.valid and not c.schema)
        return "denied the request" in await dry_create(rest, invalid.document(HOOKED_NS))

    await eventually(webhook_called, what="the API server to call the webhook")
    wrong = []
    for case in CASES:
        message = await dry_create(rest, case.document(HOOKED_NS))
        refused = message != ""
        if refused == case.valid or (refused and not names_field(message, case)):
            wrong.append(f"{case.name}: valid={case.valid} refused={refused} {message[:300]}")
    assert wrong == [], "\n".join(wrong)
