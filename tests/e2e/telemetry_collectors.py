"""Local telemetry collectors for the e2e tests, speaking the real wire protocols Envoy sends:
- Zipkin v2 JSON over HTTP (`POST /api/v2/spans`, what Envoy's Zipkin tracer sends with HTTP_JSON);
- OTLP over gRPC: `opentelemetry.proto.collector.trace.v1.TraceService/Export` (Envoy's OpenTelemetry tracer)
  and `opentelemetry.proto.collector.logs.v1.LogsService/Export` (its OpenTelemetry access logger), decoded
  with the opentelemetry-proto messages the venv has (xds-protos ships them), served by grpc.aio's generic
  handlers (no generated stubs needed).
Each keeps what it received, flattened to plain dicts."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import grpc
from aiohttp import web
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2


@dataclass
class Span:
    trace_id: str
    span_id: str
    parent_id: str
    name: str
    kind: str
    service: str
    tags: dict[str, str] = field(default_factory=dict)


class ZipkinCollector:
    def __init__(self) -> None:
        self.spans: list[Span] = []
        self.posts = 0
        self._runner: web.AppRunner | None = None

    async def start(self, host: str, port: int) -> ZipkinCollector:
        app = web.Application()
        app.router.add_post("/api/v2/spans", self._spans)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        await web.TCPSite(self._runner, host, port).start()
        return self

    async def _spans(self, request: web.Request) -> web.Response:
        self.posts += 1
        for raw in json.loads(await request.read()):
            self.spans.append(
                Span(
                    trace_id=raw["traceId"],
                    span_id=raw["id"],
                    parent_id=raw.get("parentId", ""),
                    name=raw.get("name", ""),
                    kind=raw.get("kind", ""),
                    service=raw.get("localEndpoint", {}).get("serviceName", ""),
                    tags=dict(raw.get("tags", {})),
                )
            )
        return web.Response(status=202)

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


_KINDS = {1: "INTERNAL", 2: "SERVER", 3: "CLIENT", 4: "PRODUCER", 5: "CONSUMER"}


def _scopes(message: Any, field: str, older: str) -> Any:
    """The per-scope lists, under their current name or the older one (the venv's opentelemetry-proto
    may predate the rename; both have the same field number, so either decodes what Envoy sends)."""
    names = {f.name for f in message.DESCRIPTOR.fields}
    return getattr(message, field if field in names else older)


def _value(any_value: Any) -> str:
    kind = any_value.WhichOneof("value")
    return str(getattr(any_value, kind)) if kind else ""


class OtlpCollector:
    """OTLP/gRPC trace and logs receiver."""

    def __init__(self) -> None:
        self.spans: list[Span] = []
        self.logs: list[dict[str, Any]] = []
        self._server: grpc.aio.Server | None = None

    async def start(self, host: str, port: int) -> OtlpCollector:
        server = grpc.aio.server()
        traces = grpc.method_handlers_generic_handler(
            "opentelemetry.proto.collector.trace.v1.TraceService",
            {
                "Export": grpc.unary_unary_rpc_method_handler(
                    self._export_traces,
                    request_deserializer=trace_service_pb2.ExportTraceServiceRequest.FromString,
                    response_serializer=trace_service_pb2.ExportTraceServiceResponse.SerializeToString,
                )
            },
        )
        logs = grpc.method_handlers_generic_handler(
            "opentelemetry.proto.collector.logs.v1.LogsService",
            {
                "Export": grpc.unary_unary_rpc_method_handler(
                    self._export_logs,
                    request_deserializer=logs_service_pb2.ExportLogsServiceRequest.FromString,
                    response_serializer=logs_service_pb2.ExportLogsServiceResponse.SerializeToString,
                )
            },
        )
        server.add_generic_rpc_handlers((traces, logs))
        server.add_insecure_port(f"{host}:{port}")
        await server.start()
        self._server = server
        return self

    async def _export_traces(self, request: Any, context: Any) -> Any:
        for resource_spans in request.resource_spans:
            attrs = {a.key: _value(a.value) for a in resource_spans.resource.attributes}
            for scope in _scopes(resource_spans, "scope_spans", "instrumentation_library_spans"):
                for span in scope.spans:
                    self.spans.append(
                        Span(
                            trace_id=span.trace_id.hex(),
                            span_id=span.span_id.hex(),
                            parent_id=span.parent_span_id.hex(),
                            name=span.name,
                            kind=_KINDS.get(span.kind, str(span.kind)),
                            service=attrs.get("service.name", ""),
                            tags={a.key: _value(a.value) for a in span.attributes},
                        )
                    )
        return trace_service_pb2.ExportTraceServiceResponse()

    async def _export_logs(self, request: Any, context: Any) -> Any:
        for resource_logs in request.resource_logs:
            for scope in _scopes(resource_logs, "scope_logs", "instrumentation_library_logs"):
                for record in _scopes(scope, "log_records", "logs"):
                    entry = {a.key: _value(a.value) for a in record.attributes}
                    entry["body"] = _value(record.body)
                    self.logs.append(entry)
        return logs_service_pb2.ExportLogsServiceResponse()

    async def stop(self) -> None:
        if self._server is not None:
            await self._server.stop(None)
