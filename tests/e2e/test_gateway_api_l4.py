"""Gateway API TCPRoute and TLSRoute through a real gateway Envoy (node type `router`) fed by meshd, standalone
from YAML, with real TCP and TLS backends and real clients: a TCPRoute splitting connections 80/20 by
backendRef weights on a TCP listener, a TLSRoute passing TLS through by SNI (the client verifies each backend's
own certificate), a TCPRoute behind a TLS listener that terminates with a certificateRefs Secret, and a
TCPRoute whose backend does not exist (no route: connections refused, BackendNotFound reported)."""

from __future__ import annotations

import json
import ssl
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio

from tests.certs import Authority
from tests.e2e.agents import write_ca_tokens
from tests.e2e.gateway_lab import TcpEcho, client_context, secret_yaml, server_context, service_yaml, tcp_line
from tests.e2e.harness import Mesh, eventually, logs_on_failure

pytestmark = [pytest.mark.e2e, pytest.mark.asyncio(loop_scope="module")]

GW_NS = "istio-ingress"
GATEWAY = f"""\
apiVersion: v1
kind: Pod
metadata: {{name: gw-1, namespace: {GW_NS}, labels: {{gateway.networking.k8s.io/gateway-name: gw}}}}
status: {{podIP: {{ip}}}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: gw, namespace: {GW_NS}}}
spec:
  gatewayClassName: istio
  listeners:
  - {{name: tcp, port: 9000, protocol: TCP, allowedRoutes: {{namespaces: {{from: All}}}}}}
  - name: passthrough
    port: 8443
    protocol: TLS
    hostname: "*.example.com"
    tls: {{mode: Passthrough}}
    allowedRoutes: {{namespaces: {{from: All}}}}
  - name: terminate
    port: 9443
    protocol: TLS
    tls: {{mode: Terminate, certificateRefs: [{{name: front-cert}}]}}
    allowedRoutes: {{namespaces: {{from: All}}}}
"""

TCP_SPLIT = """\
apiVersion: gateway.networking.k8s.io/v1alpha2
kind: TCPRoute
metadata: {name: echo, namespace: default}
spec:
  parentRefs: [{name: gw, namespace: istio-ingress, sectionName: tcp}]
  rules:
  - backendRefs:
    - {name: echo-v1, port: 9000, weight: 80}
    - {name: echo-v2, port: 9000, weight: 20}
"""

TLS_PASSTHROUGH = """\
apiVersion: gateway.networking.k8s.io/v1alpha2
kind: TLSRoute
metadata: {name: secure-a, namespace: default}
spec:
  parentRefs: [{name: gw, namespace: istio-ingress, sectionName: passthrough}]
  hostnames: [a.example.com]
  rules: [{backendRefs: [{name: secure-a, port: 443}]}]
---
apiVersion: gateway.networking.k8s.io/v1alpha2
kind: TLSRoute
metadata: {name: secure-b, namespace: default}
spec:
  parentRefs: [{name: gw, namespace: istio-ingress}]
  hostnames: [b.example.com]
  rules: [{backendRefs: [{name: secure-b, port: 443}]}]
"""

TERMINATED = """\
apiVersion: gateway.networking.k8s.io/v1alpha2
kind: TCPRoute
metadata: {name: terminated, namespace: default}
spec:
  parentRefs: [{name: gw, namespace: istio-ingress, sectionName: terminate}]
  rules: [{backendRefs: [{name: echo-v2, port: 9000}]}]
"""

MISSING = """\
apiVersion: gateway.networking.k8s.io/v1alpha2
kind: TCPRoute
metadata: {name: echo, namespace: default}
spec:
  parentRefs: [{name: gw, namespace: istio-ingress, sectionName: tcp}]
  rules: [{backendRefs: [{name: nowhere, port: 9000}]}]
"""


class Lab:
    def __init__(self, mesh: Mesh, ca: Authority) -> None:
        self.mesh, self.ca = mesh, ca
        self.gateway_ip = mesh.ip(1)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def lab(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Lab]:
    """meshd; a gateway Envoy (router, istio-ingress) at .1; TCP echoes v1 (.21) and v2 (.22); TLS servers
    secure-a (.31, a.example.com) and secure-b (.32, b.example.com)."""
    work = tmp_path_factory.mktemp("gateway-api-l4")
    ca = Authority("gateway api l4 test CA")
    tokens = write_ca_tokens(work / "tokens.yaml", {"tok-gw": (GW_NS, "gw-istio")})
    mesh = Mesh(work_dir=work, delta=True, meshd_args=("--ca-token-file", str(tokens)))
    servers = [TcpEcho("v1"), TcpEcho("v2"), TcpEcho("secure-a"), TcpEcho("secure-b")]
    try:
        async with logs_on_failure(mesh) as m:
            await servers[0].start(m.ip(21), 9000)
            await servers[1].start(m.ip(22), 9000)
            for server, ip, host in ((servers[2], m.ip(31), "a.example.com"), (servers[3], m.ip(32), "b.example.com")):
                await server.start(ip, 8443, tls=server_context(ca.issue(host, sans=(host,)), work, host))
            m.write("gateway.yaml", GATEWAY.replace("{ip}", m.ip(1)))
            m.write("echo-v1.yaml", service_yaml("echo-v1", ips=[m.ip(21)], port=9000, target=9000, port_name="tcp"))
            m.write("echo-v2.yaml", service_yaml("echo-v2", ips=[m.ip(22)], port=9000, target=9000, port_name="tcp"))
            for name, ip in (("secure-a", m.ip(31)), ("secure-b", m.ip(32))):
                m.write(f"{name}.yaml", service_yaml(name, ips=[ip], port=443, target=8443, port_name="tls"))
            pem = ca.issue("front.example.com", sans=("front.example.com",))
            m.write("secret.yaml", secret_yaml("front-cert", GW_NS, {"tls.crt": pem.cert, "tls.key": pem.key},
                                               kind="kubernetes.io/tls"))  # fmt: skip
            m.write("tcp.yaml", TCP_SPLIT)
            m.write("tls.yaml", TLS_PASSTHROUGH)
            m.write("terminated.yaml", TERMINATED)
            await m.meshd.start()
            await m.sidecar(pod="gw-1", ip=m.ip(1), namespace=GW_NS, token="tok-gw", node_type="router")
            yield Lab(m, ca)
    finally:
        for server in servers:
            await server.stop()


async def _until(check: Any, what: str, timeout: float = 30) -> Any:
    return await eventually(check, timeout=timeout, what=what)


async def _answer(host: str, port: int, **kwargs: Any) -> str | None:
    try:
        return await tcp_line(host, port, text="ping", **kwargs)
    except (OSError, ssl.SSLError):
        return None


async def test_tcp_route_splits_connections_by_weight(lab: Lab) -> None:
    await _until(lambda: _answer(lab.gateway_ip, 9000), "a TCP connection through the TCPRoute")
    seen: Counter[str] = Counter()
    for _ in range(150):
        seen[(await tcp_line(lab.gateway_ip, 9000, text="ping")).split()[0]] += 1
    assert set(seen) == {"v1", "v2"} and 100 <= seen["v1"] <= 140, seen  # 80/20, loosely


async def test_tls_route_passes_tls_through_by_sni(lab: Lab) -> None:
    trusting = client_context(lab.ca)  # verifies the backend's own certificate for the SNI name

    async def through(sni: str) -> str | None:
        return await _answer(lab.gateway_ip, 8443, tls=trusting, sni=sni)

    assert await _until(lambda: through("a.example.com"), "TLS passthrough to a.example.com") == "secure-a ping"
    assert await through("b.example.com") == "secure-b ping"
    # an SNI no TLSRoute gives has no chain: closed before any TLS, even for a client accepting any name
    lenient = client_context(lab.ca)
    lenient.check_hostname = False
    with pytest.raises((OSError, ssl.SSLError)):
        await tcp_line(lab.gateway_ip, 8443, text="ping", tls=lenient, sni="c.example.com")


async def test_tls_listener_terminates_then_tcp_route(lab: Lab) -> None:
    trusting = client_context(lab.ca)
    answer = await _until(
        lambda: _answer(lab.gateway_ip, 9443, tls=trusting, sni="front.example.com"),
        "TLS terminated by the gateway (front-cert), then the TCPRoute",
    )
    assert answer == "v2 ping"  # the gateway's certificate was verified for front.example.com; the echo is plain


async def test_tcp_route_to_a_missing_backend_refuses_connections(lab: Lab) -> None:
    lab.mesh.write("tcp.yaml", MISSING)

    async def refused() -> bool:
        return await _answer(lab.gateway_ip, 9000) is None

    await _until(refused, "connections refused once the TCPRoute's only backend does not exist")
    errors = json.dumps(await lab.mesh.meshd.get_json("/debug/config_errors"))
    assert "BackendNotFound" in errors and "TCPRoute default/echo" in errors, errors
    lab.mesh.write("tcp.yaml", TCP_SPLIT)
    await _until(lambda: _answer(lab.gateway_ip, 9000), "connections again with the backends back")
