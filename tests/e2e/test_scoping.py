"""Sidecar scoping and exportTo through real Envoy: a proxy gets only what it may reach, and the
rest is really unreachable (no cluster, no virtual host: 404), until the scope widens."""

from __future__ import annotations

import json
import pathlib
from collections.abc import AsyncIterator

import pytest

from tests.e2e.harness import Mesh, eventually, logs_on_failure

pytestmark = pytest.mark.e2e


def _service(ns: str, name: str, ip: str, *, export_to: str | None = None) -> str:
    annotations = f"\n  annotations: {{networking.istio.io/exportTo: '{export_to}'}}" if export_to else ""
    return f"""\
apiVersion: v1
kind: Service
metadata:
  name: {name}
  namespace: {ns}{annotations}
spec:
  ports: [{{name: http, port: 9080, targetPort: 8080}}]
---
apiVersion: v1
kind: Pod
metadata: {{name: {name}-1, namespace: {ns}, labels: {{app: {name}, security.istio.io/tlsMode: istio}}}}
status: {{podIP: {ip}}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: {name}-1, namespace: {ns}, labels: {{kubernetes.io/service-name: {name}}}}}
ports: [{{name: http, port: 8080}}]
endpoints:
- addresses: [{ip}]
  targetRef: {{kind: Pod, name: {name}-1, namespace: {ns}}}
"""


SIDECAR = """\
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {name: default, namespace: a}
spec:
  egress:
  - hosts: ["./*"]
"""


@pytest.fixture(params=["sotw", "delta"])
async def mesh(request: pytest.FixtureRequest, tmp_path: pathlib.Path) -> AsyncIterator[Mesh]:
    async with logs_on_failure(Mesh(work_dir=tmp_path, delta=request.param == "delta")) as m:
        m.write("web.yaml", _service("a", "web", m.ip(2)))
        m.write("other.yaml", _service("b", "other", m.ip(3)))
        m.write("client.yaml", f"apiVersion: v1\nkind: Pod\nmetadata: {{name: client, namespace: a}}\n"
                               f"status: {{podIP: {m.ip(1)}}}\n")  # fmt: skip
        m.write("sidecar.yaml", SIDECAR)
        await m.meshd.start()
        await m.app(service="web", version="v1", pod="web-1", ip=m.ip(2))
        await m.app(service="other", version="v1", pod="other-1", ip=m.ip(3))
        await m.sidecar(pod="client", ip=m.ip(1), namespace="a")
        for pod, host, ns in (("web-1", 2, "a"), ("other-1", 3, "b")):
            await m.sidecar(pod=pod, ip=m.ip(host), namespace=ns)
        yield m


async def _clusters(mesh: Mesh) -> set[str]:
    dump = await mesh.envoys["client"].config_dump(resource="dynamic_active_clusters")
    return {c["cluster"]["name"] for c in dump.get("configs", [])}


async def _status(mesh: Mesh, host: str) -> int:
    status, _ = await mesh.call(via_ip=mesh.ip(1), host=host)
    return status


async def test_sidecar_egress_limits_what_a_proxy_can_reach(mesh: Mesh) -> None:
    status, body = await mesh.call(via_ip=mesh.ip(1), host="web:9080")
    assert status == 200 and json.loads(body)["service"] == "web"
    assert await _status(mesh, "other.b:9080") == 404  # no virtual host for it
    assert not any("other.b" in name for name in await _clusters(mesh))

    # Without the Sidecar the client's scope is the whole mesh.
    (mesh.config_dir / "sidecar.yaml").unlink()
    await eventually(lambda: _is(mesh, "other.b:9080", 200), what="other.b to become reachable")
    assert "outbound|9080||other.b.svc.cluster.local" in await _clusters(mesh)

    # exportTo "." hides a service from other namespaces even with no Sidecar at all.
    mesh.write("other.yaml", _service("b", "other", mesh.ip(3), export_to="."))
    await eventually(lambda: _is(mesh, "other.b:9080", 404), what="other.b to be hidden by exportTo")
    assert await _status(mesh, "web:9080") == 200


async def _is(mesh: Mesh, host: str, expected: int) -> bool:
    return await _status(mesh, host) == expected
