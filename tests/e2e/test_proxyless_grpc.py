"""Proxyless gRPC: a real grpcio client (`xds:///echo.default.svc.cluster.local:7070`, GRPC_XDS_BOOTSTRAP
written by `meshd bootstrap --proxyless`) takes its listener, routes, clusters and endpoints from meshd over
SotW ADS and calls two real grpcio servers directly (no Envoy anywhere): the VirtualService's 80/20 split is
observed in the answers, then its gRPC fault abort as the status the client sees."""

from __future__ import annotations

import asyncio
import json
import pathlib
import sys
from collections.abc import AsyncIterator
from typing import Any

import pytest

from tests.e2e.grpc_apps import EchoServer, proxyless_argv
from tests.e2e.harness import Mesh, eventually, free_port, logs_on_failure

pytestmark = pytest.mark.e2e
HOST = "echo.default.svc.cluster.local"

CONFIG = """\
apiVersion: v1
kind: Service
metadata: {{name: echo, namespace: default}}
spec:
  ports: [{{name: grpc, port: 7070, targetPort: {port}}}]
---
apiVersion: v1
kind: Pod
metadata: {{name: echo-v1, namespace: default, labels: {{app: echo, version: v1}}}}
status: {{podIP: {v1}}}
---
apiVersion: v1
kind: Pod
metadata: {{name: echo-v2, namespace: default, labels: {{app: echo, version: v2}}}}
status: {{podIP: {v2}}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: echo-1, namespace: default, labels: {{kubernetes.io/service-name: echo}}}}
ports: [{{name: grpc, port: {port}}}]
endpoints:
- addresses: [{v1}]
  targetRef: {{kind: Pod, name: echo-v1, namespace: default}}
- addresses: [{v2}]
  targetRef: {{kind: Pod, name: echo-v2, namespace: default}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: echo, namespace: default}}
spec:
  host: echo
  subsets:
  - {{name: v1, labels: {{version: v1}}}}
  - {{name: v2, labels: {{version: v2}}}}
"""

SPLIT = """\
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: echo, namespace: default}
spec:
  hosts: [echo]
  http:
  - route:
    - {destination: {host: echo, subset: v1}, weight: 80}
    - {destination: {host: echo, subset: v2}, weight: 20}
"""

ABORT = """\
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: echo, namespace: default}
spec:
  hosts: [echo]
  http:
  - fault: {abort: {grpcStatus: PERMISSION_DENIED, percentage: {value: 100}}}
    route:
    - {destination: {host: echo, subset: v1}}
"""


@pytest.fixture
async def proxyless(tmp_path: pathlib.Path) -> AsyncIterator[tuple[Mesh, pathlib.Path, list[EchoServer]]]:
    async with logs_on_failure(Mesh(work_dir=tmp_path, delta=False)) as mesh:
        port = free_port()
        servers = [EchoServer(version=v, host=mesh.ip(n), port=port) for v, n in (("v1", 2), ("v2", 3))]
        mesh.write("echo.yaml", CONFIG.format(port=port, v1=mesh.ip(2), v2=mesh.ip(3)))
        mesh.write("echo-vs.yaml", SPLIT)
        await mesh.meshd.start()
        for server in servers:
            await server.start()
        node_id = f"sidecar~{mesh.ip(1)}~client.default~default.svc.cluster.local"
        bootstrap = tmp_path / "grpc-bootstrap.json"
        made = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "meshd", "bootstrap", "--proxyless", "--node-id", node_id,
            "--xds-address", f"127.0.0.1:{mesh.meshd.xds_port}", "--labels", "app=client",
            stdout=asyncio.subprocess.PIPE,
        )  # fmt: skip
        out, _ = await made.communicate()
        assert made.returncode == 0
        bootstrap.write_text(out.decode())
        try:
            yield mesh, bootstrap, servers
        finally:
            for server in servers:
                await server.stop()


async def _run_client(bootstrap: pathlib.Path, count: int, deadline_s: float = 30) -> dict[str, Any]:
    proc = await asyncio.create_subprocess_exec(
        *proxyless_argv(f"xds:///{HOST}:7070", count, deadline_s),
        env={"GRPC_XDS_BOOTSTRAP": str(bootstrap), "PATH": "/usr/bin:/bin"},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), deadline_s + 30)
    assert proc.returncode == 0, err.decode()[-2000:]
    result: dict[str, Any] = json.loads(out)
    return result


async def test_a_proxyless_grpc_client_follows_the_weighted_split_and_the_fault_abort(
    proxyless: tuple[Mesh, pathlib.Path, list[EchoServer]],
) -> None:
    mesh, bootstrap, servers = proxyless
    result = await _run_client(bootstrap, 200)
    seen = result["seen"]
    assert sum(seen.values()) == 200, result  # every call answered once the config arrived
    assert 0.65 <= seen.get("v1", 0) / 200 <= 0.93, seen  # 80/20
    assert seen.get("v2", 0) > 0, seen
    assert servers[0].calls + servers[1].calls >= 200  # the servers were called directly (no proxy)

    # the client ACKed everything meshd sent (a NACK is logged naming the refused resource)
    assert "event=nack" not in mesh.meshd.log(), mesh.meshd.log()[-3000:]

    mesh.write("echo-vs.yaml", ABORT)

    async def aborted() -> bool:
        result = await _run_client(bootstrap, 5, deadline_s=10)
        return any(e.startswith("PERMISSION_DENIED") for e in result["errors"]) and not result["seen"]

    await eventually(aborted, timeout=60, interval=0.5, what="the gRPC fault abort seen by the proxyless client")
