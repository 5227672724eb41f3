"""Istio's TCP metrics carry the peer's workload labels on both sides, as Istio's TCP metadata exchange gives
them (`translate/peer_exchange.py`): two captured "pods" in network namespaces with real Envoys over mTLS, a
TCP service whose port differs from its target port, an unmodified client dialling the ClusterIP.

- the server's sidecar (reporter `destination`) learns the client's workload, namespace, app, version and
  cluster from the PROXY v2 header the client sidecar sends ahead of mTLS; the connection still reaches the
  app's own port (the header's destination, the ClusterIP and service port, is undone);
- the client's sidecar (reporter `source`) learns the server's from the endpoint's metadata;
- a client without sidecar (the test process, plaintext) is `unknown` on the server, as in Istio.
Skipped, with the reason, where the machine forbids network namespaces or iptables."""

from __future__ import annotations

import asyncio
import json
import pathlib
import sys
from collections.abc import AsyncIterator

import pytest

from tests.e2e.harness import eventually, logs_on_failure
from tests.e2e.metrics_lab import samples, scrape, subset
from tests.e2e.test_capture_mesh import CaptureMesh, capture_mode_available

pytestmark = pytest.mark.e2e

VIP = "10.96.71.20"
SERVICE_PORT = 9000
APP_PORT = 5555
CONNECTIONS = 3

CONFIG = """\
apiVersion: v1
kind: Service
metadata: {{name: echo, namespace: default}}
spec:
  clusterIP: {vip}
  selector: {{app: backend}}
  ports: [{{name: tcp-echo, port: {service_port}, targetPort: {app_port}}}]
---
apiVersion: v1
kind: Pod
metadata:
  name: backend-7d4f
  namespace: default
  labels: {{app: backend, version: v1, security.istio.io/tlsMode: istio}}
  annotations: {{sidecar.istio.io/interceptionMode: REDIRECT}}
spec: {{serviceAccountName: backend}}
status: {{podIP: {backend_ip}}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: echo-1, namespace: default, labels: {{kubernetes.io/service-name: echo}}}}
addressType: IPv4
ports: [{{name: tcp-echo, port: {app_port}}}]
endpoints:
- addresses: [{backend_ip}]
  conditions: {{ready: true}}
  targetRef: {{kind: Pod, name: backend-7d4f, namespace: default}}
"""

CLIENT_LABELS = {
    "source_workload": "client",
    "source_workload_namespace": "default",
    "source_app": "client",
    "source_version": "v2",
    "source_cluster": "Kubernetes",
    "source_principal": "spiffe://cluster.local/ns/default/sa/client",
}
BACKEND_LABELS = {
    "destination_workload": "backend",
    "destination_workload_namespace": "default",
    "destination_app": "backend",
    "destination_version": "v1",
    "destination_cluster": "Kubernetes",
    "destination_principal": "spiffe://cluster.local/ns/default/sa/backend",
}
UNKNOWN_PEER = {key: "unknown" for key in CLIENT_LABELS}


async def _dial(host: str, port: int) -> dict[str, object]:
    reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), 10)
    try:
        writer.write(b"hello\n")  # the client speaks first (plaintext PERMISSIVE: the inspectors wait for it)
        await writer.drain()
        reply: dict[str, object] = json.loads(await asyncio.wait_for(reader.readline(), 10))
        return reply
    finally:
        writer.close()


def _opened(text: str, **labels: str) -> list[tuple[dict[str, str], float]]:
    return samples(text, "istio_tcp_connections_opened_total", request_protocol="tcp", **labels)


def _closed(text: str, **labels: str) -> list[tuple[dict[str, str], float]]:
    return samples(text, "istio_tcp_connections_closed_total", request_protocol="tcp", **labels)


# The app: reads the client's line, answers with the port that accepted the connection, then closes.
APP = """\
import asyncio, json, sys
async def handle(reader, writer):
    await reader.readline()
    writer.write((json.dumps({"listener": writer.get_extra_info("sockname")[1]}) + "\\n").encode())
    await writer.drain()
    writer.close()
async def main():
    server = await asyncio.start_server(handle, "0.0.0.0", int(sys.argv[1]))
    print("ready", flush=True)
    await server.serve_forever()
asyncio.run(main())
"""
# An unmodified client in the client pod: dials the ClusterIP, says a line, prints the answer.
CLIENT = """\
import socket
s = socket.create_connection(("{vip}", {port}), timeout=5)
s.sendall(b"hello\\n")
print(s.makefile().readline().strip())
"""


def _delta(
    after: list[tuple[dict[str, str], float]], before: list[tuple[dict[str, str], float]]
) -> list[tuple[dict[str, str], float]]:
    """The samples that moved between two scrapes, and by how much."""
    earlier = {tuple(sorted(labels.items())): value for labels, value in before}
    moved = [(labels, value - earlier.get(tuple(sorted(labels.items())), 0.0)) for labels, value in after]
    return [(labels, value) for labels, value in moved if value]


@pytest.fixture
async def pods(tmp_path: pathlib.Path) -> AsyncIterator[CaptureMesh]:
    reason = capture_mode_available()
    if reason:
        pytest.skip(reason)
    async with logs_on_failure(CaptureMesh(tmp_path)) as mesh:
        await mesh.start()
        yield mesh


async def test_tcp_metrics_name_the_peer_workload_on_both_sides(pods: CaptureMesh) -> None:
    mesh = pods
    backend_ip = f"{mesh.lab.prefix}.3"  # the lab's second pod
    mesh.config_dir.mkdir()
    (mesh.config_dir / "echo.yaml").write_text(
        CONFIG.format(vip=VIP, service_port=SERVICE_PORT, app_port=APP_PORT, backend_ip=backend_ip)
    )
    assert mesh.meshd is not None
    await mesh.meshd.start()
    client_ns, client = await mesh.pod(
        "client", token="tok-client", service_account="client", labels="app=client,version=v2"
    )
    backend_ns, backend = await mesh.pod(
        "backend", token="tok-backend", service_account="backend", labels="app=backend,version=v1"
    )
    assert backend_ns.ip == backend_ip
    app = await mesh.lab.spawn(backend_ns, sys.executable, "-c", APP, str(APP_PORT))
    assert app.stdout is not None
    assert await app.stdout.readline() == b"ready\n"

    async def through_the_sidecars() -> dict[str, object] | None:
        done = await client_ns.run(sys.executable, "-c", CLIENT.format(vip=VIP, port=SERVICE_PORT), check=False)
        return json.loads(done.stdout) if done.returncode == 0 and done.stdout.strip() else None

    await eventually(through_the_sidecars, timeout=60, what="TCP from the client pod to the ClusterIP")

    async def metrics() -> tuple[str, str]:
        return await scrape(backend.session, backend.ip), await scrape(client.session, client.ip)

    server_before, client_before = await metrics()
    for _ in range(CONNECTIONS):
        # the app's own port accepted it: the server sidecar undid the PROXY header's destination (ClusterIP:9000)
        assert await through_the_sidecars() == {"listener": APP_PORT}
    assert await _dial(backend_ip, APP_PORT) == {"listener": APP_PORT}  # no sidecar: plaintext, to the pod

    async def counted() -> tuple[str, str] | None:
        server, client = await metrics()
        mesh_side = _delta(
            _closed(server, reporter="destination", connection_security_policy="mutual_tls"),
            _closed(server_before, reporter="destination", connection_security_policy="mutual_tls"),
        )
        plain_side = _delta(
            _closed(server, reporter="destination", connection_security_policy="none"),
            _closed(server_before, reporter="destination", connection_security_policy="none"),
        )
        client_side = _delta(_closed(client, reporter="source"), _closed(client_before, reporter="source"))
        done = sum(v for _, v in mesh_side) >= CONNECTIONS and sum(v for _, v in plain_side) >= 1
        return (server, client) if done and sum(v for _, v in client_side) >= CONNECTIONS else None

    server, client_text = await eventually(counted, timeout=30, what="both sidecars' TCP metrics")
    # labels as each connection ended (the opened counter is logged when the upstream connects, which may be
    # before the client's handshake ends and its principal is known)
    mtls = {"reporter": "destination", "connection_security_policy": "mutual_tls"}
    [(labels, count)] = _delta(_closed(server, **mtls), _closed(server_before, **mtls))
    assert count == CONNECTIONS
    assert subset(labels, {**CLIENT_LABELS, **BACKEND_LABELS}) == {}
    opened = _delta(_opened(server, **mtls), _opened(server_before, **mtls))
    assert sum(v for _, v in opened) == CONNECTIONS
    for labels, _ in opened:
        assert subset(labels, {**CLIENT_LABELS, **BACKEND_LABELS, "source_principal": labels["source_principal"]}) == {}
    plain = {"reporter": "destination", "connection_security_policy": "none"}
    [(labels, count)] = _delta(_closed(server, **plain), _closed(server_before, **plain))
    assert count == 1
    assert subset(labels, {**UNKNOWN_PEER, "destination_workload": "backend"}) == {}

    expected = {**CLIENT_LABELS, **BACKEND_LABELS, "destination_service_name": "echo"}
    for family in (_closed, _opened):
        [(labels, count)] = _delta(family(client_text, reporter="source"), family(client_before, reporter="source"))
        assert count == CONNECTIONS
        assert subset(labels, expected) == {}
