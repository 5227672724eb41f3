"""Mesh routing (GAMMA) of gRPC through a real Envoy sidecar: a GRPCRoute whose parentRef is a Service routes
what the client's sidecar sends to it, by method (Chat to v2) and by metadata (x-canary: yes to v2), the rest to
v1; without the route the Service balances over both grpcio servers. The Service ports are named `grpc`
(HTTP/2 to the backends, as Istio)."""

from __future__ import annotations

import json
import pathlib
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest

from tests.e2e.grpc_apps import SAY, EchoServer, chat
from tests.e2e.harness import Mesh, eventually, free_port, logs_on_failure

pytestmark = pytest.mark.e2e
CLIENT, V1, V2 = 1, 3, 4
PORT = 7070

ROUTE = """\
apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
metadata: {name: echo, namespace: a}
spec:
  parentRefs: [{group: "", kind: Service, name: echo, port: 7070}]
  rules:
  - matches: [{headers: [{name: x-canary, value: "yes"}]}]
    backendRefs: [{name: echo-v2, port: 7070}]
  - matches: [{method: {service: meshd.test.Echo, method: Chat}}]
    backendRefs: [{name: echo-v2, port: 7070}]
  - backendRefs: [{name: echo-v1, port: 7070}]
"""


def _service(name: str, endpoints: list[str], target: int) -> str:
    addresses = "\n".join(f"- {{addresses: [{ip}]}}" for ip in endpoints)
    return f"""\
apiVersion: v1
kind: Service
metadata: {{name: {name}, namespace: a}}
spec: {{ports: [{{name: grpc, port: {PORT}, targetPort: {target}}}]}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: {name}-1, namespace: a, labels: {{kubernetes.io/service-name: {name}}}}}
addressType: IPv4
ports: [{{name: grpc, port: {target}}}]
endpoints:
{addresses}
"""


def _identity(data: bytes) -> bytes:
    return data


@pytest.fixture
async def lab(tmp_path: pathlib.Path) -> AsyncIterator[tuple[Mesh, grpc.aio.Channel]]:
    """meshd; a client sidecar (namespace a) at .1; grpcio servers v1 (.3) and v2 (.4) behind Service `echo`."""
    target = free_port()
    async with logs_on_failure(Mesh(work_dir=tmp_path, delta=True)) as m:
        servers = [EchoServer(version=v, host=m.ip(n), port=target) for v, n in (("v1", V1), ("v2", V2))]
        for server in servers:
            await server.start()
        m.write(
            "world.yaml",
            "---\n".join(
                [
                    _service("echo", [m.ip(V1), m.ip(V2)], target),
                    _service("echo-v1", [m.ip(V1)], target),
                    _service("echo-v2", [m.ip(V2)], target),
                ]
            ),
        )
        await m.meshd.start()
        await m.sidecar(pod="client", ip=m.ip(CLIENT), namespace="a")
        # the client's sidecar: its outbound listener for port 7070, the Service's name as the authority
        channel = grpc.aio.insecure_channel(
            f"{m.ip(CLIENT)}:{PORT}", options=[("grpc.default_authority", "echo.a:7070")]
        )
        try:
            yield m, channel
        finally:
            await channel.close()
            for server in servers:
                await server.stop()


async def _versions(channel: grpc.aio.Channel, count: int, metadata: tuple[tuple[str, str], ...] = ()) -> Counter[str]:
    call = channel.unary_unary(SAY, request_serializer=_identity, response_deserializer=_identity)
    seen: Counter[str] = Counter()
    for _ in range(count):
        try:
            answer: dict[str, Any] = json.loads(await call(b"hi", timeout=5, metadata=metadata))
            seen[answer["version"]] += 1
        except grpc.aio.AioRpcError as exc:
            seen[exc.code().name] += 1
    return seen


async def test_a_grpc_route_with_a_service_parent_routes_sidecar_calls(lab: tuple[Mesh, grpc.aio.Channel]) -> None:
    m, channel = lab

    async def balanced() -> bool:
        seen = await _versions(channel, 40)
        return set(seen) == {"v1", "v2"}

    await eventually(balanced, what="Say through the sidecar to both servers, without a route")

    m.write("route.yaml", ROUTE)

    async def only_v1() -> bool:
        return await _versions(channel, 30) == Counter({"v1": 30})

    await eventually(only_v1, what="Say to v1 only, once the GRPCRoute applies")
    assert await _versions(channel, 20, (("x-canary", "yes"),)) == Counter({"v2": 20})
    for _ in range(5):  # the streaming method matched by name goes to v2
        replies = await chat(channel, ["a", "b"])
        assert [r["version"] for r in replies] == ["v2", "v2"], replies
    errors = await m.meshd.get_json("/debug/config_errors")
    assert not [e for e in errors if "GRPCRoute" in (e["resource"] or "")], errors
