"""Istio's egress-gateway pattern, end to end with real Envoys run by `meshd agent` (the client's sidecar and a
router proxy as the egress gateway, both with workload certificates from meshd's CA), local servers standing
in for the external hosts (ServiceEntries with STATIC endpoints):

- HTTP (Istio's "Egress gateway for HTTP traffic" with mutual TLS): the client asks its sidecar for
  `external.example.com`; the VirtualService's `mesh` route sends it to the egress gateway's subset whose
  DestinationRule says ISTIO_MUTUAL (SNI `external.example.com`); the gateway's HTTPS server (ISTIO_MUTUAL)
  terminates that mTLS, verifies the client's workload certificate, and its `istio-egressgateway` route
  sends the request to the ServiceEntry's endpoint. The external server sees the request arrive from the
  gateway, not from the client's sidecar.
- TLS passthrough (Istio's "Egress gateway for HTTPS traffic"): the sidecar's `tls` route (gateways
  `mesh`, sniHosts) sends the client's own TLS to the gateway's TLS PASSTHROUGH server, whose `tls` route
  sends it by SNI to the external host; the client completes TLS with the external server's certificate.
"""

from __future__ import annotations

import json
import pathlib
import re
from collections.abc import AsyncIterator

import pytest

from tests.certs import Authority
from tests.e2e.agents import write_ca_tokens
from tests.e2e.harness import Mesh, eventually, logs_on_failure
from tests.e2e.l4_servers import Servers, client_context, read_line, server_context

pytestmark = pytest.mark.e2e

GATEWAY, CLIENT, EXTERNAL = 1, 2, 4
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
  ports: [{{name: https, port: 443, targetPort: 8443}}, {{name: tls, port: 15443, targetPort: 9443}}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: istio-egressgateway-1
  namespace: istio-system
  labels: {{kubernetes.io/service-name: istio-egressgateway}}
ports: [{{name: https, port: 8443}}, {{name: tls, port: 9443}}]
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
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: external, namespace: default}}
spec:
  hosts: [external.example.com]
  ports: [{{number: 80, name: http, protocol: HTTP}}]
  location: MESH_EXTERNAL
  resolution: STATIC
  endpoints: [{{address: {external}, ports: {{http: 8080}}}}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: secure, namespace: default}}
spec:
  hosts: [secure.example.com]
  ports: [{{number: 443, name: tls, protocol: TLS}}]
  location: MESH_EXTERNAL
  resolution: STATIC
  endpoints: [{{address: {external}, ports: {{tls: 8443}}}}]
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: istio-egressgateway, namespace: default}}
spec:
  selector: {{istio: egressgateway}}
  servers:
  - port: {{number: 443, name: https, protocol: HTTPS}}
    hosts: [external.example.com]
    tls: {{mode: ISTIO_MUTUAL}}
  - port: {{number: 15443, name: tls, protocol: TLS}}
    hosts: [secure.example.com]
    tls: {{mode: PASSTHROUGH}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: egressgateway-for-external, namespace: default}}
spec:
  host: istio-egressgateway.istio-system.svc.cluster.local
  subsets:
  - name: external
    trafficPolicy:
      portLevelSettings:
      - port: {{number: 443}}
        tls: {{mode: ISTIO_MUTUAL, sni: external.example.com}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: external-through-egress-gateway, namespace: default}}
spec:
  hosts: [external.example.com]
  gateways: [istio-egressgateway, mesh]
  http:
  - match: [{{gateways: [mesh], port: 80}}]
    route:
    - destination: {{host: istio-egressgateway.istio-system.svc.cluster.local, subset: external, port: {{number: 443}}}}
  - match: [{{gateways: [istio-egressgateway], port: 443}}]
    route:
    - destination: {{host: external.example.com, port: {{number: 80}}}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: secure-through-egress-gateway, namespace: default}}
spec:
  hosts: [secure.example.com]
  gateways: [mesh, istio-egressgateway]
  tls:
  - match: [{{gateways: [mesh], port: 443, sniHosts: [secure.example.com]}}]
    route:
    - destination: {{host: istio-egressgateway.istio-system.svc.cluster.local, port: {{number: 15443}}}}
  - match: [{{gateways: [istio-egressgateway], port: 15443, sniHosts: [secure.example.com]}}]
    route:
    - destination: {{host: secure.example.com, port: {{number: 443}}}}
"""


class EgressMesh:
    def __init__(self, mesh: Mesh, ca: pathlib.Path) -> None:
        self.mesh, self.ca = mesh, ca

    async def stats(self, pod: str, pattern: str) -> int:
        """The sum of the agent's Envoy counters whose name matches `pattern`."""
        text = await self.mesh.agents[pod].admin_get("/stats")
        return sum(int(v) for name, v in re.findall(r"^(\S+): (\d+)$", text, re.M) if re.fullmatch(pattern, name))


@pytest.fixture
async def egress(tmp_path: pathlib.Path) -> AsyncIterator[EgressMesh]:
    authority = Authority("external CA")
    certs = tmp_path / "certs"
    certs.mkdir()
    ca = certs / "ca.pem"
    ca.write_bytes(authority.pem)
    cert, key = authority.issue("secure.example.com", sans=("secure.example.com",)).write(certs, "secure")
    servers = Servers()
    async with logs_on_failure(Mesh(work_dir=tmp_path, delta=False)) as m:
        tokens = write_ca_tokens(tmp_path / "tokens.yaml", TOKENS)
        m.meshd.extra_args = ("--ca-token-file", str(tokens))
        m.write("config.yaml", CONFIG.format(gw=m.ip(GATEWAY), client=m.ip(CLIENT), external=m.ip(EXTERNAL)))
        await m.meshd.start()
        await m.app(service="external", version="v1", pod="external-server", ip=m.ip(EXTERNAL))
        await servers.name(m.ip(EXTERNAL), 8443, "secure", tls=server_context(str(cert), str(key)))
        await m.agent_sidecar(
            pod="istio-egressgateway-1",
            ip=m.ip(GATEWAY),
            namespace="istio-system",
            service_account="istio-egressgateway-service-account",
            labels={"istio": "egressgateway"},
            token="tok-gw",
            args=("--proxy-type", "router"),
        )
        await m.agent_sidecar(pod="client", ip=m.ip(CLIENT), service_account="client", token="tok-client")
        try:
            yield EgressMesh(m, ca)
        finally:
            await servers.close()


async def test_http_goes_through_the_egress_gateway_over_istio_mutual(egress: EgressMesh) -> None:
    mesh = egress.mesh

    async def through_gateway() -> dict[str, object] | None:
        status, _, body = await mesh.request(
            via_ip=mesh.ip(CLIENT), host="external.example.com", port=80, path="/via-egress"
        )
        return json.loads(body) if status == 200 else None

    body = await eventually(through_gateway, timeout=30, what="client -> sidecar -> egress gateway -> external")
    assert body["service"] == "external" and body["request"]["path"] == "/via-egress"  # type: ignore[index]
    # the gateway terminated the sidecar's Istio mTLS: it verified the client's workload certificate
    xfcc = body["request"]["headers"]["x-forwarded-client-cert"]  # type: ignore[index]
    assert "URI=spiffe://cluster.local/ns/default/sa/client" in xfcc
    # the client's sidecar sent it to the gateway's subset over Istio mTLS, never straight to the endpoint
    gateway_cluster = r"cluster\.outbound\|443\|external\|istio-egressgateway\.istio-system\.svc\.cluster\.local"
    assert await egress.stats("client", gateway_cluster + r"\.ssl\.handshake") >= 1
    assert await egress.stats("client", r"cluster\.outbound\|80\|\|external\.example\.com\.upstream_rq_total") == 0
    assert await egress.stats("istio-egressgateway-1", r"cluster\.outbound\|80\|\|external\.example\.com"
                                                      r"\.upstream_rq_total") >= 1  # fmt: skip
    # the gateway's listener is on the Service's targetPort and demands a workload certificate
    gateway = mesh.agents["istio-egressgateway-1"]
    listeners = json.loads(await gateway.admin_get("/config_dump?resource=dynamic_listeners"))
    assert {entry["name"] for entry in listeners["configs"]} == {f"{mesh.ip(GATEWAY)}_8443", f"{mesh.ip(GATEWAY)}_9443"}


async def test_tls_passes_through_the_egress_gateway_by_sni(egress: EgressMesh) -> None:
    mesh = egress.mesh
    tls = client_context(str(egress.ca))

    async def secure() -> str | None:
        try:
            return await read_line(mesh.ip(CLIENT), 443, tls=tls, sni="secure.example.com")
        except OSError:
            return None

    # the client completes TLS with the external server itself (its certificate verified for that name)
    assert await eventually(secure, timeout=30, what="client TLS -> sidecar -> egress gateway -> external") == "secure"
    passthrough = r"cluster\.outbound\|15443\|\|istio-egressgateway\.istio-system\.svc\.cluster\.local"
    assert await egress.stats("client", passthrough + r"\.upstream_cx_total") >= 1
    assert await egress.stats("client", r"cluster\.outbound\|443\|\|secure\.example\.com\.upstream_cx_total") == 0
    assert await egress.stats("istio-egressgateway-1", r"cluster\.outbound\|443\|\|secure\.example\.com"
                                                      r"\.upstream_cx_total") >= 1  # fmt: skip
    # another name is not passed through by the gateway (its passthrough server has no chain for it)
    with pytest.raises(OSError):
        await read_line(mesh.ip(GATEWAY), 9443, tls=tls, sni="other.example.com")
