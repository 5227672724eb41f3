"""Telemetry `metrics.overrides` through real Envoys: a client sidecar and a server sidecar with mTLS
identities, a mesh-wide Telemetry (root namespace), a namespace one and a workload one (selector on the
server). After requests, both reporters' merged endpoints (15020) show the tags removed and added with values
Envoy evaluated (`request.host`, `request.method`, a request header), the metrics disabled by metric and mode,
one re-enabled by the workload level, the three levels' overrides applied one on top of the other (Istio's
documented rule); TCP metrics follow their own overrides; and removing the Telemetry brings Istio's defaults
back."""

from __future__ import annotations

import pathlib
from collections.abc import AsyncIterator

import pytest

from tests.e2e.harness import Mesh, eventually, free_port, logs_on_failure
from tests.e2e.metrics_lab import CLIENT, TCP_SERVICE, WEB, WEB_TCP, samples, scrape, start_metrics_mesh, total
from tests.e2e.test_metrics import REPLY, _exchange, _reply_server

pytestmark = pytest.mark.e2e

REQUESTS = "istio_requests_total"
TELEMETRY = """\
apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {name: mesh-default, namespace: istio-system}
spec:
  metrics:
  - providers: [{name: prometheus}]
    overrides:
    - match: {metric: REQUEST_COUNT}
      tagOverrides:
        request_protocol: {operation: REMOVE}
        request_host: {value: request.host}
        request_method: {value: request.method}
        user: {value: "request.headers['x-user']"}
    - match: {metric: REQUEST_SIZE}
      disabled: true
    - match: {metric: TCP_SENT_BYTES, mode: CLIENT}
      disabled: true
    - match: {metric: TCP_RECEIVED_BYTES}
      tagOverrides:
        mtls: {value: "connection.mtls ? 'yes' : 'no'"}
---
apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {name: namespace-default, namespace: default}
spec:
  metrics:
  - overrides:
    - match: {metric: REQUEST_COUNT}
      tagOverrides:
        level: {value: "'namespace'"}
---
apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {name: web, namespace: default}
spec:
  selector: {matchLabels: {app: web}}
  metrics:
  - overrides:
    - match: {customMetric: response_bytes, mode: SERVER}
      disabled: true
    - match: {metric: REQUEST_SIZE, mode: SERVER}
      disabled: false
    - match: {metric: REQUEST_COUNT, mode: SERVER}
      tagOverrides:
        level: {value: "'workload'"}
"""


@pytest.fixture
async def mesh(tmp_path: pathlib.Path) -> AsyncIterator[Mesh]:
    async with logs_on_failure(Mesh(work_dir=tmp_path, delta=False)) as m:
        await start_metrics_mesh(m, tmp_path)
        yield m


async def _routed(mesh: Mesh) -> bool:
    status, _, _ = await mesh.request(via_ip=mesh.ip(CLIENT), host="web:9080", path="/warmup")
    return status == 200


async def test_overrides_retag_and_disable_per_reporter(mesh: Mesh) -> None:
    mesh.write("telemetry.yaml", TELEMETRY)
    await eventually(lambda: _routed(mesh), timeout=30, what="web routed")

    async def counted(ip: str, reporter: str) -> str:
        """The overrides are in force (a request counted with the new tags) on the proxy at `ip`."""
        status, _, _ = await mesh.request(
            via_ip=mesh.ip(CLIENT), host="web:9080", path="/?status=201", headers={"x-user": "alice"}
        )
        assert status == 201
        text = await scrape(mesh.client, ip)
        assert total(text, REQUESTS, reporter=reporter, user="alice", response_code="201") >= 1
        return text

    for ip, reporter in ((mesh.ip(CLIENT), "source"), (mesh.ip(WEB), "destination")):
        await eventually(lambda i=ip, r=reporter: counted(i, r), timeout=30, what=f"{reporter}: overrides applied")  # type: ignore[misc]
    before = {ip: await scrape(mesh.client, ip) for ip in (mesh.ip(CLIENT), mesh.ip(WEB))}
    for _ in range(3):
        status, _, _ = await mesh.request(
            via_ip=mesh.ip(CLIENT), host="web:9080", path="/?status=201", headers={"x-user": "alice"}
        )
        assert status == 201

    for ip, reporter in ((mesh.ip(CLIENT), "source"), (mesh.ip(WEB), "destination")):
        text = await scrape(mesh.client, ip)
        tagged = {"reporter": reporter, "response_code": "201", "user": "alice"}
        delta = total(text, REQUESTS, **tagged) - total(before[ip], REQUESTS, **tagged)
        assert delta == 3, (reporter, delta)
        for labels, _ in samples(text, REQUESTS, **tagged):
            # values Envoy evaluated from the request; the removed tag is gone, the others stay
            assert labels["request_host"] == "web:9080" and labels["request_method"] == "GET", labels
            assert "request_protocol" not in labels, labels
            assert labels["destination_workload"] == "web-v1" and labels["source_workload"] == "client", labels
            # Istio's rule: each level's overrides apply on top of the inherited ones (mesh, namespace, workload):
            # the namespace level adds `level` without dropping the mesh's tags; the server's workload level sets
            # it again
            assert labels["level"] == ("namespace" if reporter == "source" else "workload"), labels
        # the histograms are not retagged: REQUEST_COUNT only
        duration = samples(text, "istio_request_duration_milliseconds_count", reporter=reporter, response_code="201")
        assert duration and all("request_protocol" in labels and "user" not in labels for labels, _ in duration)

    async def histograms() -> bool:
        """Envoy's histograms reach its stats at its next flush: polled."""
        client, server = (await scrape(mesh.client, mesh.ip(CLIENT))), (await scrape(mesh.client, mesh.ip(WEB)))
        # REQUEST_SIZE disabled mesh-wide, enabled again on the server by its workload Telemetry (SERVER mode)
        assert total(server, "istio_request_bytes_count", reporter="destination", response_code="201") >= 4
        assert total(client, "istio_request_bytes_count", reporter="source") == 0
        # response_bytes (customMetric) disabled on the server only
        assert total(client, "istio_response_bytes_count", reporter="source", response_code="201") >= 4
        assert total(server, "istio_response_bytes_count", reporter="destination") == 0
        return True

    await eventually(histograms, timeout=30, what="the size histograms as overridden")

    # TCP: sent bytes disabled on the client side only; received bytes carry an evaluated tag
    app_port = free_port()
    mesh.write("echo.yaml", TCP_SERVICE.format(bind=mesh.ip(WEB_TCP), app_port=app_port))
    reply = await _reply_server("127.0.0.1", app_port)
    try:
        await eventually(lambda: _exchange(mesh.ip(CLIENT), b"warm\n"), timeout=30, what="TCP through the sidecars")
    finally:
        reply.close()

    async def tcp_counted(ip: str, reporter: str, mtls: str) -> str:
        """The exchange's connection is logged at `ip` (polled: a connection is counted when Envoy closes it, and
        a refused first attempt may already be counted as closed, without bytes)."""
        text = await scrape(mesh.client, ip)
        assert total(text, "istio_tcp_connections_closed_total", reporter=reporter, request_protocol="tcp") >= 1
        # `connection` is the downstream connection: the app's plaintext one at the client, mTLS at the server
        assert total(text, "istio_tcp_received_bytes_total", reporter=reporter, mtls=mtls) >= 5
        return text

    client = await eventually(lambda: tcp_counted(mesh.ip(CLIENT), "source", "no"), timeout=20, what="client TCP")
    server = await eventually(lambda: tcp_counted(mesh.ip(WEB), "destination", "yes"), timeout=20, what="server TCP")
    assert total(client, "istio_tcp_sent_bytes_total", reporter="source") == 0
    assert total(server, "istio_tcp_sent_bytes_total", reporter="destination") >= REPLY
    assert total(client, "istio_tcp_received_bytes_total", reporter="source", mtls="yes") == 0

    # without the Telemetry, Istio's defaults again: the client side counts the bytes it sends
    mesh.write("telemetry.yaml", "")
    reply = await _reply_server("127.0.0.1", app_port)

    async def defaults() -> bool:
        assert await _exchange(mesh.ip(CLIENT), b"again\n") == REPLY
        text = await scrape(mesh.client, mesh.ip(CLIENT))
        assert total(text, "istio_tcp_sent_bytes_total", reporter="source") >= REPLY
        return True

    try:
        await eventually(defaults, timeout=30, what="the default TCP metrics back")
    finally:
        reply.close()
