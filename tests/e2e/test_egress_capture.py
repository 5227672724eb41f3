"""Egress through a captured sidecar, for real: a client "pod" in a network namespace with Istio-shaped NAT rules
(`meshd iptables`) and a real Envoy (UID 1337, INTERCEPTION_MODE REDIRECT) fed by meshd; "external" hosts are
other namespaces serving TLS on 443 (a certificate per host), plain TCP on 9000 and HTTP on 80. The client
dials the hosts' IP addresses with the SNI (or Host) of the name it means, as an application that resolved it.

- REGISTRY_ONLY with an allow-list of ServiceEntries (resolution NONE): allowed SNI hosts pass to the address
  the client dialled, by SNI, several of them on 443 (no port collision), a wildcard host too; another SNI, or
  a destination no ServiceEntry names, is refused; a CIDR range in `addresses` is matched as a range.
- HTTP by Host on port 80 (allow-listed Host passes, another gets the 502 of `block_all`).
- ALLOW_ANY: what was refused passes through to its original destination.
- The client's Sidecar `ingress` port 8088: a caller outside the pod, captured into virtualInbound, reaches the
  app listening on 127.0.0.1:9088 only.
Skipped, with the reason, without root, `ip netns` or iptables."""

from __future__ import annotations

import ipaddress
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
from tests.certs import Authority
from tests.e2e.capture_lab import PROXY_UID, Lab, lab_unavailable
from tests.e2e.harness import eventually, free_port

pytestmark = pytest.mark.e2e

EXTERNAL = """
import http.server, socketserver, ssl, sys, threading
name, cert, key = sys.argv[1], sys.argv[2], sys.argv[3]
class Named(socketserver.BaseRequestHandler):
    def handle(self):
        self.request.sendall(f"{name}\\n".encode())
class Web(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = f"{name} {self.headers['Host']}".encode()
        self.send_response(200)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
class TlsServer(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    def get_request(self):
        sock, addr = super().get_request()
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert, key)
        return context.wrap_socket(sock, server_side=True), addr
socketserver.ThreadingTCPServer.allow_reuse_address = True
servers = [TlsServer(("0.0.0.0", 443), Named), socketserver.ThreadingTCPServer(("0.0.0.0", 9000), Named),
           http.server.ThreadingHTTPServer(("0.0.0.0", 80), Web)]
for server in servers:
    threading.Thread(target=server.serve_forever, daemon=True).start()
print("ready", flush=True)
threading.Event().wait()
"""

CLIENT = """
import json, socket, ssl, sys, urllib.request
kind, host, port, name, ca = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5]
try:
    if kind == "tls":
        context = ssl.create_default_context(cafile=ca)
        with socket.create_connection((host, port), timeout=5) as raw:
            with context.wrap_socket(raw, server_hostname=name) as s:
                print(json.dumps({"reply": s.recv(200).decode().strip()}))
    elif kind == "tcp":
        with socket.create_connection((host, port), timeout=5) as s:
            data = s.recv(200).decode().strip()
            print(json.dumps({"reply": data} if data else {"error": "closed"}))
    else:
        request = urllib.request.Request(f"http://{host}:{port}/", headers={"Host": name})
        with urllib.request.urlopen(request, timeout=5) as r:
            print(json.dumps({"reply": r.read().decode(), "status": r.status}))
except Exception as exc:
    print(json.dumps({"error": repr(exc)}))
"""

LOOPBACK_APP = """
import socketserver, sys
class Named(socketserver.BaseRequestHandler):
    def handle(self):
        self.request.sendall(f"{sys.argv[1]}\\n".encode())
socketserver.ThreadingTCPServer.allow_reuse_address = True
socketserver.ThreadingTCPServer(("127.0.0.1", 9088), Named).serve_forever()
"""

HOSTS = {"api": "api.example.test", "oth": "other.example.test", "wld": "foo.wild.test", "far": "far.example.test"}


def _mesh(client_ip: str, cidr: str, mode: str) -> str:
    return f"""\
apiVersion: v1
kind: Pod
metadata:
  name: client
  namespace: default
  labels: {{app: client}}
  annotations: {{sidecar.istio.io/status: '{{}}'}}
status: {{podIP: {client_ip}}}
---
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {{name: default, namespace: default}}
spec:
  outboundTrafficPolicy: {{mode: {mode}}}
  ingress:
  - port: {{number: 8088, protocol: TCP, name: tcp-custom}}
    defaultEndpoint: 127.0.0.1:9088
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: api, namespace: default}}
spec:
  hosts: [api.example.test]
  ports: [{{number: 443, name: tls, protocol: TLS}}, {{number: 80, name: http, protocol: HTTP}}]
  resolution: NONE
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: other, namespace: default}}
spec:
  hosts: [other.example.test]
  ports: [{{number: 443, name: https, protocol: HTTPS}}]
  resolution: NONE
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: wild, namespace: default}}
spec:
  hosts: ["*.wild.test"]
  ports: [{{number: 443, name: tls, protocol: TLS}}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: range, namespace: default}}
spec:
  hosts: [range.internal]
  addresses: [{cidr}]
  ports: [{{number: 9000, name: tcp, protocol: TCP}}]
  resolution: NONE
"""


@dataclass
class Egress:
    lab: Lab
    workdir: pathlib.Path
    http_port: int
    client_ns: str
    client_ip: str
    ips: dict[str, str]
    cidr: str

    async def call(self, kind: str, pod: str, port: int, name: str = "") -> dict[str, Any]:
        ca = str(self.workdir / "ca.pem")
        out = await self.lab.python(self.client_ns, CLIENT, kind, self.ips[pod], str(port), name or "-", ca)
        return dict(json.loads(out))

    async def debug(self, path: str) -> Any:
        code = f"import urllib.request;print(urllib.request.urlopen('http://127.0.0.1:{self.http_port}{path}').read().decode())"
        return json.loads(await self.lab.python(self.lab.node, code))

    async def ready(self) -> bool:
        code = f"import urllib.request;print(urllib.request.urlopen('http://127.0.0.1:{self.http_port}/ready').status)"
        return (await self.lab.python(self.lab.node, code)).strip() == "200"

    def write(self, mode: str) -> None:
        (self.workdir / "config" / "mesh.yaml").write_text(_mesh(self.client_ip, self.cidr, mode))


async def _sidecar(lab: Lab, workdir: pathlib.Path, namespace: str, ip: str, xds_port: int) -> None:
    bootstrap = build_bootstrap(
        node_id=f"sidecar~{ip}~client.default~default.svc.cluster.local",
        cluster="client.default",
        xds_host=lab.node_ip,
        xds_port=xds_port,
        admin_host=ip,
        admin_port=15000,
        delta=False,
        extra_metadata={"INTERCEPTION_MODE": "REDIRECT"},
    )
    path = workdir / "client.json"
    path.write_text(json.dumps(bootstrap))
    path.chmod(0o644)
    envoy = (default_envoy_path(), "-c", str(path), "--disable-hot-restart", "--concurrency", "1", "-l", "warning")
    await lab.spawn(namespace, *envoy, uid=PROXY_UID, log=str(workdir / "client.envoy.log"))


def _workdir() -> pathlib.Path:
    workdir = pathlib.Path(tempfile.mkdtemp(prefix="megr-", dir="/tmp"))
    workdir.chmod(0o755)  # the proxy runs as UID 1337 and reads its bootstrap here
    (workdir / "config").mkdir()
    return workdir


@pytest.fixture
async def egress() -> AsyncIterator[Egress]:
    reason = lab_unavailable()
    if reason is not None:
        pytest.skip(f"capture-mode test needs network namespaces and iptables: {reason}")
    lab = Lab()
    workdir = _workdir()
    try:
        lab.create()
        client_ns, client_ip = lab.pod("client", capture=True)
        loopback_app = [LOOPBACK_APP, "client-app"]
        await lab.spawn(client_ns, sys.executable, "-c", *loopback_app, log=str(workdir / "client-app.log"))
        authority = Authority()
        (workdir / "ca.pem").write_bytes(authority.pem)
        ips: dict[str, str] = {}
        for pod, host in HOSTS.items():
            namespace, ips[pod] = lab.pod(pod, capture=False)
            cert, key = authority.issue(host, sans=(host,)).write(workdir, pod)
            await lab.spawn(
                namespace, sys.executable, "-c", EXTERNAL, pod, str(cert), str(key), log=str(workdir / f"{pod}.log")
            )
        # a range holding oth and wld but neither api nor far
        cidr = str(ipaddress.ip_network(f"{ips['oth']}/31", strict=False))
        assert ipaddress.ip_address(ips["wld"]) in ipaddress.ip_network(cidr), (cidr, ips)
        mesh = Egress(lab, workdir, free_port(), client_ns, client_ip, ips, cidr)
        mesh.write("REGISTRY_ONLY")
        xds_port = free_port()
        meshd = [
            sys.executable, "-m", "meshd", "serve", "--config-dir", str(workdir / "config"), "--no-ca",
            "--xds-host", "0.0.0.0", "--xds-port", str(xds_port),
            "--http-host", "0.0.0.0", "--http-port", str(mesh.http_port), "--poll-interval", "0.1",
        ]  # fmt: skip
        await lab.spawn(lab.node, *meshd, log=str(workdir / "meshd.log"))
        await eventually(mesh.ready, timeout=30, what="meshd")
        await _sidecar(lab, workdir, client_ns, client_ip, xds_port)
        yield mesh
    finally:
        await lab.close()
        if os.environ.get("MESHD_KEEP_CAPTURE_LOGS") is None:
            shutil.rmtree(workdir)


async def test_registry_only_allows_listed_hosts_by_sni_range_and_host_then_allow_any_passes_the_rest(
    egress: Egress,
) -> None:
    mesh = egress

    async def allowed() -> bool:
        return (await mesh.call("tls", "api", 443, "api.example.test")).get("reply") == "api"

    await eventually(allowed, timeout=40, what="the allow-listed TLS host through the captured sidecar")
    # several TLS ServiceEntries share 443, each matched by its SNI (a wildcard too), to the dialled address
    assert await mesh.call("tls", "oth", 443, "other.example.test") == {"reply": "oth"}
    assert await mesh.call("tls", "wld", 443, "foo.wild.test") == {"reply": "wld"}
    # another SNI on 443 is refused, even to an allowed host's address
    assert "error" in await mesh.call("tls", "far", 443, "far.example.test")
    assert "error" in await mesh.call("tls", "api", 443, "far.example.test")
    # the CIDR range of a ServiceEntry: the addresses inside pass, the others are refused
    assert await mesh.call("tcp", "oth", 9000) == {"reply": "oth"}
    assert await mesh.call("tcp", "wld", 9000) == {"reply": "wld"}
    assert "error" in await mesh.call("tcp", "far", 9000)
    assert "error" in await mesh.call("tcp", "api", 9000)
    # HTTP by Host on 80: the allow-listed Host passes, another gets block_all's 502
    assert (await mesh.call("http", "api", 80, "api.example.test")).get("reply") == "api api.example.test"
    assert "502" in (await mesh.call("http", "api", 80, "far.example.test")).get("error", "")

    errors = await mesh.debug("/debug/config_errors")
    assert errors == [], errors  # two TLS ServiceEntries on 443 are no collision
    status = await mesh.debug("/debug/syncz")
    assert len(status) == 1 and all(t["nacked"] is None for c in status for t in c["types"].values()), status

    # the Sidecar's ingress port, from outside the pod: captured into virtualInbound, to the loopback app
    code = (
        f"import socket;s=socket.create_connection(('{mesh.client_ip}', 8088), timeout=5);print(s.recv(100).decode())"
    )
    assert (await mesh.lab.python(mesh.lab.node, code)).strip() == "client-app"

    mesh.write("ALLOW_ANY")

    async def passed() -> bool:
        return (await mesh.call("tls", "far", 443, "far.example.test")).get("reply") == "far"

    await eventually(passed, timeout=20, what="ALLOW_ANY to pass an unknown TLS host through")
    assert await mesh.call("tcp", "far", 9000) == {"reply": "far"}
    assert (await mesh.call("http", "api", 80, "far.example.test")).get("reply") == "api far.example.test"
    assert await mesh.call("tls", "api", 443, "api.example.test") == {"reply": "api"}
