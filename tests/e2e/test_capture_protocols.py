"""Capture mode with ports of every kind, for real: two "pods" in network namespaces with `meshd iptables`
rules and real Envoys (UID 1337, INTERCEPTION_MODE REDIRECT) fed by meshd; an unmodified client dials
ClusterIPs.

- An HTTP service and a TCP service on the same port number (80): both reachable, told apart by their
  ClusterIPs (per-VIP chains on the port's listener), none refused;
- a service whose port says nothing (82): HTTP through it gets its VirtualService (a fault abort), raw TCP
  through it still reaches the app; on the server side the sniffed inbound port hands HTTP to the HTTP
  connection manager (its router's counters) and the rest to the TCP proxy.
Skipped, with the reason, where the machine forbids network namespaces or iptables."""

from __future__ import annotations

import json
import sys
from collections.abc import AsyncIterator
from typing import Any

import pytest

from tests.e2e.capture_lab import Lab
from tests.e2e.harness import eventually, free_port
from tests.e2e.test_capture_listeners import (
    SERVER_APP,
    CaptureMesh,
    _sidecar,
    _skip_without_lab,
    _stop,
    _workdir,
)

pytestmark = pytest.mark.e2e

MESH = """\
apiVersion: v1
kind: Pod
metadata:
  name: client
  namespace: default
  labels: {{app: client, security.istio.io/tlsMode: istio}}
  annotations: {{sidecar.istio.io/status: '{{}}'}}
status: {{podIP: {client}}}
---
apiVersion: v1
kind: Pod
metadata:
  name: server
  namespace: default
  labels: {{app: server, security.istio.io/tlsMode: istio}}
  annotations: {{sidecar.istio.io/status: '{{}}'}}
status: {{podIP: {server}}}
---
apiVersion: v1
kind: Service
metadata: {{name: web, namespace: default, creationTimestamp: "2024-01-01T00:00:00Z"}}
spec:
  clusterIP: {vip}.10
  ports: [{{name: http, port: 80, targetPort: 8080}}]
---
apiVersion: v1
kind: Service
metadata: {{name: echo, namespace: default, creationTimestamp: "2024-01-02T00:00:00Z"}}
spec:
  clusterIP: {vip}.11
  ports: [{{name: tcp-echo, port: 80, targetPort: 5555}}]
---
apiVersion: v1
kind: Service
metadata: {{name: auto, namespace: default}}
spec:
  clusterIP: {vip}.12
  ports: [{{name: app, port: 82, targetPort: 80}}]
---
apiVersion: v1
kind: Service
metadata: {{name: auto-tcp, namespace: default}}
spec:
  clusterIP: {vip}.13
  ports: [{{port: 83, targetPort: 7777}}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: web-1, namespace: default, labels: {{kubernetes.io/service-name: web}}}}
ports: [{{name: http, port: 8080}}]
endpoints: [{{addresses: [{server}], targetRef: {{kind: Pod, name: server, namespace: default}}}}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: echo-1, namespace: default, labels: {{kubernetes.io/service-name: echo}}}}
ports: [{{name: tcp-echo, port: 5555}}]
endpoints: [{{addresses: [{server}], targetRef: {{kind: Pod, name: server, namespace: default}}}}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: auto-1, namespace: default, labels: {{kubernetes.io/service-name: auto}}}}
ports: [{{name: app, port: 80}}]
endpoints: [{{addresses: [{server}], targetRef: {{kind: Pod, name: server, namespace: default}}}}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: auto-tcp-1, namespace: default, labels: {{kubernetes.io/service-name: auto-tcp}}}}
ports: [{{port: 7777}}]
endpoints: [{{addresses: [{server}], targetRef: {{kind: Pod, name: server, namespace: default}}}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: auto, namespace: default}}
spec:
  hosts: [auto]
  http:
  - match: [{{uri: {{prefix: /teapot}}}}]
    fault: {{abort: {{httpStatus: 418, percentage: {{value: 100}}}}}}
    route: [{{destination: {{host: auto}}}}]
  - route: [{{destination: {{host: auto}}}}]
"""

# urllib with a path and the Host the service's DNS name gives
HTTP_PATH = """
import json, sys, urllib.error, urllib.request
url, host = sys.argv[1], sys.argv[2]
request = urllib.request.Request(url, headers={"Host": host})
try:
    with urllib.request.urlopen(request, timeout=5) as r:
        print(json.dumps({"status": r.status, "body": json.loads(r.read())}))
except urllib.error.HTTPError as exc:
    print(json.dumps({"status": exc.code}))
except Exception as exc:
    print(json.dumps({"error": repr(exc)}))
"""


# raw bytes that cannot start an HTTP request line (http_inspector answers "not HTTP" at once; bytes that
# could, like a bare "hello", wait for more or for protocolDetectionTimeout, as in Istio)
RAW = r"""
import json, socket, sys
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5)
s.sendall(b"\x00\x01raw")
print(json.dumps({"data": s.recv(200).decode()}))
"""


async def _start() -> CaptureMesh:
    lab = Lab()
    workdir = _workdir()
    try:
        lab.create()
        client_ns, client_ip = lab.pod("client", capture=True)
        server_ns, server_ip = lab.pod("server", capture=True)
        vip = f"10.96.{lab.prefix.rsplit('.', 1)[1]}"
        (workdir / "config" / "mesh.yaml").write_text(MESH.format(client=client_ip, server=server_ip, vip=vip))
        xds_port, http_port = free_port(), free_port()
        meshd = [
            sys.executable, "-m", "meshd", "serve", "--config-dir", str(workdir / "config"), "--no-ca",
            "--xds-host", "0.0.0.0", "--xds-port", str(xds_port),
            "--http-host", "0.0.0.0", "--http-port", str(http_port), "--poll-interval", "0.1",
        ]  # fmt: skip
        await lab.spawn(lab.node, *meshd, log=str(workdir / "meshd.log"))
        await lab.spawn(server_ns, sys.executable, "-c", SERVER_APP, log=str(workdir / "app.log"))
        mesh = CaptureMesh(lab, workdir, http_port, client_ns, client_ip, server_ip, vip)
        await eventually(lambda: mesh.fetch(f"http://{lab.node_ip}:{http_port}/ready"), timeout=30, what="meshd")
        for namespace, pod, ip in ((client_ns, "client", client_ip), (server_ns, "server", server_ip)):
            await _sidecar(lab, workdir, namespace, pod, ip, xds_port)
        return mesh
    except BaseException:
        await _stop(lab, workdir)
        raise


@pytest.fixture
async def capture_mesh() -> AsyncIterator[CaptureMesh]:
    _skip_without_lab()
    mesh = await _start()
    try:
        yield mesh
    finally:
        await _stop(mesh.lab, mesh.workdir)


async def _http(mesh: CaptureMesh, url: str, host: str) -> dict[str, Any]:
    return dict(json.loads(await mesh.lab.python(mesh.client_ns, HTTP_PATH, url, host)))


async def test_tcp_and_http_services_on_one_port_and_sniffed_ports(capture_mesh: CaptureMesh) -> None:
    mesh = capture_mesh
    web = f"http://{mesh.vip}.10:80/"

    async def http_served() -> dict[str, Any] | None:
        answer = await _http(mesh, web, "web.default.svc.cluster.local")
        return answer if answer.get("status") == 200 else None

    await eventually(http_served, timeout=40, what="the HTTP service on port 80")
    # the TCP service on the same port number, by its own ClusterIP
    tcp = await mesh.call("tcp", f"{mesh.vip}.11", 80)
    assert tcp == {"data": "peer=127.0.0.6 port=5555"}, tcp
    assert await mesh.stat(mesh.client_ip, "cluster.outbound|80||echo.default.svc.cluster.local.upstream_cx_total")
    assert await mesh.stat(mesh.client_ip, "cluster.outbound|80||web.default.svc.cluster.local.upstream_rq_200")
    errors = json.loads(await mesh.fetch(f"http://127.0.0.1:{mesh.http_port}/debug/config_errors"))
    assert not [e for e in errors if e["severity"] == "error"], errors  # nothing refused

    # sniffed port 82: HTTP gets the VirtualService, and the server sidecar's HTTP chain (x-request-id)
    teapot = await _http(mesh, f"http://{mesh.vip}.12:82/teapot", "auto.default.svc.cluster.local:82")
    assert teapot.get("status") == 418, teapot
    plain = await _http(mesh, f"http://{mesh.vip}.12:82/", "auto.default.svc.cluster.local:82")
    assert plain.get("status") == 200 and plain["body"]["peer"] == "127.0.0.6", plain
    # the server sidecar detected HTTP on its sniffed port 80: its router answered (tcp_proxy counts no 200s)
    assert await mesh.stat(mesh.server_ip, "cluster.inbound|80||.upstream_rq_200") >= 1
    # raw TCP on a sniffed port: not HTTP, so the TCP proxy on both sides
    raw = json.loads(await mesh.lab.python(mesh.client_ns, RAW, f"{mesh.vip}.13", "83"))
    assert raw == {"data": "peer=127.0.0.6 port=7777"}, raw
    assert await mesh.stat(mesh.server_ip, "cluster.inbound|7777||.upstream_cx_total")
    status = json.loads(await mesh.fetch(f"http://127.0.0.1:{mesh.http_port}/debug/syncz"))
    assert all(t["nacked"] is None for c in status for t in c["types"].values()), status
