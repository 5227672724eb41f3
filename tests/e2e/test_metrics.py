"""Istio's standard metrics through real Envoys with real mTLS: a client sidecar, a server sidecar and a
server without sidecar. After requests with known status codes, both reporters' merged endpoints (15020)
show `istio_requests_total` with Istio's labels and the right counts, `unknown` where Istio puts it, the
histograms count every request, Envoy's 15090 endpoint shows the same names, TCP byte counters match the
bytes sent, and the peer-metadata headers never reach an application."""

from __future__ import annotations

import asyncio
import pathlib
from collections.abc import AsyncIterator

import pytest

from tests.e2e.harness import Mesh, eventually, free_port, logs_on_failure
from tests.e2e.metrics_lab import (
    CLIENT,
    GATEWAY,
    SPIFFE,
    TCP_SERVICE,
    WEB,
    WEB_TCP,
    only,
    samples,
    scrape,
    start_gateway,
    start_metrics_mesh,
    subset,
    total,
)

pytestmark = pytest.mark.e2e

REQUESTS = "istio_requests_total"


@pytest.fixture
async def mesh(tmp_path: pathlib.Path) -> AsyncIterator[Mesh]:
    async with logs_on_failure(Mesh(work_dir=tmp_path, delta=False)) as m:
        await start_metrics_mesh(m, tmp_path)
        yield m


async def _send(mesh: Mesh, *, host: str, statuses: dict[int, int]) -> None:
    for status, count in statuses.items():
        for _ in range(count):
            got, _, _ = await mesh.request(via_ip=mesh.ip(CLIENT), host=host, path=f"/?status={status}")
            assert got == status


async def _routed(mesh: Mesh, host: str) -> bool:
    status, _, _ = await mesh.request(via_ip=mesh.ip(CLIENT), host=host, path="/warmup")
    return status == 200


async def test_requests_total_on_both_reporters(mesh: Mesh) -> None:
    for host in ("web:9080", "plain.other:9080"):
        await eventually(lambda h=host: _routed(mesh, h), timeout=30, what=f"{host} routed")  # type: ignore[misc]
    await _send(mesh, host="web:9080", statuses={200: 5, 503: 3, 404: 2})
    await _send(mesh, host="plain.other:9080", statuses={200: 4})

    client_identity = {
        "source_workload": "client",
        "source_workload_namespace": "default",
        "source_app": "client",
        "source_version": "v7",
        "source_cluster": "Kubernetes",
    }
    web_identity = {
        "destination_workload": "web-v1",
        "destination_workload_namespace": "default",
        "destination_app": "web",
        "destination_version": "v1",
        "destination_cluster": "Kubernetes",
        "destination_service": "web.default.svc.cluster.local",
        "destination_service_name": "web",
        "destination_service_namespace": "default",
    }

    async def client_counted() -> str:
        text = await scrape(mesh.client, mesh.ip(CLIENT))
        assert total(text, REQUESTS, reporter="source", destination_service_name="web", response_code="200") == 6
        assert total(text, REQUESTS, reporter="source", destination_service_name="plain", response_code="200") == 5
        return text

    text = await eventually(client_counted, timeout=20, what="the client's istio_requests_total")
    for code, count in (("200", 6), ("503", 3), ("404", 2)):
        labels = only(text, REQUESTS, reporter="source", destination_service_name="web", response_code=code)
        expected = {
            **client_identity,
            **web_identity,
            "source_principal": SPIFFE.format("client"),
            "destination_principal": SPIFFE.format("web"),
            "request_protocol": "http",
            "response_flags": "-",
            "connection_security_policy": "unknown",
            "grpc_response_status": "",
        }
        assert subset(labels, expected) == {}
        assert total(text, REQUESTS, reporter="source", destination_service_name="web", response_code=code) == count
    # the server without sidecar: nothing answers the exchange, no mTLS
    plain = only(text, REQUESTS, reporter="source", destination_service_name="plain", response_code="200")
    assert (
        subset(
            plain,
            {
                **client_identity,
                "destination_workload": "unknown",
                "destination_workload_namespace": "unknown",
                "destination_app": "unknown",
                "destination_version": "unknown",
                "destination_principal": "unknown",
                "destination_service": "plain.other.svc.cluster.local",
                "destination_service_namespace": "other",
            },
        )
        == {}
    )

    async def server_counted() -> str:
        text = await scrape(mesh.client, mesh.ip(WEB))
        assert total(text, REQUESTS, reporter="destination", source_workload="client") == 11
        return text

    text = await eventually(server_counted, timeout=20, what="the server's istio_requests_total")
    for code, count in (("200", 6), ("503", 3), ("404", 2)):
        labels = only(text, REQUESTS, reporter="destination", source_workload="client", response_code=code)
        expected = {
            **client_identity,
            **web_identity,
            "source_principal": SPIFFE.format("client"),
            "destination_principal": SPIFFE.format("web"),
            "connection_security_policy": "mutual_tls",
            "request_protocol": "http",
        }
        assert subset(labels, expected) == {}
        assert total(text, REQUESTS, reporter="destination", response_code=code, source_workload="client") == count
    # the app behind the server sidecar never saw the exchanged identity headers
    for app in mesh.apps[:1]:
        leaked = [r["headers"] for r in app.received if any(h.startswith("x-meshd-peer-") for h in r["headers"])]
        assert leaked == []


async def test_client_without_sidecar_is_unknown_and_plaintext(mesh: Mesh) -> None:
    """A caller without sidecar reaches the server sidecar's inbound port in plaintext (PERMISSIVE)."""
    url = f"http://{mesh.ip(WEB)}:15006/?status=201"

    async def answered() -> bool:
        async with mesh.client.get(url, headers={"Host": "web:9080"}) as resp:
            return resp.status == 201

    await eventually(answered, timeout=30, what="the inbound listener")
    for _ in range(2):
        assert await answered()

    async def counted() -> dict[str, str]:
        text = await scrape(mesh.client, mesh.ip(WEB))
        assert total(text, REQUESTS, reporter="destination", response_code="201") == 3
        return only(text, REQUESTS, reporter="destination", response_code="201")

    labels = await eventually(counted, timeout=20, what="the plaintext request counted")
    assert (
        subset(
            labels,
            {
                "source_workload": "unknown",
                "source_workload_namespace": "unknown",
                "source_app": "unknown",
                "source_principal": "unknown",
                "destination_workload": "web-v1",
                "destination_principal": "unknown",
                "connection_security_policy": "none",
            },
        )
        == {}
    )


async def test_histograms_and_envoy_endpoint(mesh: Mesh) -> None:
    await eventually(lambda: _routed(mesh, "web:9080"), timeout=30, what="web routed")
    body = "x" * 1500
    for _ in range(4):
        async with mesh.client.post(
            f"http://{mesh.ip(CLIENT)}:9080/?delay_ms=30", data=body, headers={"Host": "web:9080"}
        ) as resp:
            assert resp.status == 200

    async def flushed() -> str:  # histograms reach the admin output at Envoy's stats flush (5 s)
        text = await scrape(mesh.client, mesh.ip(CLIENT))
        count = total(text, "istio_request_bytes_count", reporter="source", response_code="200")
        assert count >= 5, count  # the warm-up request and the four posts
        return text

    text = await eventually(flushed, timeout=30, interval=0.5, what="the histograms flushed")
    # four posts of 1500 bytes: in the (1000, 10000] bucket of request_bytes
    le_1000 = total(text, "istio_request_bytes_bucket", reporter="source", response_code="200", le="1000")
    le_10000 = total(text, "istio_request_bytes_bucket", reporter="source", response_code="200", le="10000")
    assert le_10000 - le_1000 == 4
    slow = total(text, "istio_request_duration_milliseconds_count", reporter="source", response_code="200")
    fast = total(text, "istio_request_duration_milliseconds_bucket", reporter="source", response_code="200", le="25")
    assert slow - fast >= 4  # each post waited 30 ms in the app
    assert total(text, "istio_response_bytes_count", reporter="source", response_code="200") >= 5
    # Envoy's own endpoint (15090) names Istio's metrics the same way; Envoy's stats keep envoy_ names
    envoy_text = await scrape(mesh.client, mesh.ip(CLIENT), port=15090)
    assert total(envoy_text, REQUESTS, reporter="source", destination_service_name="web") >= 5
    assert "envoy_istio_" not in envoy_text and "envoy_istio_" not in text
    assert samples(envoy_text, "envoy_server_live")
    # the merged endpoint has the agent's own metrics too
    assert total(text, "istio_agent_scrapes_total") >= 1


async def test_gateway_reports_as_source(mesh: Mesh) -> None:
    """An ingress gateway reports its requests as Istio's gateways do (reporter source, its own workload as the
    source); the server sidecar sees the gateway as the source over mTLS."""
    await start_gateway(mesh)
    url = f"http://{mesh.ip(GATEWAY)}:8080/?status=202"

    async def through() -> bool:
        async with mesh.client.get(url, headers={"Host": "shop.example"}) as resp:
            return resp.status == 202

    await eventually(through, timeout=30, what="gateway -> web")
    assert await through()
    gateway_source = {
        "source_workload": "istio-ingressgateway",
        "source_workload_namespace": "istio-system",
        "source_principal": SPIFFE.format("istio-ingressgateway-service-account").replace(
            "ns/default", "ns/istio-system"
        ),
        "destination_workload": "web-v1",
        "destination_principal": SPIFFE.format("web"),
        "destination_service": "web.default.svc.cluster.local",
    }

    async def counted(ip: str, reporter: str) -> dict[str, str]:
        text = await scrape(mesh.client, ip)
        assert total(text, REQUESTS, reporter=reporter, response_code="202") == 2
        return only(text, REQUESTS, reporter=reporter, response_code="202")

    at_gateway = await eventually(lambda: counted(mesh.ip(GATEWAY), "source"), timeout=20, what="gateway metrics")
    assert subset(at_gateway, {**gateway_source, "connection_security_policy": "unknown"}) == {}
    at_web = await eventually(lambda: counted(mesh.ip(WEB), "destination"), timeout=20, what="server metrics")
    assert subset(at_web, {**gateway_source, "connection_security_policy": "mutual_tls"}) == {}


REPLY = 1234


async def _reply_server(host: str, port: int) -> asyncio.Server:
    """Reads one line, answers REPLY bytes and closes."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readline()
        writer.write(b"r" * REPLY)
        await writer.drain()
        writer.close()

    return await asyncio.start_server(handle, host, port)


async def _exchange(ip: str, payload: bytes) -> int:
    reader, writer = await asyncio.open_connection(ip, 9000)
    try:
        writer.write(payload)
        await writer.drain()
        return len(await asyncio.wait_for(reader.read(), 10))
    finally:
        writer.close()


async def test_tcp_byte_counters(mesh: Mesh) -> None:
    """TCP over mTLS from the client sidecar to the server sidecar's ingress port, then to its app. Counted
    from once the warm-up's connections are: a try made while config was still arriving may have closed
    without connecting upstream (closed, never opened), which the measured connections must not blur."""
    app_port = free_port()
    mesh.write("echo.yaml", TCP_SERVICE.format(bind=mesh.ip(WEB_TCP), app_port=app_port))
    server = await _reply_server("127.0.0.1", app_port)
    sides = ((mesh.ip(CLIENT), "source"), (mesh.ip(WEB), "destination"))

    def tcp_labels(reporter: str) -> dict[str, str]:
        # TCP has no identity exchange: each side knows its own workload, the client side the service
        tcp = {"request_protocol": "tcp", "reporter": reporter}
        tcp.update({"destination_service_name": "echo"} if reporter == "source" else {"destination_workload": "web-v1"})
        return tcp

    def counts(text: str, reporter: str) -> dict[str, float]:
        names = ("opened", "closed", "received_bytes", "sent_bytes")
        metric = {n: f"istio_tcp_{'connections_' if n in ('opened', 'closed') else ''}{n}_total" for n in names}
        return {n: total(text, metric[n], **tcp_labels(reporter)) for n in names}

    seen: list[list[dict[str, float]]] = []

    async def settled() -> list[dict[str, float]] | None:
        """Both sides' counts, once two scrapes half a second apart agree (the warm-up is counted)."""
        now = [counts(await scrape(mesh.client, ip), reporter) for ip, reporter in sides]
        steady = bool(seen) and seen[-1] == now and now[0]["closed"] > 0
        seen.append(now)
        return now if steady else None

    try:
        await eventually(lambda: _exchange(mesh.ip(CLIENT), b"warm\n"), timeout=30, what="TCP through the sidecars")
        before = await eventually(settled, timeout=30, interval=0.5, what="the warm-up's connections counted")
        for size in (700, 300):
            assert await _exchange(mesh.ip(CLIENT), b"a" * (size - 1) + b"\n") == REPLY
    finally:
        server.close()

    for (ip, reporter), baseline in zip(sides, before, strict=True):
        tcp = tcp_labels(reporter)

        async def counted(i: str = ip, r: str = reporter, b: dict[str, float] = baseline) -> str:
            text = await scrape(mesh.client, i)
            assert counts(text, r)["closed"] - b["closed"] >= 2
            return text

        text = await eventually(counted, timeout=20, what=f"{reporter} TCP metrics")
        delta = {n: v - baseline[n] for n, v in counts(text, reporter).items()}
        assert delta == {"opened": 2, "closed": 2, "received_bytes": 700 + 300, "sent_bytes": 2 * REPLY}, reporter
        # (a warm-up try that found no upstream yet has a series of its own, response_flags UF,URX)
        labels = only(text, "istio_tcp_sent_bytes_total", response_flags="-", **tcp)
        assert labels["source_principal"] == SPIFFE.format("client")
        assert labels["destination_principal"] == SPIFFE.format("web")
        assert labels["connection_security_policy"] == ("unknown" if reporter == "source" else "mutual_tls")
