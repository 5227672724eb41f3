"""BackendTLSPolicy through real Envoys fed by meshd (standalone from YAML): an HTTPRoute on a Gateway and a
sidecar client call a Service whose pod serves only HTTPS (a Python TLS server with a certificate from a test
CA, no sidecar, reporting the SNI it saw). Without a policy the proxies speak plaintext and fail; with the policy
(the CA from a ConfigMap's ca.crt, hostname secure.example.com) they originate TLS with that SNI and verify the
server; a CA that did not sign the server, or a ConfigMap that does not exist, fails the request: never a
plaintext fallback (the server sees no request at all)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
import pytest_asyncio

from tests.certs import Authority
from tests.e2e.agents import write_ca_tokens
from tests.e2e.authz_helpers import stat
from tests.e2e.harness import Mesh, eventually, free_port, logs_on_failure
from tests.e2e.test_upstream_tls import TlsServer

pytestmark = [pytest.mark.e2e, pytest.mark.asyncio(loop_scope="module")]

GW_NS = "istio-ingress"
CLUSTER = "outbound|9080||secure.default.svc.cluster.local"
CONFIG = f"""\
apiVersion: v1
kind: Pod
metadata: {{name: gw-1, namespace: {GW_NS}, labels: {{gateway.networking.k8s.io/gateway-name: gw}}}}
status: {{podIP: {{gw_ip}}}}
---
apiVersion: v1
kind: Pod
metadata: {{name: client, namespace: default}}
status: {{podIP: {{client_ip}}}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: gw, namespace: {GW_NS}}}
spec:
  gatewayClassName: istio
  listeners:
  - {{name: http, port: 80, protocol: HTTP, allowedRoutes: {{namespaces: {{from: All}}}}}}
---
apiVersion: v1
kind: Service
metadata: {{name: secure, namespace: default}}
spec:
  ports: [{{name: https, port: 9080, targetPort: {{port}}}}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: secure-1, namespace: default, labels: {{kubernetes.io/service-name: secure}}}}
addressType: IPv4
ports: [{{name: https, port: {{port}}}}]
endpoints: [{{addresses: [{{app_ip}}]}}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: secure, namespace: default}}
spec:
  parentRefs: [{{name: gw, namespace: {GW_NS}}}]
  hostnames: [www.example.com]
  rules:
  - backendRefs: [{{name: secure, port: 9080}}]
"""


def _config_map(name: str, ca: bytes) -> str:
    return f"apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: {name}, namespace: default}}\ndata:\n" + (
        f"  ca.crt: {json.dumps(ca.decode())}\n"
    )


def _policy(ca_map: str, *, version: str = "v1") -> str:
    return f"""\
apiVersion: gateway.networking.k8s.io/{version}
kind: BackendTLSPolicy
metadata: {{name: secure, namespace: default}}
spec:
  targetRefs: [{{group: "", kind: Service, name: secure}}]
  validation:
    caCertificateRefs: [{{group: "", kind: ConfigMap, name: {ca_map}}}]
    hostname: secure.example.com
"""


class Lab:
    def __init__(self, mesh: Mesh, server: TlsServer, ca: Authority, other: Authority) -> None:
        self.mesh, self.server, self.ca, self.other = mesh, server, ca, other
        self.client = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=15))

    async def via_gateway(self) -> tuple[int, Any]:
        url = f"http://{self.mesh.ip(1)}:80/"
        async with self.client.get(url, headers={"Host": "www.example.com"}) as resp:
            return resp.status, _json(await resp.text())

    async def via_sidecar(self) -> tuple[int, Any]:
        """Status 0: the connection was reset (the port is named `https`: the sidecar proxies it as TCP, so a
        failed upstream handshake resets the client's connection rather than answering 503)."""
        try:
            status, _, body = await self.mesh.request(via_ip=self.mesh.ip(2), host="secure")
        except (aiohttp.ClientOSError, aiohttp.ServerDisconnectedError) as exc:
            return 0, repr(exc)
        return status, _json(body)

    async def until(self, call: Any, predicate: Any, what: str, timeout: float = 30) -> tuple[int, Any]:
        async def check() -> tuple[int, Any] | None:
            found = await call()
            return found if predicate(*found) else None

        return await eventually(check, timeout=timeout, what=what)  # type: ignore[no-any-return]


def _json(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def lab(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Lab]:
    """meshd; a gateway Envoy (router, istio-ingress) at .1, a client sidecar (default) at .2; the HTTPS-only
    server of Service `secure` at .11 (certificate for secure.example.com from the test CA)."""
    work = tmp_path_factory.mktemp("gateway-api-backend-tls")
    tokens = write_ca_tokens(work / "tokens.yaml", {"tok-gw": (GW_NS, "gw-istio"), "tok-client": ("default", "client")})
    mesh = Mesh(work_dir=work, delta=True, meshd_args=("--ca-token-file", str(tokens)))
    ca, other = Authority("backend-tls CA"), Authority("another CA")
    pem = ca.issue("secure", sans=("secure.example.com",))
    server = TlsServer(pem=pem, ca=ca.pem, require_client_cert=False, work=work, name="secure")
    port = free_port()
    async with logs_on_failure(mesh) as m:
        await server.start(m.ip(11), port)
        config = CONFIG.replace("{gw_ip}", m.ip(1)).replace("{client_ip}", m.ip(2))
        m.write("config.yaml", config.replace("{port}", str(port)).replace("{app_ip}", m.ip(11)))
        m.write("ca.yaml", _config_map("secure-ca", ca.pem))
        await m.meshd.start()
        await m.sidecar(pod="gw-1", ip=m.ip(1), namespace=GW_NS, token="tok-gw", node_type="router")
        await m.sidecar(pod="client", ip=m.ip(2), token="tok-client")
        lab = Lab(m, server, ca, other)
        try:
            yield lab
        finally:
            await lab.client.close()
            await server.stop()


async def test_backend_tls_policy_originates_tls_with_sni_and_fails_closed(lab: Lab) -> None:
    # No policy: the proxies speak plaintext to an HTTPS-only server, which answers nothing an HTTP client reads.
    await lab.until(lab.via_gateway, lambda s, b: s in (502, 503), "the gateway routes to the backend (plaintext)")
    assert not lab.server.seen

    # The policy: TLS from the gateway and from the sidecar, SNI = validation.hostname, the server verified.
    lab.mesh.write("policy.yaml", _policy("secure-ca"))
    _, body = await lab.until(lab.via_gateway, lambda s, b: s == 200, "TLS from the gateway")
    assert body == {"tls": True, "client_cn": None, "sni": ["secure.example.com"]}
    _, body = await lab.until(lab.via_sidecar, lambda s, b: s == 200, "TLS from the sidecar")
    assert body["tls"] is True and body["sni"] == ["secure.example.com"]

    # A CA that did not sign the server's certificate: the handshake fails, no request reaches the server.
    lab.mesh.write("ca.yaml", _config_map("secure-ca", lab.other.pem))
    await lab.until(lab.via_gateway, lambda s, b: s == 503, "a 503 from the gateway with the wrong CA")
    await lab.until(lab.via_sidecar, lambda s, b: s == 0, "a reset from the sidecar with the wrong CA")
    seen = len(lab.server.seen)
    for pod in ("gw-1", "client"):  # each proxy attempted TLS and refused the server's certificate
        assert await stat(lab.mesh.envoys[pod], f"cluster.{CLUSTER}.ssl.fail_verify_error") > 0
    assert (await lab.via_gateway())[0] == 503
    assert (await lab.via_sidecar())[0] == 0
    assert len(lab.server.seen) == seen  # no request reached the server

    # The right CA again (v1alpha3 this time), then a policy naming a ConfigMap that does not exist: still TLS
    # with a CA that is never served, so the connection fails (after Envoy's SDS fetch timeout), never plaintext.
    lab.mesh.write("ca.yaml", _config_map("secure-ca", lab.ca.pem))
    lab.mesh.write("policy.yaml", _policy("secure-ca", version="v1alpha3"))
    await lab.until(lab.via_gateway, lambda s, b: s == 200, "TLS again with the right CA")
    lab.mesh.write("policy.yaml", _policy("no-such-ca"))

    async def reported() -> bool:
        errors = json.dumps(await lab.mesh.meshd.get_json("/debug/config_errors"))
        return "no-such-ca does not exist" in errors

    await eventually(reported, timeout=20, what="the missing ConfigMap reported at /debug/config_errors")
    await lab.until(lab.via_gateway, lambda s, b: s == 503, "the gateway fails closed", timeout=60)
    dump = json.dumps(await lab.mesh.envoys["gw-1"].config_dump(resource="dynamic_active_clusters"))
    assert "configmap://default/no-such-ca" in dump  # TLS to the backend, its CA never served
    seen = len(lab.server.seen)
    status, _ = await lab.via_gateway()
    assert status == 503 and len(lab.server.seen) == seen
