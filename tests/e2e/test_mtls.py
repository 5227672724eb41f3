"""Istio mTLS between real Envoy sidecars, each started by a real `meshd agent` process that obtains its
workload certificate from meshd's CA (standalone token file) and serves it over SDS: auto mTLS,
PeerAuthentication STRICT / PERMISSIVE / DISABLE on the inbound side, and DestinationRule ISTIO_MUTUAL
with SAN verification.
"""

from __future__ import annotations

import json
import pathlib
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from tests.e2e.agents import AgentProcess, write_ca_tokens
from tests.e2e.harness import Mesh, eventually, logs_on_failure
from tests.e2e.workloads import meshed_service_yaml

pytestmark = pytest.mark.e2e

CLIENT_ID = "spiffe://cluster.local/ns/default/sa/client"
WEB_ID = "spiffe://cluster.local/ns/default/sa/web"
FORGED = "By=spiffe://cluster.local/ns/default/sa/web;URI=spiffe://cluster.local/ns/default/sa/evil"

MESH = """\
apiVersion: v1
kind: Pod
metadata: {{name: client, namespace: default, labels: {{app: client, security.istio.io/tlsMode: istio}}}}
spec: {{serviceAccountName: client}}
status: {{podIP: {client}}}
"""


def peer_authentication(mode: str) -> str:
    return f"""\
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {{name: default, namespace: default}}
spec:
  mtls: {{mode: {mode}}}
"""


def destination_rule(*sans: str) -> str:
    names = f", subjectAltNames: [{', '.join(sans)}]" if sans else ""
    return f"""\
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: web, namespace: default}}
spec:
  host: web
  trafficPolicy:
    tls: {{mode: ISTIO_MUTUAL{names}}}
"""


class MtlsMesh:
    """meshd + a client and a web workload, each behind an agent-run sidecar with its own identity."""

    def __init__(self, mesh: Mesh) -> None:
        self.mesh = mesh
        self.agents: dict[str, AgentProcess] = {}
        self.client_ip, self.web_ip = mesh.ip(1), mesh.ip(2)

    async def agent(self, *, pod: str, ip: str, account: str) -> AgentProcess:
        sds = ("--sds-delta",) if self.mesh.delta else ()
        agent: AgentProcess = await self.mesh.agent_sidecar(
            pod=pod, ip=ip, service_account=account, labels={"app": pod}, token=f"tok-{account}", args=sds
        )
        self.agents[pod] = agent
        return agent

    async def call(self, headers: dict[str, str] | None = None) -> tuple[int, dict[str, Any]]:
        """web through the client's sidecar: (status, the web app's answer)."""
        status, _, body = await self.mesh.request(via_ip=self.client_ip, host="web:9080", headers=headers, timeout=5)
        try:
            return status, json.loads(body)
        except ValueError:
            return status, {"raw": body}

    async def direct_plaintext(self, headers: dict[str, str] | None = None) -> int:
        """A client without a sidecar calling the web sidecar's inbound port in plaintext."""
        url = f"http://{self.web_ip}:15006/"
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=3)) as session,
            session.get(url, headers={"Host": "web:9080", **(headers or {})}) as resp,
        ):
            await resp.read()
            return resp.status


def xfcc(answer: dict[str, Any]) -> str:
    return str(answer.get("request", {}).get("headers", {}).get("x-forwarded-client-cert", ""))


@pytest.fixture(params=["sotw", "delta"])
async def mtls(request: pytest.FixtureRequest, tmp_path: pathlib.Path) -> AsyncIterator[MtlsMesh]:
    async with logs_on_failure(Mesh(work_dir=tmp_path, delta=request.param == "delta")) as mesh:
        m = MtlsMesh(mesh)
        tokens = {"tok-client": ("default", "client"), "tok-web": ("default", "web")}
        mesh.meshd.extra_args = ("--ca-token-file", str(write_ca_tokens(tmp_path / "tokens.yaml", tokens)))
        web = meshed_service_yaml("web", ip=m.web_ip, service_account="web", selector=True, slice_name="web-1")
        mesh.write("mesh.yaml", MESH.format(client=m.client_ip) + "---\n" + web)
        await mesh.meshd.start()
        await mesh.app(service="web", version="v1", pod="web", ip=m.web_ip)
        await m.agent(pod="client", ip=m.client_ip, account="client")
        await m.agent(pod="web", ip=m.web_ip, account="web")
        yield m


async def _mtls_answer(m: MtlsMesh) -> dict[str, Any]:
    async def check() -> dict[str, Any] | None:
        status, answer = await m.call()
        return answer if status == 200 and CLIENT_ID in xfcc(answer) else None

    found: dict[str, Any] = await eventually(check, what="an mTLS request with the client's identity")
    return found


async def test_auto_mtls_carries_the_client_identity(mtls: MtlsMesh) -> None:
    """No DestinationRule, no PeerAuthentication: the client sidecar uses mTLS toward the web sidecar
    on its own; the web app sees the client's SPIFFE identity, which is what each Envoy holds."""
    answer = await _mtls_answer(mtls)
    header = xfcc(answer)
    assert f"URI={CLIENT_ID}" in header, header
    assert await mtls.agents["client"].cert_identities() == {CLIENT_ID}
    assert await mtls.agents["web"].cert_identities() == {WEB_ID}
    # the client's cluster picked the TLS socket for the sidecar endpoint (handshakes counted)
    stats = await mtls.agents["client"].admin_get("/stats?filter=outbound.9080..web.*ssl.handshake$")
    assert any(line.split(": ")[-1] not in ("0", "") for line in stats.splitlines()), stats
    # an app cannot forge its identity: its own sidecar drops the header, the server's sets the real one
    status, answer = await mtls.call(headers={"x-forwarded-client-cert": FORGED})
    assert status == 200 and "evil" not in xfcc(answer) and f"URI={CLIENT_ID}" in xfcc(answer), answer


async def test_permissive_then_strict(mtls: MtlsMesh) -> None:
    """PERMISSIVE (the default) accepts mesh mTLS and a plaintext client; STRICT refuses the plaintext
    client while the mesh client keeps working."""
    await _mtls_answer(mtls)
    assert await mtls.direct_plaintext(headers={"x-forwarded-client-cert": FORGED}) == 200
    seen = mtls.mesh.apps[0].received[-1]["headers"]
    assert "x-forwarded-client-cert" not in seen, seen  # a plaintext caller proves no identity

    mtls.mesh.write("peer-auth.yaml", peer_authentication("STRICT"))

    async def refused() -> bool:
        try:
            await mtls.direct_plaintext()
        except (aiohttp.ClientError, TimeoutError):
            return True
        return False

    await eventually(refused, what="STRICT refusing a plaintext client")
    await _mtls_answer(mtls)
    for _ in range(5):
        assert await refused()


async def test_disable_serves_plaintext(mtls: MtlsMesh) -> None:
    """DISABLE: the web sidecar serves plaintext only, and the client (auto mTLS reading the policy)
    uses plaintext: the app sees no client certificate."""
    await _mtls_answer(mtls)
    mtls.mesh.write("peer-auth.yaml", peer_authentication("DISABLE"))

    async def plaintext() -> bool:
        status, answer = await mtls.call()
        return status == 200 and xfcc(answer) == ""

    await eventually(plaintext, what="plaintext between the sidecars")
    assert await mtls.direct_plaintext() == 200
    for _ in range(5):
        assert await plaintext()


async def test_istio_mutual_rule_and_san_mismatch(mtls: MtlsMesh) -> None:
    """A DestinationRule ISTIO_MUTUAL toward the sidecar works (SANs: web's identity); naming another
    service account in subjectAltNames makes the client reject the server's certificate."""
    mtls.mesh.write("web-dr.yaml", destination_rule())

    async def rule_applied() -> dict[str, Any] | None:
        dump = await mtls.agents["client"].config_dump("dynamic_active_clusters")
        name = "outbound|9080||web.default.svc.cluster.local"
        web = next(c["cluster"] for c in dump["configs"] if c["cluster"]["name"] == name)
        # the rule's ISTIO_MUTUAL: one TLS socket for every endpoint, not auto mTLS's socket matches
        return web if "transport_socket" in web and "transport_socket_matches" not in web else None

    web = await eventually(rule_applied, what="the ISTIO_MUTUAL cluster in the client's Envoy")
    assert WEB_ID in json.dumps(web["transport_socket"])
    await _mtls_answer(mtls)

    mtls.mesh.write("web-dr.yaml", destination_rule("spiffe://cluster.local/ns/default/sa/not-web"))

    async def rejected() -> bool:
        status, _ = await mtls.call()
        return status == 503

    await eventually(rejected, what="the SAN mismatch failing the request")
    for _ in range(3):
        assert await rejected()
    stats = await mtls.agents["client"].admin_get("/stats?filter=outbound.9080..web.*ssl.fail_verify_san$")
    assert any(line.split(": ")[-1] not in ("0", "") for line in stats.splitlines()), stats
