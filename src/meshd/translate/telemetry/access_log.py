"""Access log sinks -> Envoy access loggers (`envoy.access_loggers.file`, `envoy.access_loggers.open_telemetry`)
with Istio's default formats (TEXT; JSON with Istio's keys) and a CEL filter
(`envoy.access_loggers.extension_filters.cel`, in the bundled Envoy) for Telemetry `filter.expression`.
The same loggers go on HTTP connection managers and TCP proxies."""

from __future__ import annotations

from envoy.config.accesslog.v3 import accesslog_pb2
from envoy.config.core.v3 import grpc_service_pb2, substitution_format_string_pb2
from envoy.data.accesslog.v3 import accesslog_pb2 as data_pb2
from envoy.extensions.access_loggers.file.v3 import file_pb2
from envoy.extensions.access_loggers.filters.cel.v3 import cel_pb2
from envoy.extensions.access_loggers.grpc.v3 import als_pb2
from envoy.extensions.access_loggers.open_telemetry.v3 import logs_service_pb2
from google.protobuf import struct_pb2
from opentelemetry.proto.common.v1 import common_pb2

from meshd.translate.proto import pack
from meshd.translate.telemetry.resolve import AccessLogSink

FILE_LOGGER = "envoy.access_loggers.file"
OTEL_LOGGER = "envoy.access_loggers.open_telemetry"
CEL_FILTER = "envoy.access_loggers.extension_filters.cel"

# Istio's default TEXT format (meshConfig.accessLogFormat unset, accessLogEncoding TEXT)
ISTIO_TEXT_FORMAT = (
    '[%START_TIME%] "%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL%" '
    "%RESPONSE_CODE% %RESPONSE_FLAGS% %RESPONSE_CODE_DETAILS% %CONNECTION_TERMINATION_DETAILS% "
    '"%UPSTREAM_TRANSPORT_FAILURE_REASON%" %BYTES_RECEIVED% %BYTES_SENT% %DURATION% '
    '%RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)% "%REQ(X-FORWARDED-FOR)%" "%REQ(USER-AGENT)%" "%REQ(X-REQUEST-ID)%" '
    '"%REQ(:AUTHORITY)%" "%UPSTREAM_HOST%" %UPSTREAM_CLUSTER% %UPSTREAM_LOCAL_ADDRESS% '
    "%DOWNSTREAM_LOCAL_ADDRESS% %DOWNSTREAM_REMOTE_ADDRESS% %REQUESTED_SERVER_NAME% %ROUTE_NAME%\n"
)
# Istio's default JSON format (accessLogEncoding JSON): its keys, each a command operator
ISTIO_JSON_FORMAT: tuple[tuple[str, str], ...] = (
    ("start_time", "%START_TIME%"),
    ("route_name", "%ROUTE_NAME%"),
    ("method", "%REQ(:METHOD)%"),
    ("path", "%REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%"),
    ("protocol", "%PROTOCOL%"),
    ("response_code", "%RESPONSE_CODE%"),
    ("response_flags", "%RESPONSE_FLAGS%"),
    ("response_code_details", "%RESPONSE_CODE_DETAILS%"),
    ("connection_termination_details", "%CONNECTION_TERMINATION_DETAILS%"),
    ("bytes_received", "%BYTES_RECEIVED%"),
    ("bytes_sent", "%BYTES_SENT%"),
    ("duration", "%DURATION%"),
    ("upstream_service_time", "%RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)%"),
    ("x_forwarded_for", "%REQ(X-FORWARDED-FOR)%"),
    ("user_agent", "%REQ(USER-AGENT)%"),
    ("request_id", "%REQ(X-REQUEST-ID)%"),
    ("authority", "%REQ(:AUTHORITY)%"),
    ("upstream_host", "%UPSTREAM_HOST%"),
    ("upstream_cluster", "%UPSTREAM_CLUSTER%"),
    ("upstream_local_address", "%UPSTREAM_LOCAL_ADDRESS%"),
    ("downstream_local_address", "%DOWNSTREAM_LOCAL_ADDRESS%"),
    ("downstream_remote_address", "%DOWNSTREAM_REMOTE_ADDRESS%"),
    ("requested_server_name", "%REQUESTED_SERVER_NAME%"),
    ("upstream_transport_failure_reason", "%UPSTREAM_TRANSPORT_FAILURE_REASON%"),
)


def _text(sink: AccessLogSink) -> str:
    text = sink.text if sink.text is not None else ISTIO_TEXT_FORMAT
    return text if text.endswith("\n") else text + "\n"


def _labels(sink: AccessLogSink) -> tuple[tuple[str, str], ...]:
    return sink.labels or ISTIO_JSON_FORMAT


def access_log(sink: AccessLogSink, *, tcp: bool = False) -> accesslog_pb2.AccessLog:
    """`tcp`: on a TCP proxy, one line per connection, at its end (the proxy also flushes its loggers when the
    upstream connects, for Istio's connections-opened metric)."""
    out = accesslog_pb2.AccessLog()
    if sink.path:
        config = file_pb2.FileAccessLog(path=sink.path)
        if sink.labels is not None:
            fields = struct_pb2.Struct()
            fields.update(dict(_labels(sink)))
            config.log_format.CopyFrom(substitution_format_string_pb2.SubstitutionFormatString(json_format=fields))
        else:
            config.log_format.CopyFrom(
                substitution_format_string_pb2.SubstitutionFormatString(
                    text_format_source={"inline_string": _text(sink)}
                )
            )
        out.name = FILE_LOGGER
        out.typed_config.CopyFrom(pack(config))
    else:
        otel = logs_service_pb2.OpenTelemetryAccessLogConfig(
            common_config=als_pb2.CommonGrpcAccessLogConfig(
                log_name=sink.log_name,
                transport_api_version=2,  # V3
                grpc_service=grpc_service_pb2.GrpcService(
                    envoy_grpc=grpc_service_pb2.GrpcService.EnvoyGrpc(
                        cluster_name=sink.cluster, authority=sink.authority
                    )
                ),
            ),
        )
        if sink.labels is not None:
            for key, value in _labels(sink):
                otel.attributes.values.append(
                    common_pb2.KeyValue(key=key, value=common_pb2.AnyValue(string_value=value))
                )
            otel.body.string_value = ""
        else:
            otel.body.string_value = _text(sink).rstrip("\n")
        out.name = OTEL_LOGGER
        out.typed_config.CopyFrom(pack(otel))
    at_end = accesslog_pb2.AccessLogFilter()
    at_end.log_type_filter.types.append(data_pb2.TcpConnectionEnd)
    if sink.filter:
        cel = accesslog_pb2.AccessLogFilter()
        cel.extension_filter.name = CEL_FILTER
        cel.extension_filter.typed_config.CopyFrom(pack(cel_pb2.ExpressionFilter(expression=sink.filter)))
        if tcp:
            out.filter.and_filter.filters.extend([at_end, cel])
        else:
            out.filter.CopyFrom(cel)
    elif tcp:
        out.filter.CopyFrom(at_end)
    return out
