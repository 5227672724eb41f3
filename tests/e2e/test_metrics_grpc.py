"""Istio's gRPC message counts (`istio_request_messages_total`, `istio_response_messages_total`) through real
Envoys: a grpcio client -> client sidecar -> (mTLS) -> server sidecar -> grpcio server, with unary calls, a
bidirectional stream played ping-pong (each reply awaited before the next message: nothing may be buffered)
whose server answers two messages per request, and a call failing with trailers only. Both reporters' merged
endpoints (15020) and Envoy's (15090) show the counts per call as Istio defines them, only for gRPC (plain
HTTP requests add none), and Telemetry overrides act on them (a tag added, disabled per reporter)."""

from __future__ import annotations

import json
import pathlib
from collections.abc import AsyncIterator

import grpc
import pytest

from tests.e2e.harness import Mesh, eventually, free_port, logs_on_failure
from tests.e2e.metrics_lab import (
    CLIENT,
    GATEWAY,
    SPIFFE,
    WEB,
    only,
    scrape,
    start_gateway,
    start_metrics_mesh,
    subset,
    total,
)

pytestmark = pytest.mark.e2e

REQUESTS, RESPONSES = "istio_request_messages_total", "istio_response_messages_total"
SERVICE = "meshd.test.Counts"
COUNTING = "meshd.grpc_message_counts"  # the Lua step's filter name (translate/grpc_messages.py)
HOST = "greeter.default.svc.cluster.local"
GRPC_SERVICE = """\
apiVersion: v1
kind: Service
metadata: {{name: greeter, namespace: default}}
spec:
  selector: {{app: web}}
  ports: [{{name: grpc, port: 7070, targetPort: {app_port}}}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: greeter-1, namespace: default, labels: {{kubernetes.io/service-name: greeter}}}}
addressType: IPv4
ports: [{{name: grpc, port: {app_port}}}]
endpoints:
- addresses: [{web}]
  conditions: {{ready: true}}
  targetRef: {{kind: Pod, name: web-v1, namespace: default}}
"""
TELEMETRY = """\
apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {name: mesh-default, namespace: istio-system}
spec:
  metrics:
  - overrides:
    - match: {metric: GRPC_REQUEST_MESSAGES}
      tagOverrides:
        grpc_method: {value: request.url_path}
    - match: {metric: GRPC_RESPONSE_MESSAGES, mode: CLIENT}
      disabled: true
---
apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {name: web, namespace: default}
spec:
  selector: {matchLabels: {app: web}}
  metrics:
  - overrides:
    - match: {customMetric: request_messages_total, mode: SERVER}
      disabled: true
    - match: {customMetric: response_messages_total, mode: SERVER}
      disabled: true
    - match: {metric: REQUEST_COUNT, mode: SERVER}
      tagOverrides:
        overridden: {value: "'yes'"}
"""


def _raw(data: bytes) -> bytes:
    return data


async def _say(request: bytes, context: grpc.aio.ServicerContext) -> bytes:  # type: ignore[type-arg]
    return b"hello " + request


async def _chat(
    requests: AsyncIterator[bytes],
    context: grpc.aio.ServicerContext,  # type: ignore[type-arg]
) -> AsyncIterator[bytes]:
    async for request in requests:  # two replies per request message
        yield b"1:" + request
        yield b"2:" + request


async def _fail(request: bytes, context: grpc.aio.ServicerContext) -> bytes:  # type: ignore[type-arg]
    await context.abort(grpc.StatusCode.FAILED_PRECONDITION, "no")
    return b""


async def _server(host: str, port: int) -> grpc.aio.Server:
    server = grpc.aio.server()
    unary = {"request_deserializer": _raw, "response_serializer": _raw}
    handler = grpc.method_handlers_generic_handler(
        SERVICE,
        {
            "Say": grpc.unary_unary_rpc_method_handler(_say, **unary),
            "Chat": grpc.stream_stream_rpc_method_handler(_chat, **unary),
            "Fail": grpc.unary_unary_rpc_method_handler(_fail, **unary),
        },
    )
    server.add_generic_rpc_handlers((handler,))
    server.add_insecure_port(f"{host}:{port}")
    await server.start()
    return server


@pytest.fixture
async def mesh(tmp_path: pathlib.Path) -> AsyncIterator[Mesh]:
    async with logs_on_failure(Mesh(work_dir=tmp_path, delta=False)) as m:
        await start_metrics_mesh(m, tmp_path)
        app_port = free_port()
        m.write("greeter.yaml", GRPC_SERVICE.format(app_port=app_port, web=m.ip(WEB)))
        server = await _server(m.ip(WEB), app_port)
        try:
            yield m
        finally:
            await server.stop(grace=None)


def _channel(mesh: Mesh) -> grpc.aio.Channel:
    """grpcio -> the client sidecar's outbound 7070 listener, with the service's authority."""
    return grpc.aio.insecure_channel(f"{mesh.ip(CLIENT)}:7070", options=[("grpc.default_authority", f"{HOST}:7070")])


async def _say_call(channel: grpc.aio.Channel) -> bytes:
    call = channel.unary_unary(f"/{SERVICE}/Say", request_serializer=_raw, response_deserializer=_raw)
    reply: bytes = await call(b"you", timeout=5)
    return reply


async def _answered(channel: grpc.aio.Channel) -> bool:
    """A Say call went through (polled while the sidecars get their config)."""
    try:
        return await _say_call(channel) == b"hello you"
    except grpc.aio.AioRpcError:
        return False


async def _ping_pong(channel: grpc.aio.Channel, count: int) -> list[bytes]:
    """`count` request messages, each sent only after both replies to the previous one arrived."""
    call = channel.stream_stream(f"/{SERVICE}/Chat", request_serializer=_raw, response_deserializer=_raw)()
    got = []
    for i in range(count):
        await call.write(f"m{i}".encode())
        got += [await call.read(), await call.read()]
    await call.done_writing()
    assert await call.read() == grpc.aio.EOF
    assert await call.code() == grpc.StatusCode.OK
    return got


async def _fail_call(channel: grpc.aio.Channel) -> grpc.StatusCode:
    call = channel.unary_unary(f"/{SERVICE}/Fail", request_serializer=_raw, response_deserializer=_raw)
    try:
        await call(b"x", timeout=5)
    except grpc.aio.AioRpcError as exc:
        return exc.code()
    raise AssertionError("Fail answered")


async def _listeners(mesh: Mesh, pod: str, direction: str) -> str:
    """The listeners of one direction in the pod's Envoy (config dump), as JSON text."""
    dump = await mesh.agents[pod].config_dump("dynamic_listeners")
    found = [
        c
        for c in dump["configs"]
        if c.get("active_state", {}).get("listener", {}).get("traffic_direction") == direction
    ]
    assert found, (pod, direction)
    return json.dumps(found)


def _counts(text: str, reporter: str, **labels: str) -> tuple[float, float]:
    selected = {"reporter": reporter, "destination_service_name": "greeter", **labels}
    return total(text, REQUESTS, **selected), total(text, RESPONSES, **selected)


async def test_message_counts_on_both_reporters(mesh: Mesh) -> None:
    async with _channel(mesh) as channel:
        await eventually(lambda: _answered(channel), timeout=30, what="gRPC through both sidecars")
        for _ in range(2):
            assert await _say_call(channel) == b"hello you"
        replies = await _ping_pong(channel, 3)
        assert replies == [b"1:m0", b"2:m0", b"1:m1", b"2:m1", b"1:m2", b"2:m2"]
        assert await _fail_call(channel) == grpc.StatusCode.FAILED_PRECONDITION
    # plain HTTP through the same sidecars: no message counts
    status, _, _ = await mesh.request(via_ip=mesh.ip(CLIENT), host="web:9080", path="/")
    assert status == 200

    async def counted(ip: str, reporter: str) -> str:
        text = await scrape(mesh.client, ip)
        assert total(text, "istio_requests_total", reporter=reporter, destination_service_name="web") >= 1
        # the warm-up call(s) and two more unary calls: one message each way per call
        ok = total(text, "istio_requests_total", reporter=reporter, grpc_response_status="0", response_code="200")
        unary = ok - 1  # every OK gRPC call but the stream
        assert _counts(text, reporter, grpc_response_status="0") == (unary + 3, unary + 6)
        return text

    for ip, reporter in ((mesh.ip(CLIENT), "source"), (mesh.ip(WEB), "destination")):
        text = await eventually(lambda i=ip, r=reporter: counted(i, r), timeout=20, what=f"{reporter} message counts")  # type: ignore[misc]
        # the failed call (trailers only): its request message, no response message
        assert _counts(text, reporter, grpc_response_status="9") == (1, 0)
        labels = only(text, REQUESTS, reporter=reporter, grpc_response_status="9")
        expected = {
            "request_protocol": "grpc",
            "response_code": "200",
            "source_workload": "client",
            "source_principal": SPIFFE.format("client"),
            "destination_workload": "web-v1",
            "destination_principal": SPIFFE.format("web"),
            "destination_service": f"{HOST}",
            "connection_security_policy": "unknown" if reporter == "source" else "mutual_tls",
        }
        assert subset(labels, expected) == {}
        # only gRPC calls: the plain HTTP requests to web have none
        assert total(text, REQUESTS, destination_service_name="web") == 0
        assert total(text, RESPONSES, destination_service_name="web") == 0
        # Envoy's own endpoint names them the same way
        envoy_text = await scrape(mesh.client, ip, port=15090)
        assert _counts(envoy_text, reporter, grpc_response_status="9") == (1, 0)
    # the message counters' logger skips other requests (it does not try to count what is not there)
    for pod in ("client-5d8f", "web-v1"):
        envoy_log = (mesh.agents[pod].workdir / "envoy.log").read_text(errors="replace")
        assert "non-number value" not in envoy_log, envoy_log[-2000:]


async def test_overrides_act_on_message_counts(mesh: Mesh) -> None:
    mesh.write("telemetry.yaml", TELEMETRY)
    path = f"/{SERVICE}/Chat"
    async with _channel(mesh) as channel:
        await eventually(lambda: _answered(channel), timeout=30, what="gRPC through both sidecars")

        async def tagged() -> bool:
            """The overrides are in force on both sides (a stream counted with the tags they add)."""
            await _ping_pong(channel, 1)
            text = await scrape(mesh.client, mesh.ip(CLIENT))
            assert total(text, REQUESTS, reporter="source", grpc_method=path) >= 1
            server = await scrape(mesh.client, mesh.ip(WEB))
            assert total(server, "istio_requests_total", reporter="destination", overridden="yes") >= 1
            return True

        await eventually(tagged, timeout=30, what="the overrides on both sides")
        before = {ip: await scrape(mesh.client, ip) for ip in (mesh.ip(CLIENT), mesh.ip(WEB))}
        await _ping_pong(channel, 4)

    async def client_counted() -> str:
        text = await scrape(mesh.client, mesh.ip(CLIENT))
        delta = total(text, REQUESTS, reporter="source", grpc_method=path) - total(
            before[mesh.ip(CLIENT)], REQUESTS, reporter="source", grpc_method=path
        )
        assert delta == 4, delta
        return text

    client = await eventually(client_counted, timeout=20, what="the client's request messages")
    # response messages disabled on the client (CLIENT mode) since the overrides applied
    assert total(client, RESPONSES, reporter="source") == total(before[mesh.ip(CLIENT)], RESPONSES, reporter="source")
    # the server's workload Telemetry disables both: nothing more counted there (its counting filters are gone)
    server = await scrape(mesh.client, mesh.ip(WEB))
    for name in (REQUESTS, RESPONSES):
        assert total(server, name, reporter="destination") == total(before[mesh.ip(WEB)], name, reporter="destination")
    # the counting filters are gone from the server's inbound listeners, kept on the client's outbound ones
    assert COUNTING not in await _listeners(mesh, "web-v1", "INBOUND")
    assert COUNTING in await _listeners(mesh, "client-5d8f", "OUTBOUND")
    # the server still counts the calls themselves
    assert total(server, "istio_requests_total", reporter="destination", overridden="yes", request_protocol="grpc") >= 2


GRPC_INGRESS = """\
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: greeter-ingress, namespace: istio-system}
spec:
  hosts: [grpc.example]
  gateways: [ingress]
  http:
  - route:
    - destination: {host: greeter.default.svc.cluster.local, port: {number: 7070}}
"""


async def test_message_counts_at_the_gateway(mesh: Mesh) -> None:
    """gRPC through the ingress gateway (h2c from the client) to the server sidecar: the gateway reports the
    message counts as a source, with its own workload."""
    await start_gateway(mesh)
    mesh.write("greeter-ingress.yaml", GRPC_INGRESS)
    target, authority = f"{mesh.ip(GATEWAY)}:8080", "grpc.example"
    async with grpc.aio.insecure_channel(target, options=[("grpc.default_authority", authority)]) as channel:
        await eventually(lambda: _answered(channel), timeout=30, what="gRPC through the gateway")
        assert await _ping_pong(channel, 2) == [b"1:m0", b"2:m0", b"1:m1", b"2:m1"]

    async def counted() -> str:
        text = await scrape(mesh.client, mesh.ip(GATEWAY))
        ok = total(text, "istio_requests_total", reporter="source", grpc_response_status="0", response_code="200")
        assert ok >= 2
        unary = ok - 1  # the stream is one call: two request messages, four response messages
        assert _counts(text, "source", grpc_response_status="0") == (unary + 2, unary + 4)
        return text

    text = await eventually(counted, timeout=20, what="the gateway's message counts")
    labels = only(text, REQUESTS, reporter="source", destination_service_name="greeter")
    expected = {
        "request_protocol": "grpc",
        "source_workload": "istio-ingressgateway",
        "source_workload_namespace": "istio-system",
        "destination_workload": "web-v1",
        "destination_service": HOST,
        "destination_principal": SPIFFE.format("web"),
    }
    assert subset(labels, expected) == {}
