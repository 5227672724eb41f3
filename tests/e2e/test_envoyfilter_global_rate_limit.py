"""Istio's global rate-limit task on the ingress gateway, its documents applied unchanged
(`istio_docs/global-rate-limit-task.yaml`): the ratelimit HTTP filter on the gateway calls the rate-limit
service by its mesh cluster name (`outbound|8081||ratelimit.default.svc.cluster.local`, a cluster no route of
the gateway uses: meshd sends it because the EnvoyFilter names it), the virtual host's action sends each
request's path, the `api` route's action the value `api`; the test's gRPC rate-limit service
(envoy.service.ratelimit.v3) holds the task's ConfigMap limits: `/productpage` once a minute, `api` twice. The
task's documented output follows: /productpage 200 then 429; /api/v1/products/1..3 200, 200, 429."""

from __future__ import annotations

import json
import pathlib
from collections.abc import AsyncIterator

import pytest

from tests.e2e.harness import Mesh, eventually, logs_on_failure
from tests.e2e.ratelimit_service import RATELIMIT_SERVICE, RateLimitService, start_rate_limit_service

pytestmark = pytest.mark.e2e
TASK = pathlib.Path(__file__).parent / "istio_docs" / "global-rate-limit-task.yaml"
RATE_LIMIT_CLUSTER = "outbound|8081||ratelimit.default.svc.cluster.local"
GATEWAY_POD = "istio-ingressgateway-1"
# Istio's samples/bookinfo/networking/bookinfo-gateway.yaml as it is now (port 8080: the task's `*:8080`)
BOOKINFO_GATEWAY = """\
apiVersion: networking.istio.io/v1
kind: Gateway
metadata:
  name: bookinfo-gateway
spec:
  selector:
    istio: ingressgateway
  servers:
  - port:
      number: 8080
      name: http
      protocol: HTTP
    hosts:
    - "*"
"""
WORKLOADS = """\
apiVersion: v1
kind: Pod
metadata: {{name: istio-ingressgateway-1, namespace: istio-system, labels: {{istio: ingressgateway}}}}
status: {{podIP: {gateway}}}
---
apiVersion: v1
kind: Service
metadata: {{name: productpage, namespace: default}}
spec:
  selector: {{app: productpage}}
  ports: [{{name: http, port: 9080, targetPort: 8000}}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: productpage-1, namespace: default, labels: {{kubernetes.io/service-name: productpage}}}}
addressType: IPv4
ports: [{{name: http, port: 8000}}]
endpoints:
- addresses: [{productpage}]
"""
# the task's ConfigMap ratelimit-config: domain ratelimit, PATH /productpage 1 a minute, PATH api 2 a minute
# (and any other PATH 100 a minute: more than this test sends)
LIMITS = {("ratelimit", "PATH", "/productpage"): 1, ("ratelimit", "PATH", "api"): 2}


@pytest.fixture
async def mesh(tmp_path: pathlib.Path) -> AsyncIterator[tuple[Mesh, RateLimitService]]:
    """meshd, productpage's app (.4, port 8000), the rate-limit service (.5:8081), the ingress gateway (.6)."""
    async with logs_on_failure(Mesh(work_dir=tmp_path, delta=False)) as m:
        m.write("workloads.yaml", WORKLOADS.format(gateway=m.ip(6), productpage=m.ip(4)))
        m.write("ratelimit.yaml", RATELIMIT_SERVICE.format(ip=m.ip(5)))
        m.write("bookinfo-gateway.yaml", BOOKINFO_GATEWAY)
        await m.meshd.start()
        await m.app(service="productpage", version="v1", pod="productpage", ip=m.ip(4), port=8000)
        server, service = await start_rate_limit_service(m.ip(5), 8081, limits=LIMITS)
        try:
            await m.sidecar(pod=GATEWAY_POD, ip=m.ip(6), namespace="istio-system", node_type="router")
            yield m, service
        finally:
            await server.stop(None)


async def _status(mesh: Mesh, path: str) -> int:
    status, _, _ = await mesh.request(
        via_ip=mesh.ip(6), host="bookinfo.example.com", port=8080, path=path, headers={"connection": "close"}
    )  # a new connection each time: one opened before a patch keeps the listener it was accepted on
    return status


async def test_the_global_rate_limit_task_applies_unchanged_on_the_ingress_gateway(
    mesh: tuple[Mesh, RateLimitService],
) -> None:
    m, service = mesh
    m.write("global-rate-limit-task.yaml", TASK.read_text())

    async def asking() -> bool:
        # /static/...: PATH /static/x, a descriptor without a limit (its answer does not use up the others)
        return await _status(m, "/static/x") == 200 and ("ratelimit", (("PATH", "/static/x"),)) in service.seen

    await eventually(asking, what="the gateway to ask the rate-limit service about each request's path")
    clusters = json.dumps(await m.envoys[GATEWAY_POD].config_dump(resource="dynamic_active_clusters"))
    assert RATE_LIMIT_CLUSTER in clusters  # no route uses it: sent because the EnvoyFilter names it
    for name in ("filter-ratelimit", "filter-ratelimit-svc", "filter-ratelimit-svc-api"):
        assert not [e for e in await m.meshd.get_json("/debug/config_errors") if name in e["resource"]]
    # the task's documented output
    assert [await _status(m, "/productpage") for _ in range(2)] == [200, 429]
    assert [await _status(m, f"/api/v1/products/{i}") for i in (1, 2, 3)] == [200, 200, 429]
    assert ("ratelimit", (("PATH", "api"),)) in service.seen  # the route's action, not the virtual host's
    assert ("ratelimit", (("PATH", "/api/v1/products/1"),)) not in service.seen
