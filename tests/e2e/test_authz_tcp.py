"""AuthorizationPolicy on TCP traffic, Istio's TCP task, through captured sidecars in network namespaces
(`meshd iptables`, `meshd agent` sidecars as UID 1337 with certificates from meshd's CA): an unmodified
client connects to `tcp-echo` (ports 9000 and 9001 declared by its Service, 9002 not: the inbound
passthrough chain). The network RBAC filter decides per connection; a denied connection is closed before
the app answers (the client reads nothing).

- ALLOW by port and caller principal (mTLS identity): 9000 answers, 9001 and the undeclared 9002 do not;
- an ALLOW rule with an HTTP-only field (methods) is left out on TCP: it allows nothing on 9001;
- a DENY rule with an HTTP-only field (paths) is broadened on TCP: it denies all of its port;
- deleting the policies lets every port answer again.
`meshd explain` says the same for each port before the connections are tried (the network RBAC decision
and the policy that made it; the PeerAuthentication mode: the mesh default)."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio

from tests.e2e.agents import write_ca_tokens
from tests.e2e.authz_helpers import converge, snapshot
from tests.e2e.harness import eventually, logs_on_failure
from tests.e2e.netns import Namespace
from tests.e2e.test_capture_mesh import TOKENS, CaptureMesh, capture_mode_available

pytestmark = [pytest.mark.e2e, pytest.mark.asyncio(loop_scope="module")]

CLUSTER_IP = "10.96.71.10"
CONFIG = """\
apiVersion: v1
kind: Service
metadata: {{name: tcp-echo, namespace: default}}
spec:
  clusterIP: {cluster_ip}
  selector: {{app: tcp-echo}}
  ports: [{{name: tcp, port: 9000}}, {{name: tcp-other, port: 9001}}]
---
apiVersion: v1
kind: Pod
metadata:
  name: tcp-echo
  namespace: default
  labels: {{app: tcp-echo, security.istio.io/tlsMode: istio}}
  annotations: {{sidecar.istio.io/interceptionMode: REDIRECT}}
spec: {{serviceAccountName: tcp-echo}}
status: {{podIP: {echo_ip}}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: tcp-echo-1, namespace: default, labels: {{kubernetes.io/service-name: tcp-echo}}}}
addressType: IPv4
ports: [{{name: tcp, port: 9000}}, {{name: tcp-other, port: 9001}}]
endpoints:
- addresses: [{echo_ip}]
  targetRef: {{kind: Pod, name: tcp-echo, namespace: default}}
"""
TOKENS_EXTRA = {"tok-tcp-echo": ("default", "tcp-echo")}
# tcp-echo as Istio's sample: client first, it answers each line it reads (Envoy's network RBAC decides on the
# client's first bytes; a server-first app's greeting would reach a denied client before the close)
ECHO = """
import asyncio, json, sys

async def main(ports):
    def handler(port):
        async def handle(reader, writer):
            line = await reader.readline()
            writer.write((json.dumps({"listener": port, "echo": line.decode().strip()}) + "\\n").encode())
            await writer.drain()
            writer.close()
        return handle
    servers = [await asyncio.start_server(handler(p), "0.0.0.0", p) for p in ports]
    print("ready", flush=True)
    await asyncio.gather(*(s.serve_forever() for s in servers))

asyncio.run(main([int(p) for p in sys.argv[1:]]))
"""
# an unmodified client that writes a line, then prints what it reads (nothing: the connection was closed)
CLIENT_FIRST = """
import socket, sys
try:
    with socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5) as s:
        s.sendall(b"hello\\n")
        data = b""
        while not data.endswith(b"\\n"):
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
except OSError:
    data = b""
print(data.decode().strip())
"""


class TcpMesh:
    def __init__(self, capture: CaptureMesh, client: Namespace, echo: Namespace, echo_agent: Any) -> None:
        self.capture, self.client, self.echo, self.echo_agent = capture, client, echo, echo_agent

    async def answers(self, port: int) -> bool:
        """Whether tcp-echo answers a connection from the client (the declared ports via the ClusterIP, 9002
        at the pod's address). The client speaks first: the inbound side tells mTLS from plaintext by the
        first bytes (TLS inspection), as for any PERMISSIVE port."""
        host = CLUSTER_IP if port in (9000, 9001) else self.echo.ip
        done = await self.client.run(sys.executable, "-c", CLIENT_FIRST, host, str(port), check=False)
        reply = done.stdout.strip()
        if not reply:
            return False
        answer = json.loads(reply)
        return bool(answer == {"listener": port, "echo": "hello"})

    async def ports(self) -> dict[int, bool]:
        return {port: await self.answers(port) for port in (9000, 9001, 9002)}

    async def explain(self, port: int) -> dict[str, Any]:
        """`meshd explain` from the client to tcp-echo's declared port, as the client's identity."""
        assert self.capture.meshd is not None
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "meshd", "explain", "--from", "client.default",
            "--to", f"tcp-echo.default.svc.cluster.local:{port}", "--from-identity", CLIENT_ID,
            "--xds-address", f"{self.capture.lab.node.ip}:{self.capture.meshd.xds_port}", "-o", "json",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        out, err = await asyncio.wait_for(proc.communicate(), 60)
        assert proc.returncode == 0, err.decode()
        found: dict[str, Any] = json.loads(out)
        return {s["step"]: s["choice"] for s in found["steps"]} | {"why": found["steps"], "outcome": found["outcome"]}

    async def apply(self, text: str, policies: set[str]) -> None:
        assert self.capture.meshd is not None
        before = await snapshot(self.capture.meshd, "tcp-echo.default")
        await asyncio.to_thread((self.capture.config_dir / "authz.yaml").write_text, text)
        await converge(self.capture.meshd, "tcp-echo.default", policies, before=before, envoy=self.echo_agent)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def tcp(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[TcpMesh]:
    reason = capture_mode_available()
    if reason:
        pytest.skip(reason)
    work = tmp_path_factory.mktemp("authz-tcp")
    async with logs_on_failure(CaptureMesh(work)) as capture:
        await capture.start()
        write_ca_tokens(work / "tokens.yaml", {**TOKENS, **TOKENS_EXTRA})  # the echo pod's identity too
        assert capture.meshd is not None
        echo_ip = f"{capture.lab.prefix}.3"  # the lab's second pod
        capture.config_dir.mkdir()
        (capture.config_dir / "tcp-echo.yaml").write_text(CONFIG.format(cluster_ip=CLUSTER_IP, echo_ip=echo_ip))
        (capture.config_dir / "authz.yaml").write_text("")
        await capture.meshd.start()
        client, _ = await capture.pod("client", token="tok-client", service_account="client", labels="app=client")
        echo, echo_agent = await capture.pod(
            "tcp-echo", token="tok-tcp-echo", service_account="tcp-echo", labels="app=tcp-echo"
        )
        assert echo.ip == echo_ip
        proc = await capture.lab.spawn(echo, sys.executable, "-c", ECHO, "9000", "9001", "9002")
        assert proc.stdout is not None and await proc.stdout.readline() == b"ready\n"
        mesh = TcpMesh(capture, client, echo, echo_agent)

        async def all_answer() -> bool:
            return await mesh.ports() == {9000: True, 9001: True, 9002: True}

        await eventually(all_answer, timeout=30, what="tcp-echo answering on every port")
        yield mesh


ALLOW = """\
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: tcp-policy, namespace: default}
spec:
  selector: {matchLabels: {app: tcp-echo}}
  action: ALLOW
  rules:
  - from: [{source: {principals: [cluster.local/ns/default/sa/client]}}]
    to: [{operation: {ports: ["9000"]}}]
  - to: [{operation: {methods: [GET], ports: ["9001"]}}]
"""
DENY = """\
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: tcp-deny, namespace: default}
spec:
  selector: {matchLabels: {app: tcp-echo}}
  action: DENY
  rules:
  - to: [{operation: {paths: [/admin], ports: ["9000"]}}]
"""


CLIENT_ID = "spiffe://cluster.local/ns/default/sa/client"
CLOSED = "connection closed by RBAC (the client reads nothing)"


async def test_tcp_allow_by_port_and_principal_http_fields_and_deletion(tcp: TcpMesh) -> None:
    await tcp.apply(ALLOW, {"default/tcp-policy"})
    allowed, refused = await tcp.explain(9000), await tcp.explain(9001)
    assert allowed["authorization"] == "allowed by AuthorizationPolicy default/tcp-policy (rule 0)", allowed
    assert allowed["peer auth"] == f"PERMISSIVE: mutual TLS as {CLIENT_ID}", allowed
    assert "set by mesh default" in str(allowed["why"]) and allowed["outcome"] == "forwarded as TCP"
    assert refused["authorization"] == "denied: no ALLOW rule matches", refused
    assert refused["outcome"] == f"{CLOSED} (no ALLOW policy matches)"
    # 9001: its only rule has an HTTP-only field, left out on TCP; 9002: undeclared, no rule allows it
    assert await tcp.ports() == {9000: True, 9001: False, 9002: False}
    await tcp.apply(ALLOW + DENY, {"default/tcp-policy", "default/tcp-deny"})
    denied = await tcp.explain(9000)
    assert denied["authorization"] == "denied by AuthorizationPolicy default/tcp-deny (rule 0)", denied
    assert denied["outcome"] == f"{CLOSED} (AuthorizationPolicy default/tcp-deny (rule 0))"
    assert await tcp.ports() == {9000: False, 9001: False, 9002: False}  # the DENY broadened to port 9000
    await tcp.apply("", set())
    assert (await tcp.explain(9001))["authorization"] == "allowed: no policy denies it"
    assert await tcp.ports() == {9000: True, 9001: True, 9002: True}
