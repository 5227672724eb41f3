"""Kubernetes Gateway API GRPCRoute through a real gateway Envoy (node type `router`) fed by meshd, standalone
from YAML, to real grpcio servers: calls routed by method (Say and Chat to two backends), a metadata (header)
match, a weighted 80/20 split over many calls, a RequestHeaderModifier seen by the server and a
ResponseHeaderModifier seen by the client, and a cross-namespace backendRef answered UNAVAILABLE until a
ReferenceGrant allows it. The backends' Service ports are named `grpc` (HTTP/2 to the backend, as Istio)."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
import pytest_asyncio

from tests.e2e.agents import write_ca_tokens
from tests.e2e.grpc_apps import SAY, EchoServer, chat
from tests.e2e.harness import Mesh, eventually, free_port, logs_on_failure

pytestmark = [pytest.mark.e2e, pytest.mark.asyncio(loop_scope="module")]

GW_NS = "istio-ingress"
GATEWAY = f"""\
apiVersion: v1
kind: Pod
metadata: {{name: gw-1, namespace: {GW_NS}, labels: {{gateway.networking.k8s.io/gateway-name: gw}}}}
status: {{podIP: {{ip}}}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: gw, namespace: {GW_NS}}}
spec:
  gatewayClassName: istio
  listeners:
  - {{name: grpc, port: 80, protocol: HTTP, allowedRoutes: {{namespaces: {{from: All}}}}}}
"""

ECHO = """\
apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
metadata: {name: echo, namespace: default}
spec:
  parentRefs: [{name: gw, namespace: istio-ingress}]
  hostnames: [echo.example.com]
  rules:
  - matches: [{method: {service: meshd.test.Echo, method: Say}, headers: [{name: x-canary, value: "yes"}]}]
    backendRefs: [{name: echo-v2, port: 7070}]
  - matches: [{method: {service: meshd.test.Echo, method: Say}}]
    filters:
    - type: RequestHeaderModifier
      requestHeaderModifier: {set: [{name: x-route, value: by-grpcroute}], remove: [x-drop]}
    - type: ResponseHeaderModifier
      responseHeaderModifier: {add: [{name: x-served-by, value: meshd-gateway}]}
    backendRefs: [{name: echo-v1, port: 7070}]
  - matches: [{method: {type: RegularExpression, service: "meshd\\\\.test\\\\..*", method: "Ch.t"}}]
    backendRefs: [{name: echo-v2, port: 7070}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
metadata: {name: split, namespace: default}
spec:
  parentRefs: [{name: gw, namespace: istio-ingress}]
  hostnames: [split.example.com]
  rules:
  - backendRefs:
    - {name: echo-v1, port: 7070, weight: 80}
    - {name: echo-v2, port: 7070, weight: 20}
"""

CROSS = """\
apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
metadata: {name: cross, namespace: team}
spec:
  parentRefs: [{name: gw, namespace: istio-ingress}]
  hostnames: [cross.example.com]
  rules: [{backendRefs: [{name: echo-v1, namespace: default, port: 7070}]}]
"""

GRANT = """\
apiVersion: gateway.networking.k8s.io/v1beta1
kind: ReferenceGrant
metadata: {name: team-grpc, namespace: default}
spec:
  from: [{group: gateway.networking.k8s.io, kind: GRPCRoute, namespace: team}]
  to: [{group: "", kind: Service}]
"""


def service(name: str, ip: str, port: int) -> str:
    return f"""\
apiVersion: v1
kind: Service
metadata: {{name: {name}, namespace: default}}
spec:
  ports: [{{name: grpc, port: 7070, targetPort: {port}}}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: {name}-1, namespace: default, labels: {{kubernetes.io/service-name: {name}}}}}
addressType: IPv4
ports: [{{name: grpc, port: {port}}}]
endpoints: [{{addresses: [{ip}]}}]
"""


class Lab:
    def __init__(self, mesh: Mesh) -> None:
        self.mesh = mesh
        self.channels: dict[str, grpc.aio.Channel] = {}

    def channel(self, host: str) -> grpc.aio.Channel:
        """A plain (h2c) grpcio channel to the gateway's port 80 with `host` as the authority."""
        if host not in self.channels:
            self.channels[host] = grpc.aio.insecure_channel(
                f"{self.mesh.ip(1)}:80", options=[("grpc.default_authority", host)]
            )
        return self.channels[host]

    async def say(
        self, host: str, *, metadata: tuple[tuple[str, str], ...] = ()
    ) -> tuple[dict[str, Any], dict[str, str]]:
        """Say's answer and the response's initial metadata."""
        call = self.channel(host).unary_unary(SAY, request_serializer=_identity, response_deserializer=_identity)
        request = call(b"hi", timeout=5, metadata=metadata)
        reply = await request
        initial = {k: v for k, v in (await request.initial_metadata() or ()) if isinstance(v, str)}
        return json.loads(reply), initial

    async def code(self, host: str) -> grpc.StatusCode:
        try:
            await self.say(host)
        except grpc.aio.AioRpcError as exc:
            return exc.code()
        return grpc.StatusCode.OK


def _identity(data: bytes) -> bytes:
    return data


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def lab(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Lab]:
    """meshd; a gateway Envoy (router, istio-ingress) at .1; grpcio servers echo-v1 (.11) and echo-v2 (.12)."""
    work = tmp_path_factory.mktemp("gateway-api-grpc")
    tokens = write_ca_tokens(work / "tokens.yaml", {"tok-gw": (GW_NS, "gw-istio")})
    mesh = Mesh(work_dir=work, delta=True, meshd_args=("--ca-token-file", str(tokens)))
    port = free_port()
    servers = [EchoServer(version=v, host=mesh.ip(n), port=port) for v, n in (("v1", 11), ("v2", 12))]
    async with logs_on_failure(mesh) as m:
        for server in servers:
            await server.start()
        m.write("gateway.yaml", GATEWAY.replace("{ip}", m.ip(1)))
        for name, n in (("echo-v1", 11), ("echo-v2", 12)):
            m.write(f"{name}.yaml", service(name, m.ip(n), port))
        m.write("echo.yaml", ECHO)
        await m.meshd.start()
        await m.sidecar(pod="gw-1", ip=m.ip(1), namespace=GW_NS, token="tok-gw", node_type="router")
        lab = Lab(m)
        try:
            yield lab
        finally:
            for channel in lab.channels.values():
                await channel.close()
            for server in servers:
                await server.stop()


async def _until(check: Any, what: str, timeout: float = 30) -> Any:
    return await eventually(check, timeout=timeout, what=what)


async def test_calls_are_routed_by_method_and_metadata_with_header_modifiers(lab: Lab) -> None:
    async def served() -> bool:
        return await lab.code("echo.example.com") == grpc.StatusCode.OK

    await _until(served, "Say through the GRPCRoute")
    for _ in range(10):
        answer, initial = await lab.say("echo.example.com", metadata=(("x-drop", "1"), ("x-canary", "no")))
        assert answer["version"] == "v1", answer
        sent = answer["metadata"]
        assert sent.get("x-route") == "by-grpcroute" and "x-drop" not in sent, sent
        assert initial.get("x-served-by") == "meshd-gateway", initial
    # the metadata match (x-canary: yes) sends Say to v2, without the other rule's modifier
    for _ in range(10):
        answer, _ = await lab.say("echo.example.com", metadata=(("x-canary", "yes"),))
        assert answer["version"] == "v2" and "x-route" not in answer["metadata"], answer
    # Chat (a streaming method, matched by a regular expression) goes to v2
    replies = await chat(lab.channel("echo.example.com"), ["a", "b"])
    assert [r["version"] for r in replies] == ["v2", "v2"] and [r["echo"] for r in replies] == ["a", "b"]
    # a method no rule matches: 404 from the gateway, UNIMPLEMENTED to the gRPC client
    call = lab.channel("echo.example.com").unary_unary("/meshd.test.Other/Say")
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await call(b"x", timeout=5)
    assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED


async def test_weighted_backend_refs_split_calls(lab: Lab) -> None:
    async def served() -> bool:
        return await lab.code("split.example.com") == grpc.StatusCode.OK

    await _until(served, "the split GRPCRoute")
    seen: Counter[str] = Counter()
    for _ in range(200):
        answer, _ = await lab.say("split.example.com")
        seen[answer["version"]] += 1
    assert seen["v1"] + seen["v2"] == 200 and 135 <= seen["v1"] <= 185, seen  # 80/20, loosely


async def test_cross_namespace_backend_unavailable_until_a_reference_grant(lab: Lab) -> None:
    lab.mesh.write("cross.yaml", CROSS)

    async def code_is(code: grpc.StatusCode) -> bool:
        return await lab.code("cross.example.com") == code

    await _until(lambda: code_is(grpc.StatusCode.UNAVAILABLE), "UNAVAILABLE without a ReferenceGrant")
    errors = await lab.mesh.meshd.get_json("/debug/config_errors")
    assert "GRPCRoute team/cross" in json.dumps(errors) and "RefNotPermitted" in json.dumps(errors), errors
    lab.mesh.write("grant.yaml", GRANT)
    await _until(lambda: code_is(grpc.StatusCode.OK), "OK once the ReferenceGrant allows it")
