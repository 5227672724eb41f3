"""Every protocol through real sidecars (bound mode: listeners on each pod's address), with real clients:

- gRPC: a grpcio client -> client sidecar -> server sidecar -> grpcio server, unary and streaming, a
  VirtualService 80/20 split between two versions, then a gRPC fault abort seen as the gRPC status;
  the server sidecar speaks HTTP/2 (h2c) to the app;
- WebSocket: an aiohttp client and server echo through both sidecars (the upgrade is allowed);
- a port whose name says nothing: HTTP on it gets the HTTP VirtualService (a fault abort on one path, the
  app on the others), raw TCP on another unnamed port still flows (http_inspector falls back to TCP);
- a headless service of two StatefulSet-like pods: each reached by its own name and address, the service
  name load balanced over both.
"""

from __future__ import annotations

import asyncio
import json
import pathlib
from collections import Counter
from collections.abc import AsyncIterator

import aiohttp
import grpc
import pytest
from aiohttp import web

from tests.e2e.grpc_apps import EchoServer, chat, say
from tests.e2e.harness import Mesh, eventually, free_port, logs_on_failure

pytestmark = pytest.mark.e2e

ECHO = "echo.default.svc.cluster.local"
GRPC_PORT, WS_PORT, PLAIN_PORT, RAW_PORT, DB_PORT = 7070, 8090, 8070, 8071, 8072

CONFIG = """\
apiVersion: v1
kind: Service
metadata: {{name: echo, namespace: default}}
spec:
  ports: [{{name: grpc, port: 7070, targetPort: {grpc_app}}}]
---
apiVersion: v1
kind: Service
metadata: {{name: ws, namespace: default}}
spec:
  ports: [{{name: http-ws, port: 8090, targetPort: {ws_app}}}]
---
apiVersion: v1
kind: Service
metadata: {{name: plain, namespace: default}}
spec:
  ports: [{{port: 8070, targetPort: {plain_app}}}]
---
apiVersion: v1
kind: Service
metadata: {{name: raw, namespace: default}}
spec:
  ports: [{{port: 8071, targetPort: {raw_app}}}]
---
apiVersion: v1
kind: Service
metadata: {{name: db, namespace: default}}
spec:
  clusterIP: None
  ports: [{{name: http, port: 8072, targetPort: {db_app}}}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: db-1, namespace: default, labels: {{kubernetes.io/service-name: db}}}}
ports: [{{name: http, port: {db_app}}}]
endpoints:
- {{addresses: [{db0}], hostname: db-0}}
- {{addresses: [{db1}], hostname: db-1}}
---
{pods}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: echo-1, namespace: default, labels: {{kubernetes.io/service-name: echo}}}}
ports: [{{name: grpc, port: {grpc_app}}}]
endpoints:
- {{addresses: [{v1}], targetRef: {{kind: Pod, name: echo-v1, namespace: default}}}}
- {{addresses: [{v2}], targetRef: {{kind: Pod, name: echo-v2, namespace: default}}}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: ws-1, namespace: default, labels: {{kubernetes.io/service-name: ws}}}}
ports: [{{name: http-ws, port: {ws_app}}}]
endpoints:
- {{addresses: [{ws}], targetRef: {{kind: Pod, name: ws, namespace: default}}}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: plain-1, namespace: default, labels: {{kubernetes.io/service-name: plain}}}}
ports: [{{port: {plain_app}}}]
endpoints:
- {{addresses: [{plain}], targetRef: {{kind: Pod, name: plain, namespace: default}}}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: raw-1, namespace: default, labels: {{kubernetes.io/service-name: raw}}}}
ports: [{{port: {raw_app}}}]
endpoints:
- {{addresses: [{raw}]}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: echo, namespace: default}}
spec:
  host: echo
  subsets:
  - {{name: v1, labels: {{version: v1}}}}
  - {{name: v2, labels: {{version: v2}}}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: plain, namespace: default}}
spec:
  hosts: [plain]
  http:
  - match: [{{uri: {{prefix: /teapot}}}}]
    fault: {{abort: {{httpStatus: 418, percentage: {{value: 100}}}}}}
    route: [{{destination: {{host: plain}}}}]
  - route: [{{destination: {{host: plain}}}}]
"""

POD = """\
apiVersion: v1
kind: Pod
metadata:
  name: {name}
  namespace: default
  labels: {{app: {app}, version: {version}, security.istio.io/tlsMode: istio}}
status: {{podIP: {ip}}}
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
    route: [{destination: {host: echo, subset: v2}}]
"""


async def _ws_echo(request: web.Request) -> web.WebSocketResponse:
    ws = web.WebSocketResponse()
    await ws.prepare(request)
    async for message in ws:
        if message.type == aiohttp.WSMsgType.TEXT:
            await ws.send_str(f"echo:{message.data}")
    return ws


async def _tcp_echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    data = await reader.read(100)
    writer.write(b"raw:" + data)
    await writer.drain()
    writer.close()


class ProtocolMesh:
    def __init__(self, mesh: Mesh) -> None:
        self.mesh = mesh
        self.ports = {name: free_port() for name in ("grpc", "ws", "plain", "raw", "db")}
        self.servers: list[EchoServer] = []
        self.closers: list[object] = []

    @property
    def client_ip(self) -> str:
        return self.mesh.ip(1)

    def config(self) -> str:
        m = self.mesh
        pods = "---\n".join(
            POD.format(name=name, app=app, version=version, ip=m.ip(n))
            for name, app, version, n in (
                ("client", "client", "v1", 1),
                ("echo-v1", "echo", "v1", 2),
                ("echo-v2", "echo", "v2", 3),
                ("ws", "ws", "v1", 4),
                ("plain", "plain", "v1", 5),
            )
        )
        p = self.ports
        return CONFIG.format(
            grpc_app=p["grpc"], ws_app=p["ws"], plain_app=p["plain"], raw_app=p["raw"], db_app=p["db"], pods=pods,
            v1=m.ip(2), v2=m.ip(3), ws=m.ip(4), plain=m.ip(5), raw=m.ip(6), db0=m.ip(7), db1=m.ip(8),
        )  # fmt: skip

    async def start(self) -> None:
        m = self.mesh
        m.write("protocols.yaml", self.config())
        m.write("echo-vs.yaml", SPLIT)
        await m.meshd.start()
        for version, n in (("v1", 2), ("v2", 3)):
            server = EchoServer(version=version, host=m.ip(n), port=self.ports["grpc"])
            await server.start()
            self.servers.append(server)
        app = web.Application()
        app.router.add_get("/ws", _ws_echo)
        runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=1.0)
        await runner.setup()
        await web.TCPSite(runner, m.ip(4), self.ports["ws"]).start()
        self.closers.append(runner)
        await m.app(service="plain", version="v1", pod="plain", ip=m.ip(5), port=self.ports["plain"])
        for pod, n in (("db-0", 7), ("db-1", 8)):
            await m.app(service="db", version=pod, pod=pod, ip=m.ip(n), port=self.ports["db"])
        raw = await asyncio.start_server(_tcp_echo, m.ip(6), self.ports["raw"])
        self.closers.append(raw)
        for pod, n in (("client", 1), ("echo-v1", 2), ("echo-v2", 3), ("ws", 4), ("plain", 5)):
            await m.sidecar(pod=pod, ip=m.ip(n))

    async def close(self) -> None:
        for server in self.servers:
            await server.stop()
        for closer in self.closers:
            if isinstance(closer, web.AppRunner):
                await closer.cleanup()
            elif isinstance(closer, asyncio.Server):
                closer.close()
                await closer.wait_closed()

    def channel(self) -> grpc.aio.Channel:
        """A plain grpcio channel to the client sidecar's outbound listener, with the service's authority."""
        return grpc.aio.insecure_channel(
            f"{self.client_ip}:{GRPC_PORT}", options=[("grpc.default_authority", f"{ECHO}:{GRPC_PORT}")]
        )


@pytest.fixture
async def protocols(tmp_path: pathlib.Path) -> AsyncIterator[ProtocolMesh]:
    async with logs_on_failure(Mesh(work_dir=tmp_path, delta=False)) as mesh:
        lab = ProtocolMesh(mesh)
        try:
            await lab.start()
            yield lab
        finally:
            await lab.close()


async def _stat(mesh: Mesh, pod: str, name: str) -> int:
    stats = await mesh.envoys[pod].admin_get("/stats?format=json")
    values = [int(s["value"]) for s in json.loads(stats)["stats"] if s.get("name") == name and "value" in s]
    return values[0] if values else 0


async def test_grpc_through_both_sidecars_unary_streaming_split_and_fault(protocols: ProtocolMesh) -> None:
    lab = protocols

    async def answered() -> dict[str, object] | None:
        async with lab.channel() as channel:
            try:
                return await say(channel, "hello")
            except grpc.aio.AioRpcError:
                return None

    first = await eventually(answered, timeout=30, what="a gRPC call through both sidecars")
    assert first["request"] == "hello"
    async with lab.channel() as channel:
        seen: Counter[str] = Counter()
        for _ in range(200):
            seen[(await say(channel, "x"))["version"]] += 1
        assert 0.65 <= seen["v1"] / 200 <= 0.93 and seen["v2"] > 0, seen  # 80/20
        replies = await chat(channel, ["a", "b", "c"])  # bidirectional streaming on one HTTP/2 stream
        assert [r["echo"] for r in replies] == ["a", "b", "c"], replies
        assert len({r["version"] for r in replies}) == 1  # one stream, one backend
    # the server sidecars spoke HTTP/2 to the apps (h2c): gRPC over HTTP/1.1 cannot work at all
    assert await _stat(lab.mesh, "echo-v1", f"cluster.inbound|{lab.ports['grpc']}||.upstream_cx_http2_total") >= 1

    lab.mesh.write("echo-vs.yaml", ABORT)

    async def denied() -> bool:
        async with lab.channel() as channel:
            try:
                await say(channel, "x")
            except grpc.aio.AioRpcError as exc:
                return exc.code() == grpc.StatusCode.PERMISSION_DENIED
        return False

    await eventually(denied, timeout=30, what="the gRPC fault abort as PERMISSION_DENIED")


async def test_websocket_echo_through_both_sidecars(protocols: ProtocolMesh) -> None:
    lab = protocols
    url = f"http://{lab.client_ip}:{WS_PORT}/ws"

    async def echoed() -> str:
        host = f"ws.default.svc.cluster.local:{WS_PORT}"
        async with aiohttp.ClientSession() as session, session.ws_connect(url, headers={"Host": host}) as ws:
            await ws.send_str("ping")
            message = await ws.receive(timeout=5)
            await ws.send_str("again")
            second = await ws.receive(timeout=5)
            return f"{message.data}|{second.data}"

    assert await eventually(echoed, timeout=30, what="a WebSocket echo") == "echo:ping|echo:again"
    assert await _stat(lab.mesh, "ws", "http.inbound.downstream_cx_upgrades_total") >= 1


async def test_unnamed_ports_sniff_http_for_routes_and_carry_raw_tcp(protocols: ProtocolMesh) -> None:
    lab = protocols
    host = f"plain.default.svc.cluster.local:{PLAIN_PORT}"

    async def routed() -> bool:
        status, _, _ = await lab.mesh.request(via_ip=lab.client_ip, host=host, path="/teapot", port=PLAIN_PORT)
        return status == 418

    await eventually(routed, timeout=30, what="the VirtualService's fault on the sniffed port")
    status, _, body = await lab.mesh.request(via_ip=lab.client_ip, host=host, path="/hello", port=PLAIN_PORT)
    assert status == 200 and json.loads(body)["service"] == "plain", body

    async def raw() -> bytes:
        reader, writer = await asyncio.open_connection(lab.client_ip, RAW_PORT)
        writer.write(b"\x00\x01binary, not HTTP")
        await writer.drain()
        data = await asyncio.wait_for(reader.read(100), 5)
        writer.close()
        return data

    assert await eventually(raw, timeout=30, what="raw TCP on an unnamed port") == b"raw:\x00\x01binary, not HTTP"
    raw_cluster = f"cluster.outbound|{RAW_PORT}||raw.default.svc.cluster.local"
    assert await _stat(lab.mesh, "client", f"{raw_cluster}.upstream_cx_total")


async def test_headless_service_pods_by_name_and_address(protocols: ProtocolMesh) -> None:
    lab = protocols

    async def answer(host: str) -> str:
        status, _, body = await lab.mesh.request(via_ip=lab.client_ip, host=host, port=DB_PORT)
        assert status == 200, (host, status, body)
        version: str = json.loads(body)["version"]
        return version

    first = f"db-0.db.default.svc.cluster.local:{DB_PORT}"
    assert await eventually(lambda: answer(first), timeout=30, what="the pod db-0 by name") == "db-0"
    for _ in range(10):  # always that pod, never load balanced
        assert await answer(first) == "db-0"
        assert await answer(f"db-1.db.default.svc.cluster.local:{DB_PORT}") == "db-1"
        assert await answer(f"{lab.mesh.ip(8)}:{DB_PORT}") == "db-1"  # by the pod's address
    both = {await answer(f"db.default.svc.cluster.local:{DB_PORT}") for _ in range(30)}
    assert both == {"db-0", "db-1"}  # the service's own name: both pods


GREETER = """\
apiVersion: v1
kind: Service
metadata: {{name: greeter, namespace: default}}
spec:
  ports: [{{port: 8073, targetPort: {port}}}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: greeter-1, namespace: default, labels: {{kubernetes.io/service-name: greeter}}}}
ports: [{{port: {port}}}]
endpoints: [{{addresses: [{ip}]}}]
"""


async def test_a_server_first_protocol_on_an_unnamed_port_falls_back_to_tcp_after_the_detection_timeout(
    tmp_path: pathlib.Path,
) -> None:
    """The server speaks first (as MySQL does): http_inspector sees no byte until protocolDetectionTimeout
    (`--protocol-detection-timeout 0.5`) ends, then the connection goes on as TCP and the greeting arrives."""
    mesh_args = ("--protocol-detection-timeout", "0.5")
    async with logs_on_failure(Mesh(work_dir=tmp_path, delta=False, meshd_args=mesh_args)) as mesh:
        port = free_port()

        async def greet(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writer.write(b"220 hello from the server\r\n")
            await writer.drain()
            await reader.read(100)
            writer.close()

        server = await asyncio.start_server(greet, mesh.ip(2), port)
        try:
            mesh.write("greeter.yaml", GREETER.format(port=port, ip=mesh.ip(2)))
            await mesh.meshd.start()
            await mesh.sidecar(pod="client", ip=mesh.ip(1))

            async def greeting() -> bytes:
                reader, writer = await asyncio.open_connection(mesh.ip(1), 8073)
                try:
                    return await asyncio.wait_for(reader.readline(), 5)
                finally:
                    writer.close()

            assert await eventually(greeting, timeout=30, what="the greeting") == b"220 hello from the server\r\n"
        finally:
            server.close()
            await server.wait_closed()
