"""A TraceConfig -> the HTTP connection manager's `tracing` (Envoy's Zipkin tracer, sending Zipkin v2 JSON
to the collector's cluster and propagating both B3 and W3C `traceparent` headers; or its OpenTelemetry
tracer, OTLP over gRPC, W3C headers), Istio's sampling fields (client and overall 100%, random the
Telemetry's percentage), custom tags (literal, environment, request header) and the request id's
`use_request_id_for_trace_sampling`."""

from __future__ import annotations

from envoy.config.core.v3 import grpc_service_pb2
from envoy.config.trace.v3 import opentelemetry_pb2, zipkin_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2
from envoy.extensions.request_id.uuid.v3 import uuid_pb2
from envoy.type.tracing.v3 import custom_tag_pb2
from envoy.type.v3 import percent_pb2

from meshd.api.telemetry import CustomTag
from meshd.translate.proto import pack
from meshd.translate.telemetry.resolve import TraceConfig

ZIPKIN = "envoy.tracers.zipkin"
OPENTELEMETRY = "envoy.tracers.opentelemetry"
REQUEST_ID = "envoy.request_id.uuid"


def _percent(value: float) -> percent_pb2.Percent:
    return percent_pb2.Percent(value=value)


def custom_tag(name: str, tag: CustomTag) -> custom_tag_pb2.CustomTag:
    out = custom_tag_pb2.CustomTag(tag=name)
    if tag.literal is not None:
        out.literal.value = tag.literal.value
    elif tag.environment is not None:
        out.environment.name = tag.environment.name
        out.environment.default_value = tag.environment.default_value
    elif tag.header is not None:
        out.request_header.name = tag.header.name
        out.request_header.default_value = tag.header.default_value
    return out


def tracing(config: TraceConfig) -> hcm_pb2.HttpConnectionManager.Tracing:
    out = hcm_pb2.HttpConnectionManager.Tracing(
        client_sampling=_percent(100.0),
        random_sampling=_percent(config.sampling),
        overall_sampling=_percent(100.0),
        custom_tags=[custom_tag(name, tag) for name, tag in config.custom_tags],
    )
    if config.max_tag_length:
        out.max_path_tag_length.value = config.max_tag_length
    if config.kind == "zipkin":
        zipkin = zipkin_pb2.ZipkinConfig(
            collector_cluster=config.cluster,
            collector_endpoint=config.path,
            collector_endpoint_version=zipkin_pb2.ZipkinConfig.HTTP_JSON,
            collector_hostname=config.authority,
            trace_id_128bit=config.trace_id_128bit,
            trace_context_option=zipkin_pb2.ZipkinConfig.USE_B3_WITH_W3C_PROPAGATION,
        )
        zipkin.shared_span_context.value = False  # one span per proxy hop, as Istio configures it
        out.provider.name = ZIPKIN
        out.provider.typed_config.CopyFrom(pack(zipkin))
    else:
        otel = opentelemetry_pb2.OpenTelemetryConfig(
            grpc_service=grpc_service_pb2.GrpcService(
                envoy_grpc=grpc_service_pb2.GrpcService.EnvoyGrpc(
                    cluster_name=config.cluster, authority=config.authority
                )
            ),
            service_name=config.service_name,
        )
        out.provider.name = OPENTELEMETRY
        out.provider.typed_config.CopyFrom(pack(otel))
    return out


def apply_tracing(hcm: hcm_pb2.HttpConnectionManager, config: TraceConfig) -> None:
    hcm.tracing.CopyFrom(tracing(config))
    uuid = uuid_pb2.UuidRequestIdConfig()
    uuid.use_request_id_for_trace_sampling.value = config.use_request_id
    hcm.request_id_extension.typed_config.CopyFrom(pack(uuid))
