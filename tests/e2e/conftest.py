"""Fixtures for the real-Envoy tests: a `web` service with two versions behind sidecars, a client
sidecar, and meshd serving them from a YAML directory. Parametrised over SotW and delta ADS."""

from __future__ import annotations

import pathlib
from collections.abc import AsyncIterator

import pytest

from tests.e2e.harness import Mesh

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


@pytest.fixture(params=["sotw", "delta"])
async def mesh(request: pytest.FixtureRequest, tmp_path: pathlib.Path) -> AsyncIterator[Mesh]:
    """meshd + sidecars for client (.1), web-v1 (.2) and web-v2 (.3), routing web 80/20."""
    m = Mesh(work_dir=tmp_path, delta=request.param == "delta")
    try:
        m.write("web.yaml", SERVICE.format(v1=m.ip(2), v2=m.ip(3)))
        m.write("web-vs.yaml", virtual_service(80, 20))
        await m.meshd.start()
        await m.app(service="web", version="v1", pod="web-v1", ip=m.ip(2))
        await m.app(service="web", version="v2", pod="web-v2", ip=m.ip(3))
        for pod, host in (("client", 1), ("web-v1", 2), ("web-v2", 3)):
            await m.sidecar(pod=pod, ip=m.ip(host))
        yield m
    except BaseException:
        print(m.meshd.log()[-5000:])
        raise
    finally:
        await m.close()
