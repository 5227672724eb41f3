"""Capture mode for real: two "pods" in network namespaces with Istio-shaped NAT rules, each with a real
Envoy (UID 1337, node metadata INTERCEPTION_MODE: REDIRECT) fed by meshd. An unmodified client calls a
service's ClusterIP; iptables redirects the call to the client sidecar's virtualOutbound (15001), meshd's
per-port listener routes it to the server pod's own address, where iptables redirects it to the server
sidecar's virtualInbound (15006), which hands it to the app from 127.0.0.6. Unknown destinations pass
through (ALLOW_ANY) until a Sidecar says REGISTRY_ONLY. Skipped, with the reason, where the machine
forbids network namespaces or iptables."""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import sys
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest

from meshd.agent.bootstrap import build_bootstrap
from meshd.agent.envoy import default_envoy_path
from tests.e2e.capture_lab import PROXY_UID, Lab, lab_unavailable
from tests.e2e.harness import eventually, free_port

pytestmark = pytest.mark.e2e

SERVER_APP = """
import http.server, json, socketserver, threading
class Http(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = json.dumps({"peer": self.client_address[0], "headers": dict(self.headers)}).encode()
        self.send_response(200)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
class Tcp(socketserver.BaseRequestHandler):
    def handle(self):
        self.request.recv(100)
        self.request.sendall(f"peer={self.client_address[0]} port={self.server.server_address[1]}".encode())
socketserver.ThreadingTCPServer.allow_reuse_address = True
for port in (5555, 7777):
    server = socketserver.ThreadingTCPServer(("0.0.0.0", port), Tcp)
    threading.Thread(target=server.serve_forever, daemon=True).start()
web = http.server.ThreadingHTTPServer(("0.0.0.0", 80), Http)  # a port no service of the server's has
threading.Thread(target=web.serve_forever, daemon=True).start()
http.server.ThreadingHTTPServer(("0.0.0.0", 8080), Http).serve_forever()
"""

CLIENT = """
import json, socket, sys, urllib.request
kind, host, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
try:
    if kind == "http":
        with urllib.request.urlopen(f"http://{host}:{port}/", timeout=5) as r:
            print(json.dumps({"status": r.status, "headers": dict(r.headers), "body": json.loads(r.read())}))
    else:
        s = socket.create_connection((host, port), timeout=5)
        s.sendall(b"hello")
        print(json.dumps({"data": s.recv(200).decode()}))
except Exception as exc:
    print(json.dumps({"error": repr(exc)}))
"""

FETCH = """
import sys, urllib.request
with urllib.request.urlopen(sys.argv[1], timeout=5) as r:
    print(r.read().decode())
"""

MESH = """\
apiVersion: v1
kind: Pod
metadata:
  name: client
  namespace: default
  labels: {{app: client, security.istio.io/tlsMode: istio}}
  annotations: {{sidecar.istio.io/status: '{{}}'}}
spec: {{serviceAccountName: client}}
status: {{podIP: {client}}}
---
apiVersion: v1
kind: Pod
metadata:
  name: server
  namespace: default
  labels: {{app: server, security.istio.io/tlsMode: istio}}
  annotations: {{sidecar.istio.io/status: '{{}}'}}
spec: {{serviceAccountName: server}}
status: {{podIP: {server}}}
---
apiVersion: v1
kind: Service
metadata: {{name: server, namespace: default}}
spec:
  clusterIP: {vip}.10
  ports: [{{name: http, port: 80, targetPort: 8080}}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: server-1, namespace: default, labels: {{kubernetes.io/service-name: server}}}}
addressType: IPv4
ports: [{{name: http, port: 8080}}]
endpoints:
- addresses: [{server}]
  targetRef: {{kind: Pod, name: server, namespace: default}}
---
apiVersion: v1
kind: Service
metadata: {{name: echo, namespace: default}}
spec:
  clusterIP: {vip}.11
  ports: [{{name: tcp-echo, port: 5555, targetPort: 5555}}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: echo-1, namespace: default, labels: {{kubernetes.io/service-name: echo}}}}
addressType: IPv4
ports: [{{name: tcp-echo, port: 5555}}]
endpoints:
- addresses: [{server}]
  targetRef: {{kind: Pod, name: echo, namespace: default}}
"""

REGISTRY_ONLY = """\
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {name: default, namespace: default}
spec:
  outboundTrafficPolicy: {mode: REGISTRY_ONLY}
"""


STRICT_SERVER = """\
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: server, namespace: default}
spec:
  selector: {matchLabels: {app: server}}
  mtls: {mode: STRICT}
"""

PERMISSIVE_8080 = """\
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: server, namespace: default}
spec:
  selector: {matchLabels: {app: server}}
  mtls: {mode: STRICT}
  portLevelMtls:
    8080: {mode: PERMISSIVE}
"""


@dataclass
class CaptureMesh:
    lab: Lab
    workdir: pathlib.Path
    http_port: int
    client_ns: str
    client_ip: str
    server_ip: str
    vip: str

    async def call(self, kind: str, host: str, port: int) -> dict[str, Any]:
        out = await self.lab.python(self.client_ns, CLIENT, kind, host, str(port))
        return dict(json.loads(out))

    async def fetch(self, url: str) -> str:
        return await self.lab.python(self.lab.node, FETCH, url)

    async def stat(self, ip: str, name: str) -> int:
        text = await self.fetch(f"http://{ip}:15000/stats")
        values = dict(line.rsplit(": ", 1) for line in text.splitlines() if ": " in line)
        return int(values.get(name, "0"))


async def _sidecar(lab: Lab, workdir: pathlib.Path, namespace: str, pod: str, ip: str, xds_port: int) -> None:
    bootstrap = build_bootstrap(
        node_id=f"sidecar~{ip}~{pod}.default~default.svc.cluster.local",
        cluster=f"{pod}.default",
        xds_host=lab.node_ip,
        xds_port=xds_port,
        admin_host=ip,
        admin_port=15000,
        delta=False,
        extra_metadata={"INTERCEPTION_MODE": "REDIRECT"},
    )
    path = workdir / f"{pod}.json"
    path.write_text(json.dumps(bootstrap))
    path.chmod(0o644)
    envoy = (default_envoy_path(), "-c", str(path), "--disable-hot-restart", "--concurrency", "1", "-l", "warning")
    await lab.spawn(namespace, *envoy, uid=PROXY_UID, log=str(workdir / f"{pod}.envoy.log"))


def _workdir() -> pathlib.Path:
    workdir = pathlib.Path(tempfile.mkdtemp(prefix="mcap-", dir="/tmp"))  # short: the SDS socket path
    workdir.chmod(0o755)  # the proxies run as UID 1337 and read their bootstraps here
    (workdir / "config").mkdir()
    return workdir


def _agent_workdir(workdir: pathlib.Path, pod: str) -> pathlib.Path:
    """What `meshd agent` of `pod` reads: its CA token and meshd's root."""
    own = workdir / pod
    own.mkdir()
    (own / "token").write_text(f"tok-{pod}")
    shutil.copy(workdir / "ca" / "root-cert.pem", own / "root-cert.pem")
    return own


async def _agent(lab: Lab, workdir: pathlib.Path, namespace: str, pod: str, ip: str, secure_port: int) -> None:
    """`meshd agent --interception-mode REDIRECT` in the pod, with GID 1337 (its CSR and xDS traffic and its
    Envoy's are not captured, as with Istio's proxy GID rule; its UID stays root to run this venv's Python)."""
    own = _agent_workdir(workdir, pod)
    agent = (
        sys.executable, "-m", "meshd", "agent", "--pod", pod, "--namespace", "default", "--ip", ip,
        "--service-account", pod, "--labels", f"app={pod}", "--interception-mode", "REDIRECT",
        "--xds-address", f"{lab.node_ip}:{secure_port}", "--token-file", "token", "--root-cert", "root-cert.pem",
        "--workdir", str(own), "--envoy-concurrency", "1", "--restart-base", "0.2",
    )  # fmt: skip
    await lab.spawn(namespace, *agent, gid=PROXY_UID, log=str(workdir / f"{pod}.agent.log"))


async def _start(*, mtls: bool, extra_yaml: str = "") -> CaptureMesh:
    lab = Lab()
    workdir = _workdir()
    config = workdir / "config"
    mesh: CaptureMesh | None = None
    try:
        lab.create()
        client_ns, client_ip = lab.pod("client", capture=True)
        server_ns, server_ip = lab.pod("server", capture=True)
        vip = f"10.96.{lab.prefix.rsplit('.', 1)[1]}"
        (config / "mesh.yaml").write_text(MESH.format(client=client_ip, server=server_ip, vip=vip) + extra_yaml)
        xds_port, http_port, secure_port = free_port(), free_port(), free_port()
        meshd = [
            sys.executable, "-m", "meshd", "serve", "--config-dir", str(config),
            "--xds-host", "0.0.0.0", "--xds-port", str(xds_port),
            "--http-host", "0.0.0.0", "--http-port", str(http_port), "--poll-interval", "0.1",
        ]  # fmt: skip
        if mtls:
            (workdir / "tokens.yaml").write_text(
                "tok-client: {namespace: default, serviceAccount: client}\n"
                "tok-server: {namespace: default, serviceAccount: server}\n"
            )
            meshd += ["--ca-token-file", str(workdir / "tokens.yaml"), "--ca-dir", str(workdir / "ca")]
            meshd += ["--secure-host", "0.0.0.0", "--secure-port", str(secure_port)]
        else:
            meshd.append("--no-ca")
        await lab.spawn(lab.node, *meshd, log=str(workdir / "meshd.log"))
        await lab.spawn(server_ns, sys.executable, "-c", SERVER_APP, log=str(workdir / "app.log"))
        mesh = CaptureMesh(lab, workdir, http_port, client_ns, client_ip, server_ip, vip)
        await eventually(lambda: mesh.fetch(f"http://{lab.node_ip}:{http_port}/ready"), timeout=30, what="meshd")
        for namespace, pod, ip in ((client_ns, "client", client_ip), (server_ns, "server", server_ip)):
            if mtls:
                await _agent(lab, workdir, namespace, pod, ip, secure_port)
            else:
                await _sidecar(lab, workdir, namespace, pod, ip, xds_port)
        return mesh
    except BaseException:
        await _stop(lab, workdir)
        raise


async def _stop(lab: Lab, workdir: pathlib.Path) -> None:
    await lab.close()
    if os.environ.get("MESHD_KEEP_CAPTURE_LOGS") is None:
        shutil.rmtree(workdir)


def _skip_without_lab() -> None:
    reason = lab_unavailable()
    if reason is not None:
        pytest.skip(f"capture-mode test needs network namespaces and iptables: {reason}")


@pytest.fixture
async def capture_mesh() -> AsyncIterator[CaptureMesh]:
    _skip_without_lab()
    mesh = await _start(mtls=False)
    try:
        yield mesh
    finally:
        await _stop(mesh.lab, mesh.workdir)


@pytest.fixture
async def mtls_mesh() -> AsyncIterator[CaptureMesh]:
    _skip_without_lab()
    mesh = await _start(mtls=True, extra_yaml=STRICT_SERVER)
    try:
        yield mesh
    finally:
        await _stop(mesh.lab, mesh.workdir)


async def test_captured_traffic_flows_through_both_sidecars(capture_mesh: CaptureMesh) -> None:
    mesh = capture_mesh

    async def served() -> dict[str, Any] | None:
        answer = await mesh.call("http", f"{mesh.vip}.10", 80)
        return answer if answer.get("status") == 200 else None

    answer = await eventually(served, timeout=40, what="HTTP through the capture listeners")
    # the server sidecar's inbound cluster delivered it from 127.0.0.6 (the app saw no client address)
    assert answer["body"]["peer"] == "127.0.0.6", answer
    assert "x-request-id" in {k.lower() for k in answer["body"]["headers"]}  # an Envoy HCM handled it
    # the client sidecar routed it: the per-port listener's route to the service cluster, not passthrough
    route_stat = "cluster.outbound|80||server.default.svc.cluster.local.upstream_rq_200"
    assert await mesh.stat(mesh.client_ip, route_stat) >= 1
    assert await mesh.stat(mesh.server_ip, "cluster.inbound|8080||.upstream_rq_200") >= 1

    # TCP service by ClusterIP: per-port listener, chain matched by the VIP, inbound TCP chain
    tcp = await mesh.call("tcp", f"{mesh.vip}.11", 5555)
    assert tcp == {"data": "peer=127.0.0.6 port=5555"}, tcp
    assert await mesh.stat(mesh.client_ip, "cluster.outbound|5555||echo.default.svc.cluster.local.upstream_cx_total")
    assert await mesh.stat(mesh.server_ip, "cluster.inbound|5555||.upstream_cx_total")

    # ALLOW_ANY: a destination the registry does not know passes through both sidecars
    unknown = await mesh.call("tcp", mesh.server_ip, 7777)
    assert unknown == {"data": "peer=127.0.0.6 port=7777"}, unknown
    assert await mesh.stat(mesh.client_ip, "cluster.PassthroughCluster.upstream_cx_total") >= 1
    assert await mesh.stat(mesh.server_ip, "cluster.InboundPassthroughCluster.upstream_cx_total") >= 1
    # ... and so does HTTP to an unknown Host on a port the mesh routes (80): the `allow_any` virtual host
    external = await mesh.call("http", mesh.server_ip, 80)
    assert external.get("status") == 200 and external["body"]["peer"] == "127.0.0.6", external
    assert await mesh.stat(mesh.client_ip, "cluster.PassthroughCluster.upstream_rq_200") >= 1

    # no sidecar NACKed anything meshd sent
    status = json.loads(await mesh.fetch(f"http://127.0.0.1:{mesh.http_port}/debug/syncz"))
    assert len(status) == 2 and all(t["nacked"] is None for c in status for t in c["types"].values()), status

    # REGISTRY_ONLY: the unknown destination is black-holed, the service still answers
    (mesh.workdir / "config" / "sidecar.yaml").write_text(REGISTRY_ONLY)

    async def refused() -> bool:
        return not (await mesh.call("tcp", mesh.server_ip, 7777)).get("data")

    await eventually(refused, timeout=20, what="REGISTRY_ONLY black-holes unknown destinations")
    assert await mesh.stat(mesh.client_ip, "cluster.BlackHoleCluster.upstream_cx_none_healthy") >= 1
    blocked = await mesh.call("http", mesh.server_ip, 80)
    assert "502" in blocked.get("error", ""), blocked  # the `block_all` virtual host
    assert (await mesh.call("http", f"{mesh.vip}.10", 80)).get("status") == 200


async def test_peer_authentication_per_port_on_captured_inbound(mtls_mesh: CaptureMesh) -> None:
    """Sidecars run by `meshd agent --interception-mode REDIRECT` with certificates from meshd's CA: the
    captured call arrives over mTLS (the app sees the caller's SPIFFE identity); the server's STRICT
    policy refuses a plaintext caller without a sidecar, until port 8080 is made PERMISSIVE."""
    mesh = mtls_mesh

    async def served() -> dict[str, Any] | None:
        answer = await mesh.call("http", f"{mesh.vip}.10", 80)
        return answer if answer.get("status") == 200 else None

    answer = await eventually(served, timeout=60, what="HTTP over mTLS through the capture listeners")
    headers = {k.lower(): v for k, v in answer["body"]["headers"].items()}
    assert "URI=spiffe://cluster.local/ns/default/sa/client" in headers["x-forwarded-client-cert"], headers
    assert answer["body"]["peer"] == "127.0.0.6"
    tcp = await mesh.call("tcp", f"{mesh.vip}.11", 5555)  # STRICT TCP chain, auto mTLS from the client
    assert tcp == {"data": "peer=127.0.0.6 port=5555"}, tcp

    # a caller without a sidecar (the node namespace: not captured on its way out) is refused by STRICT
    plain = mesh.lab.python(mesh.lab.node, CLIENT, "http", mesh.server_ip, "8080")
    assert "error" in json.loads(await plain), "STRICT must refuse plaintext"

    (mesh.workdir / "config" / "mesh.yaml").write_text(
        (mesh.workdir / "config" / "mesh.yaml").read_text().replace(STRICT_SERVER, "---\n" + PERMISSIVE_8080)
    )

    async def admitted() -> bool:
        answer = json.loads(await mesh.lab.python(mesh.lab.node, CLIENT, "http", mesh.server_ip, "8080"))
        return answer.get("status") == 200

    await eventually(admitted, timeout=20, what="port 8080 PERMISSIVE admits plaintext")
    # the other port stays STRICT, and the meshed client still goes over mTLS
    refused = json.loads(await mesh.lab.python(mesh.lab.node, CLIENT, "tcp", mesh.server_ip, "5555"))
    assert "peer=" not in refused.get("data", ""), refused  # a TLS alert or a reset, never the app
    again = await mesh.call("http", f"{mesh.vip}.10", 80)
    assert "spiffe://cluster.local/ns/default/sa/client" in str(again["body"]["headers"]), again
    status = json.loads(await mesh.fetch(f"http://127.0.0.1:{mesh.http_port}/debug/syncz"))
    assert len(status) == 2 and all(t["nacked"] is None for c in status for t in c["types"].values()), status
