"""Istio's manual deployment of a Gateway API Gateway through a real gateway Envoy (standalone from YAML): a
Gateway whose `spec.addresses` names an existing Service (`istio-ingressgateway.istio-system.svc.cluster.local`)
is served by that Service's gateway pod (selected by `istio: ingressgateway`, in istio-system), which answers its
HTTPRoute; an address naming no Service leaves it served nowhere (the listener goes, the Gateway is reported)."""

from __future__ import annotations

import json
import pathlib
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from tests.e2e.harness import Mesh, eventually, logs_on_failure

pytestmark = pytest.mark.e2e
GATEWAY_IP, WEB_IP = 1, 11

WORLD = """\
apiVersion: v1
kind: Pod
metadata: {{name: ingress-1, namespace: istio-system, labels: {{istio: ingressgateway}}}}
status: {{podIP: {gateway}}}
---
apiVersion: v1
kind: Service
metadata: {{name: istio-ingressgateway, namespace: istio-system}}
spec: {{selector: {{istio: ingressgateway}}, ports: [{{name: http, port: 8080}}]}}
---
apiVersion: v1
kind: Service
metadata: {{name: web, namespace: apps}}
spec: {{ports: [{{name: http, port: 80, targetPort: 8080}}]}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: web-1, namespace: apps, labels: {{kubernetes.io/service-name: web}}}}
addressType: IPv4
ports: [{{name: http, port: 8080}}]
endpoints: [{{addresses: [{web}]}}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: web, namespace: apps}}
spec:
  parentRefs: [{{name: manual}}]
  rules: [{{backendRefs: [{{name: web, port: 80}}]}}]
"""


def _gateway(address: str) -> str:
    return f"""\
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: manual, namespace: apps}}
spec:
  gatewayClassName: istio
  addresses: [{{type: Hostname, value: {address}}}]
  listeners: [{{name: http, port: 8080, protocol: HTTP}}]
"""


@pytest.fixture
async def mesh(tmp_path: pathlib.Path) -> AsyncIterator[Mesh]:
    async with logs_on_failure(Mesh(work_dir=tmp_path, delta=False)) as m:
        m.write("world.yaml", WORLD.format(gateway=m.ip(GATEWAY_IP), web=m.ip(WEB_IP)))
        m.write("gateway.yaml", _gateway("istio-ingressgateway.istio-system.svc.cluster.local"))
        await m.meshd.start()
        await m.app(service="web", version="v1", pod="web-1", ip=m.ip(WEB_IP))
        await m.sidecar(pod="ingress-1", ip=m.ip(GATEWAY_IP), namespace="istio-system", node_type="router")
        yield m


async def _get(m: Mesh) -> Any:
    try:
        async with m.client.get(f"http://{m.ip(GATEWAY_IP)}:8080/", headers={"Host": "web.example.com"}) as resp:
            body = await resp.text()
            return resp.status, json.loads(body) if resp.status == 200 else body
    except aiohttp.ClientError as exc:
        return type(exc).__name__, None


async def test_addresses_link_the_gateway_to_the_service_pods(mesh: Mesh) -> None:
    async def served() -> bool:
        status, body = await _get(mesh)
        return status == 200 and body["service"] == "web"

    await eventually(served, timeout=30, what="the Service's gateway pod to serve the Gateway's HTTPRoute")
    assert not [e for e in await mesh.meshd.get_json("/debug/config_errors") if "manual" in (e["resource"] or "")]

    # an address that names no Service: the Gateway is served nowhere, and said so
    mesh.write("gateway.yaml", _gateway("nowhere.istio-system.svc.cluster.local"))

    async def gone() -> bool:
        status, _ = await _get(mesh)
        return status != 200

    await eventually(gone, timeout=30, what="the listener to leave the gateway pod")
    errors = await mesh.meshd.get_json("/debug/config_errors")
    assert any("AddressNotUsable" in e["message"] and "apps/manual" in e["resource"] for e in errors), errors
