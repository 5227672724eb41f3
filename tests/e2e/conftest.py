"""Fixtures for the real-Envoy tests: a `web` service with two versions behind sidecars, a client
sidecar, and meshd serving them from a YAML directory. Parametrised over SotW and delta ADS.

A test that fails while a mesh fixture is up (inside harness.logs_on_failure) shows that mesh's
meshd, Envoy and agent logs in its report."""

from __future__ import annotations

import pathlib
from collections.abc import AsyncIterator, Generator

import pytest

from tests.e2e.harness import OPEN_MESHES, Mesh, logs_on_failure

SERVICE = """\
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
status: {{podIP: {v1}}}
---
apiVersion: v1
kind: Pod
metadata: {{name: web-v2, namespace: default, labels: {{app: web, version: v2, security.istio.io/tlsMode: istio}}}}
spec: {{serviceAccountName: web}}
status: {{podIP: {v2}}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: web-1, namespace: default, labels: {{kubernetes.io/service-name: web}}}}
addressType: IPv4
ports: [{{name: http, port: 8080}}]
endpoints:
- addresses: [{v1}]
  conditions: {{ready: true}}
  targetRef: {{kind: Pod, name: web-v1, namespace: default}}
- addresses: [{v2}]
  conditions: {{ready: true}}
  targetRef: {{kind: Pod, name: web-v2, namespace: default}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: web, namespace: default}}
spec:
  host: web
  subsets:
  - {{name: v1, labels: {{version: v1}}}}
  - {{name: v2, labels: {{version: v2}}}}
"""


def virtual_service(v1: int, v2: int) -> str:
    return f"""\
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: web, namespace: default}}
spec:
  hosts: [web]
  http:
  - route:
    - destination: {{host: web, subset: v1}}
      weight: {v1}
    - destination: {{host: web, subset: v2}}
      weight: {v2}
"""


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """A failing test's report carries the logs of every mesh that is up (see harness.logs_on_failure)."""
    report = yield
    if report.when == "call" and report.failed:
        for mesh in OPEN_MESHES:
            report.sections.append(("meshd, Envoy and agent logs", mesh.failure_logs()))
    return report


@pytest.fixture(params=["sotw", "delta"])
async def mesh(request: pytest.FixtureRequest, tmp_path: pathlib.Path) -> AsyncIterator[Mesh]:
    """meshd + sidecars for client (.1), web-v1 (.2) and web-v2 (.3), routing web 80/20."""
    async with logs_on_failure(Mesh(work_dir=tmp_path, delta=request.param == "delta")) as m:
        m.write("web.yaml", SERVICE.format(v1=m.ip(2), v2=m.ip(3)))
        m.write("web-vs.yaml", virtual_service(80, 20))
        await m.meshd.start()
        await m.app(service="web", version="v1", pod="web-v1", ip=m.ip(2))
        await m.app(service="web", version="v2", pod="web-v2", ip=m.ip(3))
        for pod, host in (("client", 1), ("web-v1", 2), ("web-v2", 3)):
            await m.sidecar(pod=pod, ip=m.ip(host))
        yield m
