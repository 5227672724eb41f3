"""Access logs and tracing through real Envoys: `meshd agent` sidecars with mTLS identities from meshd's CA
(client in namespace `front`, web in `default`) and a gateway (`--proxy-type router`, namespace
istio-system) in front of web. The mesh config (`--mesh-config`) sets `accessLogFile: /dev/stdout` (Istio's
default TEXT format) and the extension providers Telemetry resources name: a JSON file logger, Zipkin, and
OpenTelemetry (tracing and access logs) served by local collectors speaking the real protocols
(tests/e2e/telemetry_collectors.py). Each test writes its Telemetry resources and waits for them to apply;
access log lines are read from each Envoy's stdout (its log file), selected by a path unique to the test."""

from __future__ import annotations

import asyncio
import json
import re
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
import pytest_asyncio

from meshd.translate.telemetry.access_log import ISTIO_JSON_FORMAT
from tests.e2e.agents import write_ca_tokens
from tests.e2e.harness import Mesh, eventually, logs_on_failure
from tests.e2e.l4_servers import Servers, read_line
from tests.e2e.telemetry_collectors import OtlpCollector, Span, ZipkinCollector
from tests.e2e.workloads import meshed_service_yaml

pytestmark = [pytest.mark.e2e, pytest.mark.asyncio(loop_scope="module")]

CLIENT, WEB, GATEWAY, DB, ZIPKIN, OTLP = 1, 2, 3, 4, 8, 9
# Envoy writes access log files out every 10 s by default: the sidecars here every 100 ms
FLUSH = ("--envoy-arg=--file-flush-interval-msec", "--envoy-arg=100")
TOKENS = {
    "tok-client": ("front", "client"),
    "tok-web": ("default", "web"),
    "tok-gw": ("istio-system", "ingress"),
}
WEB_HOST = "web.default.svc.cluster.local:9080"

MESH_YAML = """\
apiVersion: v1
kind: Service
metadata: {{name: db, namespace: default}}
spec:
  ports: [{{name: tcp-db, port: 5432}}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: db, namespace: default, labels: {{kubernetes.io/service-name: db}}}}
addressType: IPv4
ports: [{{name: tcp-db, port: 5432}}]
endpoints:
- addresses: [{db}]
---
apiVersion: v1
kind: Pod
metadata: {{name: client, namespace: front, labels: {{app: client, security.istio.io/tlsMode: istio}}}}
spec: {{serviceAccountName: client}}
status: {{podIP: {client}}}
---
apiVersion: v1
kind: Pod
metadata: {{name: ingress-1, namespace: istio-system, labels: {{istio: ingressgateway}}}}
spec: {{serviceAccountName: ingress}}
status: {{podIP: {gateway}}}
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: public, namespace: istio-system}}
spec:
  selector: {{istio: ingressgateway}}
  servers:
  - port: {{number: 8080, name: http, protocol: HTTP}}
    hosts: ["*"]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: web-public, namespace: istio-system}}
spec:
  hosts: ["*"]
  gateways: [public]
  http:
  - route:
    - destination: {{host: web.default.svc.cluster.local, port: {{number: 9080}}}}
---
apiVersion: v1
kind: Service
metadata: {{name: zipkin, namespace: istio-system}}
spec:
  ports: [{{name: http-zipkin, port: 9411}}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: zipkin, namespace: istio-system, labels: {{kubernetes.io/service-name: zipkin}}}}
addressType: IPv4
ports: [{{name: http-zipkin, port: 9411}}]
endpoints:
- addresses: [{zipkin}]
---
apiVersion: v1
kind: Service
metadata: {{name: otel-collector, namespace: observability}}
spec:
  ports: [{{name: grpc-otlp, port: 4317}}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: otel-collector, namespace: observability, labels: {{kubernetes.io/service-name: otel-collector}}}}
addressType: IPv4
ports: [{{name: grpc-otlp, port: 4317}}]
endpoints:
- addresses: [{otlp}]
"""

MESH_CONFIG = """\
accessLogFile: /dev/stdout
extensionProviders:
- name: json-log
  envoyFileAccessLog: {path: /dev/stdout, logFormat: {labels: {}}}
- name: zipkin
  zipkin: {service: zipkin.istio-system.svc.cluster.local, port: 9411}
- name: otel
  opentelemetry: {service: otel-collector.observability.svc.cluster.local, port: 4317}
- name: otel-als
  envoyOtelAls: {service: otel-collector.observability.svc.cluster.local, port: 4317}
"""

# Istio's default TEXT format, field by field (access_log.ISTIO_TEXT_FORMAT)
TEXT_LINE = re.compile(
    r'^\[(?P<start>\d{4}-\d\d-\d\dT[^\]]+)\] "(?P<method>\S+) (?P<path>\S+) (?P<protocol>\S+)" '
    r"(?P<code>\d+) (?P<flags>\S+) (?P<details>\S+) (?P<termination>\S+) "
    r'"(?P<transport_failure>[^"]*)" (?P<received>\d+) (?P<sent>\d+) (?P<duration>\d+) (?P<upstream_time>\S+) '
    r'"(?P<xff>[^"]*)" "(?P<agent>[^"]*)" "(?P<request_id>[^"]*)" "(?P<authority>[^"]*)" "(?P<upstream_host>[^"]*)" '
    r"(?P<cluster>\S+) (?P<upstream_local>\S+) (?P<downstream_local>\S+) (?P<downstream_remote>\S+) "
    r"(?P<sni>\S+) (?P<route>\S+)$"
)


def telemetry(name: str, namespace: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "telemetry.istio.io/v1",
        "kind": "Telemetry",
        "metadata": {"name": name, "namespace": namespace},
        "spec": spec,
    }


@dataclass
class TelemetryMesh:
    mesh: Mesh
    zipkin: ZipkinCollector
    otlp: OtlpCollector

    sent: list[tuple[str, float]] = field(default_factory=list)

    def apply(self, *docs: dict[str, Any]) -> None:
        """Replace the test's Telemetry resources."""
        self.mesh.write("telemetry.yaml", "\n---\n".join(json.dumps(d) for d in docs))
        self.sent = []

    def probe(self) -> str:
        """A fresh marker path, remembered: convergence checks look at every probe sent since `apply` (a
        line is written out up to a flush interval after its request)."""
        self.sent.append((marker(), time.monotonic()))
        return self.sent[-1][0]

    @property
    def probes(self) -> list[str]:
        return [p for p, _ in self.sent]

    @property
    def settled(self) -> list[str]:
        """The probes sent long enough ago (many flush intervals) that every line of theirs is written out."""
        now = time.monotonic()
        return [p for p, at in self.sent if now - at > 1.0]

    async def stays(self, condition: Callable[[], bool], *, seconds: float, what: str) -> None:
        """`condition` holds for `seconds` (many flush intervals), polled."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            assert condition(), what
            await asyncio.sleep(0.05)

    def log(self, pod: str) -> str:
        path = self.mesh.agents[pod].workdir / "envoy.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def text_lines(self, pod: str, marker: str) -> list[re.Match[str]]:
        found = (TEXT_LINE.match(line) for line in self.log(pod).splitlines() if marker in line)
        return [m for m in found if m is not None]

    def json_lines(self, pod: str, marker: str) -> list[dict[str, Any]]:
        out = []
        for line in self.log(pod).splitlines():
            if line.startswith("{") and marker in line:
                try:
                    out.append(json.loads(line))
                except ValueError:
                    continue  # being written out
        return out

    async def call(self, path: str, *, via: int = CLIENT) -> tuple[int, dict[str, Any]]:
        """client sidecar -> web (its sidecar) -> the app; (status, the request as the app saw it)."""
        status, _, body = await self.mesh.request(via_ip=self.mesh.ip(via), host=WEB_HOST, path=path)
        try:
            seen: dict[str, Any] = json.loads(body)["request"]
        except (ValueError, KeyError, TypeError):
            seen = {}
        return status, seen

    async def through_gateway(self, path: str) -> tuple[int, dict[str, Any]]:
        status, _, body = await self.mesh.request(
            via_ip=self.mesh.ip(GATEWAY), host="web.example.com", port=8080, path=path
        )
        try:
            seen: dict[str, Any] = json.loads(body)["request"]
        except (ValueError, KeyError, TypeError):
            seen = {}
        return status, seen


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def tm(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[TelemetryMesh]:
    work = tmp_path_factory.mktemp("telemetry")
    async with logs_on_failure(Mesh(work_dir=work, delta=False)) as m:
        tokens = write_ca_tokens(work / "tokens.yaml", TOKENS)
        (work / "mesh.yaml").write_text(MESH_CONFIG)
        m.meshd.extra_args = ("--ca-token-file", str(tokens), "--mesh-config", str(work / "mesh.yaml"))
        m.write(
            "mesh.yaml",
            meshed_service_yaml("web", ip=m.ip(WEB), service_account="web")
            + "---\n"
            + MESH_YAML.format(
                client=m.ip(CLIENT),
                gateway=m.ip(GATEWAY),
                zipkin=m.ip(ZIPKIN),
                otlp=m.ip(OTLP),
                db=m.ip(DB),
            ),
        )
        m.write("telemetry.yaml", "")
        await m.meshd.start()
        zipkin = await ZipkinCollector().start(m.ip(ZIPKIN), 9411)
        otlp = await OtlpCollector().start(m.ip(OTLP), 4317)
        servers = Servers()
        await servers.name(m.ip(DB), 5432, "db")  # a TCP server without a sidecar
        try:
            await m.app(service="web", version="v1", pod="web", ip=m.ip(WEB))
            await m.agent_sidecar(
                pod="web", ip=m.ip(WEB), service_account="web", labels={"app": "web"}, token="tok-web"
            )
            await m.agent_sidecar(
                pod="client", ip=m.ip(CLIENT), namespace="front", service_account="client", labels={"app": "client"},
                token="tok-client", args=FLUSH,
            )  # fmt: skip
            await m.agent_sidecar(
                pod="ingress-1", ip=m.ip(GATEWAY), namespace="istio-system", service_account="ingress",
                labels={"istio": "ingressgateway"}, token="tok-gw", args=("--proxy-type", "router", *FLUSH),
            )  # fmt: skip
            out = TelemetryMesh(m, zipkin, otlp)

            async def reachable() -> bool:
                return (await out.call("/ready"))[0] == 200 and (await out.through_gateway("/ready"))[0] == 200

            await eventually(reachable, timeout=40, what="client -> web and gateway -> web over mTLS")
            yield out
        finally:
            await zipkin.stop()
            await otlp.stop()
            await servers.close()


def marker() -> str:
    return f"/m-{uuid.uuid4().hex[:12]}"


async def test_mesh_config_access_log_is_istios_default_text_one_line_per_request(tm: TelemetryMesh) -> None:
    """`accessLogFile: /dev/stdout` and no Telemetry: both sidecars log each request once, in Istio's
    default TEXT format; the outbound line names web's cluster, the inbound one the inbound cluster, and
    both carry the same request id."""
    tm.apply()
    path = marker()
    for i in range(3):
        assert (await tm.call(f"{path}/{i}"))[0] == 200

    async def logged() -> bool:
        return len(tm.text_lines("client", path)) == 3 and len(tm.text_lines("web", path)) == 3

    await eventually(logged, timeout=20, what="three TEXT lines on each sidecar")
    for i in range(3):
        (out,) = [m for m in tm.text_lines("client", f"{path}/{i}")]
        (inb,) = [m for m in tm.text_lines("web", f"{path}/{i}")]
        for line in (out, inb):
            assert (line["method"], line["path"], line["protocol"], line["code"]) == (
                "GET",
                f"{path}/{i}",
                "HTTP/1.1",
                "200",
            )
            assert line["authority"] == WEB_HOST and line["flags"] == "-" and line["details"] == "via_upstream"
        assert out["cluster"] == "outbound|9080||web.default.svc.cluster.local"
        assert inb["cluster"] == "inbound|8080||"
        assert out["request_id"] == inb["request_id"] != ""
        assert inb["upstream_host"] == f"{tm.mesh.ip(WEB)}:8080"


async def test_tcp_connections_are_logged_once_each(tm: TelemetryMesh) -> None:
    """TCP through the client sidecar (its outbound tcp_proxy to `db`, a server without a sidecar): one TEXT
    line per connection with the TCP fields (no method, path or status), the cluster and the bytes."""
    tm.apply()
    db = "outbound|5432||db.default.svc.cluster.local"
    before = len([m for m in tm.text_lines("client", db)])

    async def answered() -> bool:
        return await read_line(tm.mesh.ip(CLIENT), 5432) == "db"

    await eventually(answered, timeout=30, what="db through the client sidecar")
    for _ in range(2):
        assert await read_line(tm.mesh.ip(CLIENT), 5432) == "db"
    lines: list[re.Match[str]] = []

    async def logged() -> bool:
        lines[:] = tm.text_lines("client", db)
        return len(lines) - before >= 3

    await eventually(logged, timeout=20, what="a line per TCP connection")
    await tm.stays(lambda: len(tm.text_lines("client", db)) - before == 3, seconds=1.0, what="exactly three lines")
    for line in lines[before:]:
        assert (line["method"], line["path"], line["protocol"], line["code"]) == ("-", "-", "-", "0")
        assert line["cluster"] == db and line["sent"] == "3"  # "db\n" to the client
        assert line["upstream_host"] == f"{tm.mesh.ip(DB)}:5432"


async def test_telemetry_json_provider_logs_istios_default_json(tm: TelemetryMesh) -> None:
    """A mesh-wide Telemetry (root namespace, no selector) with a JSON file provider replaces the mesh
    config's TEXT log on every proxy: one JSON line per request with Istio's default keys."""
    tm.apply(telemetry("mesh-default", "istio-system", {"accessLogging": [{"providers": [{"name": "json-log"}]}]}))

    async def applied() -> bool:
        probe = tm.probe()
        await tm.call(probe)
        return any(tm.json_lines("web", p) and tm.json_lines("client", p) for p in tm.probes)

    await eventually(applied, timeout=30, what="JSON access logs on both sidecars")
    path = marker()
    assert (await tm.call(path))[0] == 200
    assert (await tm.through_gateway(path + "/gw"))[0] == 200

    async def logged() -> bool:
        return len(tm.json_lines("client", path)) == 1 and len(tm.json_lines("web", path)) == 2

    await eventually(logged, timeout=20, what="one JSON line per request and sidecar")
    (line,) = tm.json_lines("client", path)
    assert set(line) == {k for k, _ in ISTIO_JSON_FORMAT}
    assert (line["method"], line["path"], line["response_code"], line["protocol"]) == ("GET", path, 200, "HTTP/1.1")
    assert line["upstream_cluster"] == "outbound|9080||web.default.svc.cluster.local"
    assert not tm.text_lines("client", path)  # the mesh config's TEXT log no longer applies
    # the gateway logs too (CLIENT side: it forwards to web)
    (gw,) = tm.json_lines("ingress-1", path + "/gw")
    assert gw["upstream_cluster"] == "outbound|9080||web.default.svc.cluster.local" and gw["response_code"] == 200


async def test_filter_keeps_only_5xx(tm: TelemetryMesh) -> None:
    """A namespace Telemetry whose filter is `response.code >= 500` (CEL): web's sidecar logs only the
    5xx answers; the client's (another namespace) still logs every request."""
    tm.apply(
        telemetry(
            "errors-only",
            "default",
            {
                "accessLogging": [
                    {"providers": [{"name": "json-log"}], "filter": {"expression": "response.code >= 500"}}
                ]
            },
        )
    )

    async def applied() -> bool:
        probe = tm.probe()
        await tm.call(probe + "?status=200")
        await tm.call(probe + "/e?status=503")
        # the 200 was logged before the 503 if at all: once the 503 is written out, the 200 would be too
        return any(tm.json_lines("web", p + "/e") and not tm.json_lines("web", p + "?") for p in tm.probes)

    await eventually(applied, timeout=30, what="web logging 5xx only")
    path = marker()
    codes = (200, 503, 404, 500, 201, 502)
    for i, code in enumerate(codes):
        assert (await tm.call(f"{path}/{i}?status={code}"))[0] == code

    async def logged() -> bool:
        return len(tm.text_lines("client", path)) == len(codes) and len(tm.json_lines("web", path)) == 3

    await eventually(logged, timeout=20, what="the 5xx lines on web, every line on the client")
    assert sorted(line["response_code"] for line in tm.json_lines("web", path)) == [500, 502, 503]


async def test_disabled_on_a_namespace(tm: TelemetryMesh) -> None:
    """`disabled: true` in the client's namespace: its sidecar stops logging; web keeps the mesh config's log."""
    tm.apply(telemetry("quiet", "front", {"accessLogging": [{"disabled": True}]}))

    async def applied() -> bool:
        probe = tm.probe()
        await tm.call(probe)
        return any(tm.text_lines("web", p) and not tm.text_lines("client", p) for p in tm.settled)

    await eventually(applied, timeout=30, what="the client's access log disabled")
    path = marker()
    for i in range(3):
        assert (await tm.call(f"{path}/{i}"))[0] == 200
    await eventually(lambda: _count(tm.text_lines("web", path), 3), timeout=20, what="web's lines")
    await tm.stays(lambda: path not in tm.log("client"), seconds=1.5, what="no line on the client")


async def _count(lines: list[Any], expected: int) -> bool:
    return len(lines) == expected


def _spans(spans: list[Span], path: str) -> list[Span]:
    return [s for s in spans if path in s.tags.get("http.url", "") or path in s.tags.get("url.path", "")]


async def test_zipkin_spans_from_both_sidecars_share_one_trace(tm: TelemetryMesh) -> None:
    """Telemetry tracing through the Zipkin provider at 100%: the client sidecar starts the trace (B3 and
    W3C headers reach the app), web's sidecar joins it; the collector gets a CLIENT span and a SERVER span
    (its child) with one trace id and the custom tags."""
    tm.apply(
        telemetry(
            "tracing",
            "istio-system",
            {
                "tracing": [
                    {
                        "providers": [{"name": "zipkin"}],
                        "randomSamplingPercentage": 100,
                        "customTags": {
                            "team": {"literal": {"value": "payments"}},
                            "user": {"header": {"name": "x-user", "defaultValue": "nobody"}},
                        },
                    }
                ]
            },
        )
    )

    async def applied() -> bool:
        probe = marker()
        _, seen = await tm.call(probe)
        return "x-b3-traceid" in {k.lower() for k in seen.get("headers", {})}

    await eventually(applied, timeout=30, what="B3 headers from the client sidecar")

    async def traced() -> tuple[str, dict[str, Any]]:
        """A call whose two spans reach the collector (Envoy's Zipkin reporter drops a batch whose POST fails,
        as on a loaded machine: then another call)."""
        path = marker()
        status, seen = await tm.call(path)
        assert status == 200

        async def both() -> bool:
            return len(_spans(tm.zipkin.spans, path)) == 2

        await eventually(both, timeout=15, what="two spans at the Zipkin collector")
        return path, seen

    path, seen = await eventually(traced, timeout=60, what="a call traced by both sidecars")
    headers = {k.lower(): v for k, v in seen["headers"].items()}
    trace_id = headers["x-b3-traceid"]
    assert len(trace_id) == 32 and headers["x-b3-sampled"] == "1"
    assert headers["traceparent"].split("-")[1] == trace_id  # W3C propagation too
    spans = {s.kind: s for s in _spans(tm.zipkin.spans, path)}
    assert set(spans) == {"CLIENT", "SERVER"}
    assert spans["CLIENT"].trace_id == spans["SERVER"].trace_id == trace_id
    assert spans["SERVER"].parent_id == spans["CLIENT"].span_id
    assert spans["CLIENT"].tags["team"] == "payments" and spans["CLIENT"].tags["user"] == "nobody"
    assert spans["SERVER"].tags["upstream_cluster"].startswith("inbound|8080")


async def test_sampling_percentage_is_respected(tm: TelemetryMesh) -> None:
    """randomSamplingPercentage 20 over 300 requests: the traced share is within 5 standard deviations of
    20% (60 ± 35), and every sampled trace has both sidecars' spans (web follows the client's decision)."""
    tm.apply(
        telemetry(
            "tracing",
            "istio-system",
            {"tracing": [{"providers": [{"name": "zipkin"}], "randomSamplingPercentage": 20}]},
        )
    )

    async def applied() -> bool:
        probes = [marker() for _ in range(30)]
        sampled = 0
        for probe in probes:
            _, seen = await tm.call(probe)
            sampled += {k.lower(): v for k, v in seen.get("headers", {}).items()}.get("x-b3-sampled") == "1"
        return 0 < sampled < 25

    await eventually(applied, timeout=40, what="20% sampling applied")
    prefix = marker()
    total, sampled_ids = 300, set()
    for i in range(total):
        status, seen = await tm.call(f"{prefix}/{i}")
        assert status == 200
        headers = {k.lower(): v for k, v in seen["headers"].items()}
        if headers.get("x-b3-sampled") == "1":
            sampled_ids.add(headers["x-b3-traceid"])
    assert 25 <= len(sampled_ids) <= 95, len(sampled_ids)

    async def reported() -> bool:
        spans = _spans(tm.zipkin.spans, prefix)
        return len(spans) == 2 * len(sampled_ids)

    await eventually(reported, timeout=40, what="both spans of every sampled trace")
    spans = _spans(tm.zipkin.spans, prefix)
    assert {s.trace_id for s in spans} == sampled_ids


async def test_opentelemetry_tracing_and_access_logs_over_otlp(tm: TelemetryMesh) -> None:
    """The opentelemetry provider: OTLP/gRPC spans from both sidecars with one trace id (W3C traceparent
    reaches the app); the envoyOtelAls provider: one OTLP log record per request and sidecar."""
    tm.apply(
        telemetry(
            "otel",
            "istio-system",
            {
                "tracing": [{"providers": [{"name": "otel"}], "randomSamplingPercentage": 100}],
                "accessLogging": [{"providers": [{"name": "otel-als"}]}],
            },
        )
    )

    async def applied() -> bool:
        probe = marker()
        _, seen = await tm.call(probe)
        return "traceparent" in {k.lower() for k in seen.get("headers", {})} and "x-b3-traceid" not in {
            k.lower() for k in seen.get("headers", {})
        }

    await eventually(applied, timeout=30, what="W3C headers from the OpenTelemetry tracer")
    path = marker()
    status, seen = await tm.call(path)
    assert status == 200
    trace_id = {k.lower(): v for k, v in seen["headers"].items()}["traceparent"].split("-")[1]

    async def both() -> bool:
        return len([s for s in tm.otlp.spans if s.trace_id == trace_id]) == 2

    await eventually(both, timeout=30, what="two OTLP spans of one trace")
    spans = {s.kind: s for s in tm.otlp.spans if s.trace_id == trace_id}
    assert set(spans) == {"CLIENT", "SERVER"}
    assert spans["SERVER"].parent_id == spans["CLIENT"].span_id
    assert spans["CLIENT"].service == "client.front" and spans["SERVER"].service == "web.default"

    async def logs() -> bool:
        return len([e for e in tm.otlp.logs if path in e["body"]]) == 2

    await eventually(logs, timeout=30, what="one OTLP log record per sidecar")
