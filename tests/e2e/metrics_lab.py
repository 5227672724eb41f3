"""A small mesh for Istio's standard metrics: a client sidecar and a server sidecar (`meshd agent` processes
with certificates from meshd's CA, so real mTLS), a server without sidecar, and helpers that read the
Prometheus endpoints (15020 merged, 15090 Envoy's) and pick samples by labels."""

from __future__ import annotations

import pathlib
from collections.abc import Mapping
from typing import Any

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.agents import write_ca_tokens
from tests.e2e.harness import Mesh

TOKENS = {
    "tok-client": ("default", "client"),
    "tok-web": ("default", "web"),
    "tok-gw": ("istio-system", "istio-ingressgateway-service-account"),
}
SPIFFE = "spiffe://cluster.local/ns/default/sa/{}"

SERVICES = """\
apiVersion: v1
kind: Service
metadata: {{name: web, namespace: default}}
spec:
  selector: {{app: web}}
  ports: [{{name: http, port: 9080, targetPort: 8080}}]
---
apiVersion: v1
kind: Pod
metadata: {{name: web-v1, namespace: default, labels: {{app: web, version: v1, security.istio.io/tlsMode: istio}}}}
spec: {{serviceAccountName: web}}
status: {{podIP: {web}}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: web-1, namespace: default, labels: {{kubernetes.io/service-name: web}}}}
addressType: IPv4
ports: [{{name: http, port: 8080}}]
endpoints:
- addresses: [{web}]
  conditions: {{ready: true}}
  targetRef: {{kind: Pod, name: web-v1, namespace: default}}
---
apiVersion: v1
kind: Service
metadata: {{name: plain, namespace: other}}
spec:
  selector: {{app: plain}}
  ports: [{{name: http, port: 9080, targetPort: 8080}}]
---
apiVersion: v1
kind: Pod
metadata: {{name: plain-1, namespace: other, labels: {{app: plain}}}}
status: {{podIP: {plain}}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: plain-1, namespace: other, labels: {{kubernetes.io/service-name: plain}}}}
addressType: IPv4
ports: [{{name: http, port: 8080}}]
endpoints:
- addresses: [{plain}]
  conditions: {{ready: true}}
  targetRef: {{kind: Pod, name: plain-1, namespace: other}}
"""

# TCP: the server sidecar's Sidecar ingress port 9000 bound on a second address (without capture, a sidecar
# serves mesh TCP there, not on its HTTP-only inbound port), reached over Istio mTLS (ISTIO_MUTUAL),
# forwarding to the app at 127.0.0.1:{app_port}
TCP_SERVICE = """\
apiVersion: v1
kind: Service
metadata: {{name: echo, namespace: default}}
spec:
  ports: [{{name: tcp, port: 9000, targetPort: 9000}}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: echo-1, namespace: default, labels: {{kubernetes.io/service-name: echo}}}}
addressType: IPv4
ports: [{{name: tcp, port: 9000}}]
endpoints:
- addresses: [{bind}]
  conditions: {{ready: true}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: echo, namespace: default}}
spec: {{host: echo, trafficPolicy: {{tls: {{mode: ISTIO_MUTUAL}}}}}}
---
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {{name: web, namespace: default}}
spec:
  workloadSelector: {{labels: {{app: web}}}}
  ingress:
  - port: {{number: 9000, protocol: TCP, name: tcp}}
    bind: {bind}
    defaultEndpoint: 127.0.0.1:{app_port}
"""

GATEWAY_CONFIG = """\
apiVersion: v1
kind: Pod
metadata: {{name: istio-ingressgateway-1, namespace: istio-system, labels: {{istio: ingressgateway}}}}
spec: {{serviceAccountName: istio-ingressgateway-service-account}}
status: {{podIP: {gw}}}
---
apiVersion: v1
kind: Service
metadata: {{name: istio-ingressgateway, namespace: istio-system}}
spec:
  selector: {{istio: ingressgateway}}
  ports: [{{name: http, port: 80, targetPort: 8080}}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: istio-ingressgateway-1
  namespace: istio-system
  labels: {{kubernetes.io/service-name: istio-ingressgateway}}
ports: [{{name: http, port: 8080}}]
endpoints:
- addresses: [{gw}]
  targetRef: {{kind: Pod, name: istio-ingressgateway-1, namespace: istio-system}}
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: ingress, namespace: istio-system}}
spec:
  selector: {{istio: ingressgateway}}
  servers: [{{port: {{number: 80, name: http, protocol: HTTP}}, hosts: ["*"]}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: web-ingress, namespace: istio-system}}
spec:
  hosts: ["*"]
  gateways: [ingress]
  http:
  - route:
    - destination: {{host: web.default.svc.cluster.local, port: {{number: 9080}}}}
"""

CLIENT, WEB, PLAIN, WEB_TCP, GATEWAY = 1, 2, 4, 5, 6


async def start_metrics_mesh(m: Mesh, tmp_path: pathlib.Path) -> None:
    """meshd with its CA; `web` (HTTP 9080, TCP 9000) behind a server sidecar, `plain` without one, and the
    client sidecar (workload `client`, app `client`, version `v7`)."""
    tokens = write_ca_tokens(tmp_path / "tokens.yaml", TOKENS)
    m.meshd.extra_args = ("--ca-token-file", str(tokens))
    m.write("services.yaml", SERVICES.format(web=m.ip(WEB), plain=m.ip(PLAIN)))
    await m.meshd.start()
    await m.app(service="web", version="v1", pod="web-v1", ip=m.ip(WEB))
    await m.app(service="plain", version="v1", pod="plain-1", ip=m.ip(PLAIN))
    await m.agent_sidecar(
        pod="web-v1", ip=m.ip(WEB), service_account="web", token="tok-web",
        labels={"app": "web", "version": "v1"}, args=("--workload-name", "web-v1"),
    )  # fmt: skip
    await m.agent_sidecar(
        pod="client-5d8f", ip=m.ip(CLIENT), service_account="client", token="tok-client",
        labels={"app": "client", "version": "v7"}, args=("--workload-name", "client"),
    )  # fmt: skip


async def start_gateway(m: Mesh) -> None:
    """An ingress gateway (`meshd agent --proxy-type router`, workload `istio-ingressgateway`) routing to web."""
    m.write("gateway.yaml", GATEWAY_CONFIG.format(gw=m.ip(GATEWAY)))
    await m.agent_sidecar(
        pod="istio-ingressgateway-1", ip=m.ip(GATEWAY), namespace="istio-system",
        service_account="istio-ingressgateway-service-account", labels={"istio": "ingressgateway"},
        token="tok-gw", args=("--proxy-type", "router", "--workload-name", "istio-ingressgateway"),
    )  # fmt: skip


async def scrape(session: aiohttp.ClientSession, ip: str, port: int = 15020) -> str:
    async with session.get(f"http://{ip}:{port}/stats/prometheus") as resp:
        assert resp.status == 200, resp.status
        return await resp.text()


def samples(text: str, name: str, **labels: str) -> list[tuple[dict[str, str], float]]:
    """Every sample called `name` whose labels include `labels`."""
    out = []
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                out.append((dict(sample.labels), sample.value))
    return out


def total(text: str, name: str, **labels: str) -> float:
    return sum(value for _, value in samples(text, name, **labels))


def only(text: str, name: str, **labels: str) -> dict[str, str]:
    """The labels of the single series `name` with these labels (assertion error otherwise)."""
    found = samples(text, name, **labels)
    assert len(found) == 1, f"{name} {labels}: {len(found)} series: {found}"
    return found[0][0]


def subset(labels: Mapping[str, str], expected: Mapping[str, Any]) -> dict[str, tuple[str | None, Any]]:
    """The expected labels that differ: {label: (actual, expected)}."""
    return {k: (labels.get(k), v) for k, v in expected.items() if labels.get(k) != v}
