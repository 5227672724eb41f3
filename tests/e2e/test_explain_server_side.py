"""`meshd explain` on the destination's side, against meshd with real Envoy sidecars run by `meshd agent`
(mTLS identities from meshd's CA): the PeerAuthentication decision (the transports the server's inbound
chains admit and the one the client sends) and the authorization decision with the AuthorizationPolicy
that made it; each explanation is then checked against what real traffic gets (200 from web, or Envoy's
403 `RBAC: access denied`)."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio

from tests.e2e.agents import write_ca_tokens
from tests.e2e.authz_helpers import converge, snapshot
from tests.e2e.harness import Mesh, eventually, logs_on_failure
from tests.e2e.workloads import meshed_service_yaml

pytestmark = [pytest.mark.e2e, pytest.mark.asyncio(loop_scope="module")]

CLIENT, WEB, INTRUDER = 1, 2, 3
TOKENS = {"tok-client": ("default", "client"), "tok-web": ("default", "web"), "tok-intruder": ("bar", "intruder")}
WEB_HOST = "web.default.svc.cluster.local:9080"
CLIENT_ID = "spiffe://cluster.local/ns/default/sa/client"
INTRUDER_ID = "spiffe://cluster.local/ns/bar/sa/intruder"


POLICIES = """\
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: strict, namespace: default}
spec:
  mtls: {mode: STRICT}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: web-viewer, namespace: default}
spec:
  selector: {matchLabels: {app: web}}
  action: ALLOW
  rules:
  - from: [{source: {principals: [cluster.local/ns/default/sa/client]}}]
    to: [{operation: {methods: [GET], paths: ["/info*"]}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-secret, namespace: default}
spec:
  selector: {matchLabels: {app: web}}
  action: DENY
  rules:
  - to: [{operation: {paths: [/info/secret]}}]
"""


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def mesh(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Mesh]:
    work = tmp_path_factory.mktemp("explain-server")
    async with logs_on_failure(Mesh(work_dir=work, delta=False)) as m:
        tokens = write_ca_tokens(work / "tokens.yaml", TOKENS)
        m.meshd.extra_args = ("--ca-token-file", str(tokens))
        m.write("mesh.yaml", meshed_service_yaml("web", ip=m.ip(WEB), service_account="web"))
        m.write("policies.yaml", "")
        await m.meshd.start()
        await m.app(service="web", version="v1", pod="web", ip=m.ip(WEB))
        await m.agent_sidecar(pod="web", ip=m.ip(WEB), service_account="web", token="tok-web")
        await m.agent_sidecar(pod="client", ip=m.ip(CLIENT), service_account="client", token="tok-client")
        await m.agent_sidecar(
            pod="intruder", ip=m.ip(INTRUDER), namespace="bar", service_account="intruder", token="tok-intruder"
        )

        async def reachable() -> bool:
            status, _, _ = await m.request(via_ip=m.ip(CLIENT), host=WEB_HOST, path="/")
            return status == 200

        await eventually(reachable, timeout=30, what="client reaching web over mTLS")
        before = await snapshot(m.meshd, "web.default")
        m.write("policies.yaml", POLICIES)
        await converge(
            m.meshd, "web.default", {"default/web-viewer", "default/deny-secret"}, before=before, envoy=m.agents["web"]
        )
        yield m


async def explain(mesh: Mesh, source: str, path: str, *extra: str) -> dict[str, Any]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "meshd", "explain", "--from", source, "--to", WEB_HOST, "--path", path, *extra,
        "--xds-address", f"127.0.0.1:{mesh.meshd.xds_port}", "-o", "json",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()
    found: dict[str, Any] = json.loads(out)
    return found


def step(found: dict[str, Any], name: str) -> dict[str, Any]:
    return next(s for s in found["steps"] if s["step"] == name)


async def real(mesh: Mesh, via: int, path: str) -> tuple[int, str]:
    status, _, body = await mesh.request(via_ip=mesh.ip(via), host=WEB_HOST, path=path)
    return status, body


async def test_an_allowed_request_names_the_allow_policy_and_mtls(mesh: Mesh) -> None:
    found = await explain(mesh, "client.default", "/info", "--from-identity", CLIENT_ID)
    assert step(found, "server")["choice"] == "web.default"
    peer = step(found, "peer auth")
    assert peer["choice"] == f"STRICT: mutual TLS as {CLIENT_ID}", found
    assert "mode is STRICT, set by PeerAuthentication default/strict " in peer["why"], peer
    assert step(found, "authorization")["choice"] == "allowed by AuthorizationPolicy default/web-viewer (rule 0)"
    assert found["outcome"].startswith("forwarded"), found
    status, body = await real(mesh, CLIENT, "/info")
    assert status == 200 and json.loads(body)["peer"] == CLIENT_ID


async def test_a_path_no_allow_rule_matches_is_denied(mesh: Mesh) -> None:
    found = await explain(mesh, "client.default", "/admin", "--from-identity", CLIENT_ID)
    assert step(found, "authorization")["choice"] == "denied: no ALLOW rule matches", found
    assert found["outcome"] == "403 RBAC: access denied (no ALLOW policy matches)"
    assert await real(mesh, CLIENT, "/admin") == (403, "RBAC: access denied")


async def test_a_deny_policy_is_named(mesh: Mesh) -> None:
    found = await explain(mesh, "client.default", "/info/secret", "--from-identity", CLIENT_ID)
    assert step(found, "authorization")["choice"] == "denied by AuthorizationPolicy default/deny-secret (rule 0)"
    assert found["outcome"] == "403 RBAC: access denied (AuthorizationPolicy default/deny-secret (rule 0))"
    assert await real(mesh, CLIENT, "/info/secret") == (403, "RBAC: access denied")


async def test_another_identity_is_denied_and_an_unknown_one_is_undetermined(mesh: Mesh) -> None:
    found = await explain(mesh, "intruder.bar", "/info", "--from-identity", INTRUDER_ID)
    assert step(found, "authorization")["choice"] == "denied: no ALLOW rule matches", found
    assert await real(mesh, INTRUDER, "/info") == (403, "RBAC: access denied")
    # without the caller's identity the principal rule cannot be decided: said, not guessed
    found = await explain(mesh, "intruder.bar", "/info")
    decision = step(found, "authorization")
    assert decision["choice"] == "undetermined" and "--from-identity" in decision["why"], found
