"""Istio Gateways through a real gateway Envoy (node type `router`) fed by meshd, with real backends,
written from Istio's ingress tasks: bookinfo-gateway (HTTP by host and path, 404 elsewhere),
httpsRedirect, secure gateways (SIMPLE and MUTUAL from credentialName Secrets, several hosts on 443
by SNI, rotation without restart), TLS passthrough by SNI to a backend that terminates TLS itself,
and TCP traffic shifting 80/20 through a gateway. The gateway reaches meshd on the secure port with
an identity of its namespace (istio-system): credentialName Secrets are served only so."""

from __future__ import annotations

import asyncio
import json
import pathlib
import ssl
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
import pytest_asyncio

from tests.certs import Authority
from tests.e2e.agents import write_ca_tokens
from tests.e2e.gateway_lab import (
    TcpEcho,
    client_context,
    common_name,
    https_get,
    secret_yaml,
    server_context,
    service_yaml,
    tcp_line,
)
from tests.e2e.harness import Mesh, eventually, logs_on_failure

pytestmark = [pytest.mark.e2e, pytest.mark.asyncio(loop_scope="module")]

GW = "istio-system"
GATEWAY_POD = f"""\
apiVersion: v1
kind: Pod
metadata: {{name: istio-ingressgateway-1, namespace: {GW}, labels: {{istio: ingressgateway}}}}
status: {{podIP: {{ip}}}}
"""

BOOKINFO = """\
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: bookinfo-gateway, namespace: default}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 80, name: http, protocol: HTTP}
    hosts: [bookinfo.example.com, helloworld.example.com]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: bookinfo, namespace: default}
spec:
  hosts: [bookinfo.example.com]
  gateways: [bookinfo-gateway]
  http:
  - match:
    - uri: {exact: /productpage}
    - uri: {prefix: /static}
    - uri: {exact: /login}
    route:
    - destination: {host: productpage, port: {number: 9080}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: helloworld, namespace: default}
spec:
  hosts: [helloworld.example.com]
  gateways: [default/bookinfo-gateway]
  http:
  - route:
    - destination: {host: helloworld}
"""

REDIRECT = """\
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: redirect-gateway, namespace: istio-system}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 8080, name: http-redirect, protocol: HTTP}
    hosts: ["*"]
    tls: {httpsRedirect: true}
"""

SECURE = """\
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: secure-gateway, namespace: istio-system}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 443, name: https-bookinfo, protocol: HTTPS}
    hosts: [bookinfo.example.com]
    tls: {mode: SIMPLE, credentialName: bookinfo-credential}
  - port: {number: 443, name: https-helloworld, protocol: HTTPS}
    hosts: [helloworld.example.com]
    tls: {mode: SIMPLE, credentialName: helloworld-credential}
  - port: {number: 443, name: https-mtls, protocol: HTTPS}
    hosts: [mtls.example.com]
    tls: {mode: MUTUAL, credentialName: mtls-credential}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: secure, namespace: default}
spec:
  hosts: [bookinfo.example.com, helloworld.example.com, mtls.example.com]
  gateways: [istio-system/secure-gateway]
  http:
  - match:
    - uri: {prefix: /productpage}
    route:
    - destination: {host: productpage}
  - route:
    - destination: {host: helloworld}
"""

PASSTHROUGH = """\
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: passthrough-gateway, namespace: default}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 8443, name: tls, protocol: TLS}
    hosts: [nginx.example.com]
    tls: {mode: PASSTHROUGH}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: nginx, namespace: default}
spec:
  hosts: [nginx.example.com]
  gateways: [passthrough-gateway]
  tls:
  - match:
    - port: 8443
      sniHosts: [nginx.example.com]
    route:
    - destination: {host: my-nginx, port: {number: 443}}
"""

TCP_ECHO = """\
apiVersion: v1
kind: Service
metadata: {{name: tcp-echo, namespace: default}}
spec:
  ports: [{{name: tcp, port: 9000, targetPort: 9000}}]
---
apiVersion: v1
kind: Pod
metadata: {{name: tcp-echo-v1, namespace: default, labels: {{app: tcp-echo, version: v1}}}}
status: {{podIP: {v1}}}
---
apiVersion: v1
kind: Pod
metadata: {{name: tcp-echo-v2, namespace: default, labels: {{app: tcp-echo, version: v2}}}}
status: {{podIP: {v2}}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: tcp-echo-1, namespace: default, labels: {{kubernetes.io/service-name: tcp-echo}}}}
ports: [{{name: tcp, port: 9000}}]
endpoints:
- addresses: [{v1}]
  targetRef: {{kind: Pod, name: tcp-echo-v1, namespace: default}}
- addresses: [{v2}]
  targetRef: {{kind: Pod, name: tcp-echo-v2, namespace: default}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: tcp-echo, namespace: default}}
spec:
  host: tcp-echo
  subsets:
  - {{name: v1, labels: {{version: v1}}}}
  - {{name: v2, labels: {{version: v2}}}}
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: tcp-echo-gateway, namespace: default}}
spec:
  selector: {{istio: ingressgateway}}
  servers:
  - port: {{number: 31400, name: tcp, protocol: TCP}}
    hosts: ["*"]
"""


def tcp_shift(v1: int, v2: int) -> str:
    return f"""\
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: tcp-echo, namespace: default}}
spec:
  hosts: ["*"]
  gateways: [tcp-echo-gateway]
  tcp:
  - match:
    - port: 31400
    route:
    - destination: {{host: tcp-echo, port: {{number: 9000}}, subset: v1}}
      weight: {v1}
    - destination: {{host: tcp-echo, port: {{number: 9000}}, subset: v2}}
      weight: {v2}
"""


class Lab:
    def __init__(self, mesh: Mesh, ca: Authority, work: pathlib.Path) -> None:
        self.mesh, self.ca, self.work = mesh, ca, work
        self.gateway_ip = mesh.ip(1)
        self.client = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10))

    async def http(self, *, port: int, host: str, path: str = "/") -> tuple[int, dict[str, str], str]:
        url = f"http://{self.gateway_ip}:{port}{path}"
        async with self.client.get(url, headers={"Host": host}, allow_redirects=False) as resp:
            return resp.status, {k.lower(): v for k, v in resp.headers.items()}, await resp.text()

    def credential(self, name: str, host: str, *, kind: str = "kubernetes.io/tls", ca: bool = False) -> None:
        pem = self.ca.issue(host, sans=(host,))
        data = (
            {"tls.crt": pem.cert, "tls.key": pem.key}
            if kind == "kubernetes.io/tls"
            else {"cert": pem.cert, "key": pem.key}
        )
        if ca:
            data["ca.crt" if kind == "kubernetes.io/tls" else "cacert"] = self.ca.pem
        self.mesh.write(f"{name}.yaml", secret_yaml(name, GW, data, kind=kind))


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def lab(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Lab]:
    """meshd; a gateway Envoy (router, istio-system, xDS on the secure port) at .1; HTTP apps productpage
    (.11) and helloworld (.12); TCP echo v1 (.21) and v2 (.22); a TLS server my-nginx (.31)."""
    work = tmp_path_factory.mktemp("gateways")
    ca = Authority("gateway test CA")
    tokens = write_ca_tokens(work / "tokens.yaml", {"tok-gw": (GW, "istio-ingressgateway-service-account")})
    mesh = Mesh(work_dir=work, delta=False, meshd_args=("--ca-token-file", str(tokens)))
    echoes = [TcpEcho("v1"), TcpEcho("v2"), TcpEcho("nginx")]
    try:
        async with logs_on_failure(mesh) as m:
            await m.app(service="productpage", version="v1", pod="productpage-v1", ip=m.ip(11))
            await m.app(service="helloworld", version="v1", pod="helloworld-v1", ip=m.ip(12))
            await echoes[0].start(m.ip(21), 9000)
            await echoes[1].start(m.ip(22), 9000)
            nginx = ca.issue("nginx.example.com", sans=("nginx.example.com",))
            await echoes[2].start(m.ip(31), 8443, tls=server_context(nginx, work, "nginx"))
            m.write("gateway-pod.yaml", GATEWAY_POD.replace("{ip}", m.ip(1)))
            m.write("productpage.yaml", service_yaml("productpage", ips=[m.ip(11)], port=9080, target=8080))
            m.write("helloworld.yaml", service_yaml("helloworld", ips=[m.ip(12)], port=5000, target=8080))
            m.write("nginx.yaml", service_yaml("my-nginx", ips=[m.ip(31)], port=443, target=8443, port_name="https"))
            m.write("tcp-echo.yaml", TCP_ECHO.format(v1=m.ip(21), v2=m.ip(22)))
            await m.meshd.start()
            await m.sidecar(pod="istio-ingressgateway-1", ip=m.ip(1), namespace=GW, token="tok-gw", node_type="router")
            lab = Lab(m, ca, work)
            try:
                yield lab
            finally:
                await lab.client.close()
    finally:
        for echo in echoes:
            await echo.stop()


async def _until(check: Any, what: str, timeout: float = 20) -> Any:
    return await eventually(check, timeout=timeout, what=what)


async def test_ingress_http_by_host_and_path_and_404_elsewhere(lab: Lab) -> None:
    lab.mesh.write("bookinfo-gateway.yaml", BOOKINFO)

    async def productpage() -> dict[str, Any] | None:
        status, _, body = await lab.http(port=80, host="bookinfo.example.com", path="/productpage")
        return json.loads(body) if status == 200 else None

    body = await _until(productpage, "bookinfo.example.com/productpage through the gateway")
    assert body["service"] == "productpage" and body["request"]["path"] == "/productpage"
    status, _, body = await lab.http(port=80, host="helloworld.example.com", path="/hello")
    assert status == 200 and json.loads(body)["service"] == "helloworld"
    # a path the VirtualService does not route, and hosts no VirtualService gives: 404
    assert (await lab.http(port=80, host="bookinfo.example.com", path="/reviews"))[0] == 404
    assert (await lab.http(port=80, host="other.example.com", path="/productpage"))[0] == 404
    # the Host with a port matches too (Istio's `host:*` domains)
    assert (await lab.http(port=80, host="bookinfo.example.com:80", path="/login"))[0] == 200
    # a gateway gets gateway config only: no sidecar listeners
    dump = await lab.mesh.envoys["istio-ingressgateway-1"].config_dump(resource="dynamic_listeners")
    names = {entry["name"] for entry in dump["configs"]}
    assert f"{lab.gateway_ip}_80" in names and "virtualInbound" not in names and f"{lab.gateway_ip}_9080" not in names


async def test_https_redirect_answers_301(lab: Lab) -> None:
    lab.mesh.write("redirect-gateway.yaml", REDIRECT)

    async def redirected() -> tuple[int, dict[str, str], str] | None:
        answer = await lab.http(port=8080, host="bookinfo.example.com", path="/productpage")
        return answer if answer[0] == 301 else None

    _, headers, _ = await _until(redirected, "a 301 from the httpsRedirect server")
    assert headers["location"] == "https://bookinfo.example.com/productpage"


async def test_secure_gateway_simple_and_mutual_by_sni(lab: Lab) -> None:
    lab.credential("bookinfo-credential", "bookinfo.example.com")
    lab.credential("helloworld-credential", "helloworld.example.com", kind="Opaque")
    lab.credential("mtls-credential", "mtls.example.com", ca=True)
    lab.mesh.write("secure-gateway.yaml", SECURE)
    trusting = client_context(lab.ca)

    async def served(sni: str, path: str = "/") -> tuple[int, Any, Any] | None:
        try:
            return await https_get(lab.gateway_ip, 443, sni=sni, path=path, tls=trusting)
        except (OSError, ssl.SSLError):
            return None

    status, body, cert = await _until(lambda: served("bookinfo.example.com", "/productpage"), "HTTPS to bookinfo")
    assert status == 200 and body["service"] == "productpage"
    assert common_name(cert) == "bookinfo.example.com"  # the client verified it against the CA
    status, body, cert = await _until(lambda: served("helloworld.example.com"), "HTTPS to helloworld")
    assert status == 200 and body["service"] == "helloworld" and common_name(cert) == "helloworld.example.com"
    # a client that does not trust the gateway's CA refuses the certificate
    with pytest.raises(ssl.SSLCertVerificationError):
        await https_get(lab.gateway_ip, 443, sni="bookinfo.example.com", path="/", tls=client_context(Authority("x")))
    # an SNI no server has: no filter chain, the connection is closed
    with pytest.raises((OSError, ssl.SSLError)):
        await https_get(lab.gateway_ip, 443, sni="unknown.example.com", path="/", tls=trusting)

    # MUTUAL: with a client certificate from the CA of the Secret...
    with_cert = client_context(lab.ca, client=lab.ca.issue("alice", client=True), work=lab.work)
    status, body, cert = await _until(lambda: https_get(
        lab.gateway_ip, 443, sni="mtls.example.com", path="/", tls=with_cert
    ), "MUTUAL with a client certificate")  # fmt: skip
    assert status == 200 and common_name(cert) == "mtls.example.com"
    assert "alice" in body["request"]["headers"].get("x-forwarded-client-cert", "")  # the gateway saw it
    # ... and without one: the handshake fails
    with pytest.raises((OSError, ssl.SSLError)):
        await https_get(lab.gateway_ip, 443, sni="mtls.example.com", path="/", tls=trusting)


async def test_credential_rotation_without_restart(lab: Lab) -> None:
    lab.credential("bookinfo-credential", "bookinfo.example.com")
    lab.mesh.write("secure-gateway.yaml", SECURE)
    trusting = client_context(lab.ca)

    async def certificate() -> Any:
        _, _, cert = await https_get(lab.gateway_ip, 443, sni="bookinfo.example.com", path="/productpage", tls=trusting)
        return cert

    before = await _until(certificate, "HTTPS to bookinfo")
    envoy = lab.mesh.envoys["istio-ingressgateway-1"]
    pid = envoy.pid
    lab.credential("bookinfo-credential", "bookinfo.example.com")  # a new certificate and key

    async def rotated() -> Any:
        cert = await certificate()
        return cert if cert.serial_number != before.serial_number else None

    await _until(rotated, "new handshakes to see the rotated certificate")
    assert envoy.pid == pid and envoy.returncode is None  # over SDS: no restart


async def test_tls_passthrough_by_sni_to_a_backend_terminating_tls(lab: Lab) -> None:
    lab.mesh.write("passthrough.yaml", PASSTHROUGH)
    trusting = client_context(lab.ca)

    async def through() -> str | None:
        try:
            return await tcp_line(lab.gateway_ip, 8443, text="ping", tls=trusting, sni="nginx.example.com")
        except (OSError, ssl.SSLError):
            return None

    # the backend's own certificate reached the client (verified for nginx.example.com): not terminated
    assert await _until(through, "TLS passthrough to my-nginx") == "nginx ping"
    # another SNI matches no chain: closed before any TLS (a client that would accept any name still fails)
    lenient = client_context(lab.ca)
    lenient.check_hostname = False
    with pytest.raises((OSError, ssl.SSLError)):
        await tcp_line(lab.gateway_ip, 8443, text="ping", tls=lenient, sni="other.example.com")


async def test_tcp_traffic_shifting_80_20_through_the_gateway(lab: Lab) -> None:
    lab.mesh.write("tcp-echo-vs.yaml", tcp_shift(100, 0))

    async def answers(count: int) -> Counter[str]:
        seen: Counter[str] = Counter()
        for _ in range(count):
            seen[(await tcp_line(lab.gateway_ip, 31400)).split()[0]] += 1
        return seen

    async def only_v1() -> bool:
        return (await answers(10)) == Counter({"v1": 10})

    await _until(only_v1, "every connection to v1")
    lab.mesh.write("tcp-echo-vs.yaml", tcp_shift(80, 20))

    async def some_v2() -> bool:
        return (await answers(10))["v2"] > 0

    await _until(some_v2, "the 80/20 shift to reach the gateway")
    seen = await answers(200)
    assert set(seen) == {"v1", "v2"}
    assert 120 <= seen["v1"] <= 190, seen  # 80 % of 200 connections (binomial: ±6 sd is about ±34)


LATE = """\
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: late-gateway, namespace: istio-system}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 9443, name: https-late, protocol: HTTPS}
    hosts: [late.example.com]
    tls: {mode: SIMPLE, credentialName: late-credential}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: late, namespace: default}
spec:
  hosts: [late.example.com]
  gateways: [istio-system/late-gateway]
  http:
  - route:
    - destination: {host: helloworld}
"""


async def test_a_missing_secret_is_reported_and_its_server_not_served_until_it_exists(lab: Lab) -> None:
    lab.mesh.write("late-gateway.yaml", LATE)

    async def reported() -> list[dict[str, Any]]:
        errors: list[dict[str, Any]] = await lab.mesh.meshd.get_json("/debug/config_errors")
        return [e for e in errors if e["resource"] == "Gateway istio-system/late-gateway"]

    [error] = await _until(reported, "the missing Secret reported on the Gateway")
    assert error["field"] == "spec.servers[0].tls.credentialName"
    assert "no Secret late-credential in namespace istio-system" in error["message"]
    trusting = client_context(lab.ca)
    # fail closed: no listener on 9443 at all, never plaintext
    with pytest.raises(OSError):
        await https_get(lab.gateway_ip, 9443, sni="late.example.com", path="/", tls=trusting)
    lab.credential("late-credential", "late.example.com")

    async def served() -> tuple[int, Any, Any] | None:
        try:
            return await https_get(lab.gateway_ip, 9443, sni="late.example.com", path="/", tls=trusting)
        except (OSError, ssl.SSLError):
            return None

    status, body, cert = await _until(served, "the server once its Secret exists")
    assert status == 200 and body["service"] == "helloworld" and common_name(cert) == "late.example.com"
    assert await reported() == []


TLS_OPTIONS = """\
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: options-gateway, namespace: istio-system}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 9444, name: https-optional, protocol: HTTPS}
    hosts: [opt.example.com]
    tls:
      mode: OPTIONAL_MUTUAL
      credentialName: opt-credential
      minProtocolVersion: TLSV1_2
      maxProtocolVersion: TLSV1_2
      cipherSuites: [ECDHE-ECDSA-AES128-GCM-SHA256]
  - port: {number: 9445, name: https-san, protocol: HTTPS}
    hosts: [san.example.com]
    tls: {mode: MUTUAL, credentialName: san-credential, subjectAltNames: [alice.example.com]}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: options, namespace: default}
spec:
  hosts: [opt.example.com, san.example.com]
  gateways: [istio-system/options-gateway]
  http:
  - route:
    - destination: {host: helloworld}
"""


async def test_optional_mutual_versions_ciphers_and_client_subject_alt_names(lab: Lab) -> None:
    lab.credential("opt-credential", "opt.example.com", ca=True)
    lab.credential("san-credential", "san.example.com", ca=True)
    lab.mesh.write("options-gateway.yaml", TLS_OPTIONS)
    trusting = client_context(lab.ca)
    alice = client_context(
        lab.ca, client=lab.ca.issue("alice", sans=("alice.example.com",), client=True), work=lab.work
    )

    async def get(port: int, sni: str, tls: ssl.SSLContext) -> tuple[int, Any, Any] | None:
        try:
            return await https_get(lab.gateway_ip, port, sni=sni, path="/", tls=tls)
        except (OSError, ssl.SSLError):
            return None

    # OPTIONAL_MUTUAL: served without a client certificate, and with one (verified: its subject forwarded)
    status, body, _ = await _until(lambda: get(9444, "opt.example.com", trusting), "OPTIONAL_MUTUAL without a cert")
    assert status == 200 and "x-forwarded-client-cert" not in body["request"]["headers"]
    status, body, _ = await _until(lambda: get(9444, "opt.example.com", alice), "OPTIONAL_MUTUAL with a cert")
    assert status == 200 and "alice" in body["request"]["headers"]["x-forwarded-client-cert"]
    # maxProtocolVersion TLSV1_2 with the one cipher suite: TLS 1.2 with it is negotiated, 1.3 only is refused
    _, writer = await asyncio.open_connection(lab.gateway_ip, 9444, ssl=trusting, server_hostname="opt.example.com")
    ssl_object = writer.get_extra_info("ssl_object")
    assert ssl_object.version() == "TLSv1.2" and ssl_object.cipher()[0] == "ECDHE-ECDSA-AES128-GCM-SHA256"
    writer.close()
    tls13 = client_context(lab.ca)
    tls13.minimum_version = ssl.TLSVersion.TLSv1_3
    with pytest.raises((OSError, ssl.SSLError)):
        await https_get(lab.gateway_ip, 9444, sni="opt.example.com", path="/", tls=tls13)
    # subjectAltNames: alice.example.com's certificate is accepted, another client of the same CA is not
    status, _, _ = await _until(lambda: get(9445, "san.example.com", alice), "MUTUAL with the allowed SAN")
    assert status == 200
    bob = client_context(lab.ca, client=lab.ca.issue("bob", sans=("bob.example.com",), client=True), work=lab.work)
    with pytest.raises((OSError, ssl.SSLError)):
        await https_get(lab.gateway_ip, 9445, sni="san.example.com", path="/", tls=bob)
