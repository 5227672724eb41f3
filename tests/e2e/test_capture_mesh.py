"""Issue 7's transparent-capture test: an unmodified client app in a "pod" network namespace calls
`http://<ClusterIP>:<port>` (Host: the service name, as DNS would resolve it); `meshd iptables` sends the
connection to the pod's Envoy (a `meshd agent` sidecar running as UID 1337 in capture mode), meshd's config
routes it to the backend "pod", whose own capture rules hand it to its Envoy on 15006; the backend app sees the
caller's SPIFFE identity (x-forwarded-client-cert), so the hop was mutual TLS."""

from __future__ import annotations

import asyncio
import json
import pathlib
import shutil
import sys
from collections.abc import AsyncIterator
from typing import Any

import pytest

from meshd.settings import AgentSettings
from tests.e2e.agents import AgentProcess, short_workdir, write_ca_tokens
from tests.e2e.harness import Meshd, eventually, logs_on_failure
from tests.e2e.netns import PROXY_UID, Lab, Namespace, netns_unavailable, sh

pytestmark = pytest.mark.e2e

PROBE = str(pathlib.Path(__file__).with_name("capture_probe.py"))
APP = str(pathlib.Path(__file__).with_name("netns_app.py"))
PYTHON = sys.executable
CLUSTER_IP = "10.96.70.10"  # the Service's VIP: no interface anywhere has it; only capture makes it answer
SERVICE_PORT = 80
APP_PORT = 8080
TOKENS = {"tok-client": ("default", "client"), "tok-backend": ("default", "backend")}

CONFIG = """\
apiVersion: v1
kind: Service
metadata: {{name: backend, namespace: default}}
spec:
  clusterIP: {cluster_ip}
  selector: {{app: backend}}
  ports: [{{name: http, port: {service_port}, targetPort: {app_port}}}]
---
apiVersion: v1
kind: Pod
metadata:
  name: backend
  namespace: default
  labels: {{app: backend, version: v1, security.istio.io/tlsMode: istio}}
  annotations: {{sidecar.istio.io/interceptionMode: REDIRECT}}
spec: {{serviceAccountName: backend}}
status: {{podIP: {backend_ip}}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: backend-1, namespace: default, labels: {{kubernetes.io/service-name: backend}}}}
addressType: IPv4
ports: [{{name: http, port: {app_port}}}]
endpoints:
- addresses: [{backend_ip}]
  conditions: {{ready: true}}
  targetRef: {{kind: Pod, name: backend, namespace: default}}
"""


def capture_mode_available() -> str | None:
    if "interception_mode" not in AgentSettings.model_fields:
        return "needs capture-mode sidecars (`meshd agent --interception-mode REDIRECT`, issue 7 item 4)"
    return netns_unavailable()


class PodAgent(AgentProcess):
    """`meshd agent` (and so its Envoy) inside a pod namespace, as the proxy UID, capturing traffic."""

    def __init__(self, *, ns: Namespace, pod: str, args: tuple[str, ...], workdir: pathlib.Path) -> None:
        super().__init__(pod=pod, ip=ns.ip, args=args, workdir=workdir)
        self.ns = ns

    async def start(self) -> None:
        await sh("chown", "-R", f"{PROXY_UID}:{PROXY_UID}", str(self.workdir))
        argv = self.ns.argv(PYTHON, "-m", "meshd", "--log-level", "INFO", "agent", *self.args, uid=PROXY_UID)
        with self.log_path.open("ab") as log:
            self.process = await _spawn(argv, log)


async def _spawn(argv: list[str], log: Any) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(*argv, stdin=asyncio.subprocess.DEVNULL, stdout=log, stderr=log)


class CaptureMesh:
    def __init__(self, tmp_path: pathlib.Path) -> None:
        self.tmp_path = tmp_path
        self.lab = Lab(host_bridge=True)
        self.config_dir = tmp_path / "config"
        self.meshd: Meshd | None = None
        self.agents: list[PodAgent] = []

    async def start(self) -> None:
        await self.lab.start()
        bridge_ip = self.lab.node.ip
        tokens = write_ca_tokens(self.tmp_path / "tokens.yaml", TOKENS)
        self.meshd = Meshd(config_dir=self.config_dir, log_path=self.tmp_path / "meshd.log")
        # Pods reach meshd on the bridge address (argparse: the last --xds-host/--secure-host wins).
        self.meshd.extra_args = ("--ca-token-file", str(tokens), "--xds-host", bridge_ip, "--secure-host", bridge_ip)

    async def pod(self, name: str, *, token: str, service_account: str, labels: str) -> tuple[Namespace, PodAgent]:
        """A pod: capture rules from `meshd iptables`, then its sidecar (agent + Envoy as UID 1337)."""
        assert self.meshd is not None
        ns = await self.lab.pod(name)
        await ns.run(PYTHON, "-m", "meshd", "iptables")
        workdir = short_workdir(name)
        (workdir / "token").write_text(token)
        shutil.copy(self.meshd.ca_dir / "root-cert.pem", workdir / "root-cert.pem")
        args = ("--namespace", "default", "--service-account", service_account, "--labels", labels)
        args += ("--xds-address", f"{self.lab.node.ip}:{self.meshd.secure_port}", "--token-file", "token")
        args += ("--root-cert", str(workdir / "root-cert.pem"), "--interception-mode", "REDIRECT")
        args += ("--restart-base", "0.2", "--envoy-concurrency", "1")
        agent = PodAgent(ns=ns, pod=name, args=args, workdir=workdir)
        self.agents.append(agent)
        await agent.start()
        await agent.wait_ready()
        return ns, agent

    async def app(self, ns: Namespace, *, service: str, pod: str) -> None:
        proc = await self.lab.spawn(ns, PYTHON, APP, service, "v1", pod, str(APP_PORT))
        assert proc.stdout is not None
        assert await proc.stdout.readline() == b"ready\n"

    async def close(self) -> None:
        for agent in self.agents:
            await agent.close()
            shutil.rmtree(agent.workdir, ignore_errors=True)
        if self.meshd is not None:
            await self.meshd.close()
        await self.lab.close()

    def failure_logs(self) -> str:
        parts = [self.meshd.log()[-4000:] if self.meshd else ""]
        parts += [agent.log()[-3000:] for agent in self.agents]
        return "\n----\n".join(parts)


@pytest.fixture
async def capture_mesh(tmp_path: pathlib.Path) -> AsyncIterator[CaptureMesh]:
    reason = capture_mode_available()
    if reason:
        pytest.skip(reason)
    async with logs_on_failure(CaptureMesh(tmp_path)) as mesh:
        await mesh.start()
        yield mesh


async def http_from(ns: Namespace, url: str, host: str) -> dict[str, Any]:
    """An unmodified client in `ns` (root, not the proxy UID): plain urllib, no proxy settings."""
    done = await ns.run(PYTHON, PROBE, "http", url, host, check=False)
    assert done.returncode == 0, done.stderr[-500:]
    reply: dict[str, Any] = json.loads(done.stdout)
    return reply


async def test_unmodified_client_reaches_the_service_through_both_sidecars_over_mtls(
    capture_mesh: CaptureMesh,
) -> None:
    mesh = capture_mesh
    backend_ip = f"{mesh.lab.prefix}.3"  # the lab's second pod
    mesh.config_dir.mkdir()
    (mesh.config_dir / "backend.yaml").write_text(
        CONFIG.format(cluster_ip=CLUSTER_IP, service_port=SERVICE_PORT, app_port=APP_PORT, backend_ip=backend_ip)
    )
    assert mesh.meshd is not None
    await mesh.meshd.start()
    client_ns, client = await mesh.pod("client", token="tok-client", service_account="client", labels="app=client")
    backend_ns, backend = await mesh.pod(
        "backend", token="tok-backend", service_account="backend", labels="app=backend,version=v1"
    )
    assert backend_ns.ip == backend_ip
    await mesh.app(backend_ns, service="backend", pod="backend")

    url = f"http://{CLUSTER_IP}:{SERVICE_PORT}/hello"
    host = f"backend.default.svc.cluster.local:{SERVICE_PORT}"

    async def answered() -> dict[str, Any] | None:
        reply = await http_from(client_ns, url, host)
        return reply if reply["status"] == 200 else None

    reply = await eventually(answered, timeout=30, what="the captured call answered by the backend")
    body = json.loads(reply["body"])
    assert body["service"] == "backend"
    assert body["peer"] == "spiffe://cluster.local/ns/default/sa/client"  # mTLS proved the caller
    # It went through the client's Envoy (virtualOutbound) and in through the backend's (virtualInbound).
    assert await counter(client, "cluster.outbound|80||backend.default.svc.cluster.local.upstream_rq_total") >= 1
    assert await counter(backend, "cluster.inbound|8080||.upstream_rq_total") >= 1


async def counter(agent: AgentProcess, name: str) -> int:
    stats = json.loads(await agent.admin_get("/stats?format=json"))["stats"]
    values = [int(stat["value"]) for stat in stats if stat.get("name") == name]
    assert values, f"{name} not in Envoy's stats"
    return values[0]
