"""A gateway run by `meshd agent --proxy-type router` with its workload certificate from meshd's CA, and
a sidecar client run by `meshd agent` too: the egress-gateway pattern of Istio's tasks. The gateway's
server on port 80 (protocol HTTPS, tls ISTIO_MUTUAL) terminates the client sidecar's Istio mTLS with
the gateway's own certificate; its Service maps 80 to targetPort 8080 and the gateway listens there
(Istio's mapping); the backend sees the client's SPIFFE identity; a client without mTLS is refused.
Certificate files named by a Gateway are read by the gateway's agent and served over SDS, as Istio does."""

from __future__ import annotations

import json
import pathlib
import ssl
from collections.abc import AsyncIterator

import aiohttp
import pytest
from cryptography import x509

from tests.certs import Authority
from tests.e2e.agents import write_ca_tokens
from tests.e2e.gateway_lab import client_context, common_name, https_get
from tests.e2e.harness import Mesh, eventually, logs_on_failure

pytestmark = pytest.mark.e2e

TOKENS = {"tok-client": ("default", "client"), "tok-gw": ("istio-system", "istio-egressgateway-service-account")}

CONFIG = """\
apiVersion: v1
kind: Pod
metadata: {{name: istio-egressgateway-1, namespace: istio-system, labels: {{istio: egressgateway}}}}
spec: {{serviceAccountName: istio-egressgateway-service-account}}
status: {{podIP: {gw}}}
---
apiVersion: v1
kind: Service
metadata: {{name: istio-egressgateway, namespace: istio-system}}
spec:
  selector: {{istio: egressgateway}}
  ports: [{{name: http, port: 80, targetPort: 8080}}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: istio-egressgateway-1
  namespace: istio-system
  labels: {{kubernetes.io/service-name: istio-egressgateway}}
ports: [{{name: http, port: 8080}}]
endpoints:
- addresses: [{gw}]
  targetRef: {{kind: Pod, name: istio-egressgateway-1, namespace: istio-system}}
---
apiVersion: v1
kind: Pod
metadata: {{name: client, namespace: default}}
spec: {{serviceAccountName: client}}
status: {{podIP: {client}}}
---
apiVersion: v1
kind: Service
metadata: {{name: web, namespace: default}}
spec:
  ports: [{{name: http, port: 9080, targetPort: 8080}}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: web-1, namespace: default, labels: {{kubernetes.io/service-name: web}}}}
ports: [{{name: http, port: 8080}}]
endpoints: [{{addresses: [{web}]}}]
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: istio-egressgateway, namespace: istio-system}}
spec:
  selector: {{istio: egressgateway}}
  servers:
  - port: {{number: 80, name: https, protocol: HTTPS}}
    hosts: ["*"]
    tls: {{mode: ISTIO_MUTUAL}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: egressgateway-for-web, namespace: istio-system}}
spec:
  host: istio-egressgateway.istio-system.svc.cluster.local
  trafficPolicy:
    tls: {{mode: ISTIO_MUTUAL, sni: web.default.svc.cluster.local}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: web-through-egressgateway, namespace: istio-system}}
spec:
  hosts: ["*"]
  gateways: [istio-egressgateway]
  http:
  - route:
    - destination: {{host: web.default.svc.cluster.local, port: {{number: 9080}}}}
"""


@pytest.fixture
async def mesh(tmp_path: pathlib.Path) -> AsyncIterator[Mesh]:
    async with logs_on_failure(Mesh(work_dir=tmp_path, delta=False)) as m:
        tokens = write_ca_tokens(tmp_path / "tokens.yaml", TOKENS)
        m.meshd.extra_args = ("--ca-token-file", str(tokens))
        m.write("config.yaml", CONFIG.format(gw=m.ip(1), client=m.ip(2), web=m.ip(3)))
        await m.meshd.start()
        await m.app(service="web", version="v1", pod="web-1", ip=m.ip(3))
        await m.agent_sidecar(
            pod="istio-egressgateway-1",
            ip=m.ip(1),
            namespace="istio-system",
            service_account="istio-egressgateway-service-account",
            labels={"istio": "egressgateway"},
            token="tok-gw",
            args=("--proxy-type", "router"),
        )
        await m.agent_sidecar(pod="client", ip=m.ip(2), service_account="client", token="tok-client")
        yield m


async def test_istio_mutual_gateway_server_terminates_the_sidecars_mtls(mesh: Mesh) -> None:
    gateway_host = "istio-egressgateway.istio-system.svc.cluster.local"

    async def through_gateway() -> dict[str, object] | None:
        status, _, body = await mesh.request(via_ip=mesh.ip(2), host=gateway_host, port=80, path="/via-gateway")
        return json.loads(body) if status == 200 else None

    body = await eventually(through_gateway, timeout=30, what="client sidecar -> gateway (ISTIO_MUTUAL) -> web")
    assert body["service"] == "web" and body["request"]["path"] == "/via-gateway"  # type: ignore[index]
    # the gateway verified the client's workload certificate and says who it was
    xfcc = body["request"]["headers"]["x-forwarded-client-cert"]  # type: ignore[index]
    assert "URI=spiffe://cluster.local/ns/default/sa/client" in xfcc
    gateway = mesh.agents["istio-egressgateway-1"]
    listeners = json.loads(await gateway.admin_get("/config_dump?resource=dynamic_listeners"))
    names = {entry["name"] for entry in listeners["configs"]}
    assert names == {f"{mesh.ip(1)}_8080"}  # the Service's targetPort; no sidecar listener
    assert await gateway.cert_identities() == {
        "spiffe://cluster.local/ns/istio-system/sa/istio-egressgateway-service-account"
    }

    # a TLS client trusting the mesh root but without a workload certificate of its own is refused
    no_cert = ssl.create_default_context(cafile=str(mesh.meshd.ca_dir / "root-cert.pem"))
    no_cert.check_hostname = False
    with pytest.raises((OSError, ssl.SSLError)):
        await https_get(mesh.ip(1), 8080, sni="web.default.svc.cluster.local", path="/", tls=no_cert)
    # a plaintext client (no sidecar) on the gateway's port gets no answer
    with pytest.raises(aiohttp.ClientError):
        async with mesh.client.get(f"http://{mesh.ip(1)}:8080/", headers={"Host": "web"}) as resp:
            pytest.fail(f"a plaintext request was answered: {resp.status}")


FILES_GATEWAY = """\
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: files-gateway, namespace: istio-system}}
spec:
  selector: {{istio: egressgateway}}
  servers:
  - port: {{number: 9443, name: https-files, protocol: HTTPS}}
    hosts: [files.example.com]
    tls: {{mode: SIMPLE, serverCertificate: {cert}, privateKey: {key}}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: files, namespace: istio-system}}
spec:
  hosts: [files.example.com]
  gateways: [files-gateway]
  http:
  - route:
    - destination: {{host: web.default.svc.cluster.local, port: {{number: 9080}}}}
"""


async def test_certificate_files_are_served_by_the_gateways_agent_and_rotate(mesh: Mesh) -> None:
    """serverCertificate/privateKey files of the gateway's pod reach Envoy through its agent's SDS
    (`file-cert:<cert>~<key>`, as Istio's agent serves them); rewriting the files rotates the certificate
    without restarting Envoy."""
    ca = Authority("gateway files CA")
    files = mesh.work_dir / "gateway-files"
    files.mkdir()
    cert, key = ca.issue("files.example.com", sans=("files.example.com",)).write(files, "server")
    mesh.write("files-gateway.yaml", FILES_GATEWAY.format(cert=cert, key=key))
    trusting = client_context(ca)

    async def certificate() -> x509.Certificate | None:
        try:
            status, _, served = await https_get(mesh.ip(1), 9443, sni="files.example.com", path="/", tls=trusting)
        except OSError:
            return None
        return served if status == 200 else None

    first = await eventually(certificate, timeout=30, what="HTTPS with the certificate files over the agent's SDS")
    assert common_name(first) == "files.example.com"
    gateway = mesh.agents["istio-egressgateway-1"]
    secrets = json.loads(await gateway.admin_get("/config_dump?resource=dynamic_active_secrets"))
    assert {s["name"] for s in secrets["configs"]} >= {f"file-cert:{cert}~{key}"}
    starts = (await gateway.status())["envoy"]["starts"]
    ca.issue("files.example.com", sans=("files.example.com",)).write(files, "server")  # rotated in place

    async def rotated() -> bool:
        now = await certificate()
        return now is not None and now.serial_number != first.serial_number

    await eventually(rotated, timeout=30, what="the rewritten files to reach new handshakes")
    assert (await gateway.status())["envoy"]["starts"] == starts  # no restart
