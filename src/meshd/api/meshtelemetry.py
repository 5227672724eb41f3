"""The telemetry parts of Istio's MeshConfig: `accessLogFile`, `accessLogFormat`, `accessLogEncoding`,
`enableTracing`, `defaultConfig.tracing`, `defaultProviders`, and the `extensionProviders` of the kinds
Telemetry resources name (envoyFileAccessLog, envoyOtelAls, zipkin, opentelemetry). One frozen value
(`MeshTelemetry`), part of MeshPolicy and so of every cache key.

Field names are Istio's (istio.io/docs/reference/config/istio.mesh.v1alpha1); an unknown field of a
provider kind meshd translates is refused with its path. Providers of the kinds meshd does not translate
(datadog, skywalking, lightstep, stackdriver...) are kept by name and kind: a Telemetry naming one is
refused by translation with a named error.
"""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic.alias_generators import to_camel

from meshd.api.meta import ApiModel, StrictModel, field_path
from meshd.api.telemetry import CustomTag
from meshd.api.values import PortNumber

# the kinds of extensionProviders entries Telemetry uses (ext_authz kinds are api/meshconfig.py's)
ACCESS_LOG_KINDS = ("envoyFileAccessLog", "envoyOtelAls")
TRACING_KINDS = ("zipkin", "opentelemetry")
# tracing and logging kinds Istio has that meshd does not translate: refused where a Telemetry names them
UNSUPPORTED_KINDS = (
    "datadog",
    "skywalking",
    "lightstep",
    "stackdriver",
    "opencensus",
    "envoyHttpAls",
    "envoyTcpAls",
    "sds",
)
# Istio's default mesh config defines these providers; a user's entry of the same name replaces them
BUILTIN_ACCESS_LOG = "envoy"


class LogFormat(StrictModel):
    """TEXT (`text`, a format string) or JSON (`labels`: key -> command operator string)."""

    text: str | None = None
    labels: tuple[tuple[str, str], ...] | None = None

    @field_validator("labels", mode="before")
    @classmethod
    def _pairs(cls, value: Any) -> Any:
        if isinstance(value, dict):
            if not all(isinstance(v, str) for v in value.values()):
                raise ValueError("every label value must be a string (an Envoy command operator)")
            return tuple(sorted(value.items()))
        return value

    @model_validator(mode="after")
    def _one(self) -> LogFormat:
        if self.text is not None and self.labels is not None:
            raise ValueError("labels: only one of text and labels may be set")
        return self


class FileAccessLogProvider(StrictModel):
    path: str = Field(min_length=1)
    log_format: LogFormat | None = None


class OtelAlsProvider(StrictModel):
    service: str = Field(min_length=1)
    port: PortNumber
    log_name: str = ""
    log_format: LogFormat | None = None


class ZipkinProvider(StrictModel):
    service: str = Field(min_length=1)
    port: PortNumber
    max_tag_length: int = Field(default=0, ge=0)
    enable_64bit_trace_id: bool = False
    path: str = ""

    @field_validator("path")
    @classmethod
    def _slash(cls, value: str) -> str:
        if value and not value.startswith("/"):
            raise ValueError(f"{value[:60]!r} must start with /")
        return value


class OtelTracingProvider(StrictModel):
    service: str = Field(min_length=1)
    port: PortNumber
    max_tag_length: int = Field(default=0, ge=0)


class TelemetryProvider(ApiModel):
    """One `extensionProviders` entry of a telemetry kind (the kind named by the field that is set)."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore", frozen=True)
    name: str
    kind: str
    file: FileAccessLogProvider | None = None
    otel_als: OtelAlsProvider | None = None
    zipkin: ZipkinProvider | None = None
    otel: OtelTracingProvider | None = None

    @property
    def service(self) -> str:
        found = self.otel_als or self.zipkin or self.otel
        return found.service if found is not None else ""


class DefaultProviders(StrictModel):
    tracing: tuple[str, ...] = ()
    metrics: tuple[str, ...] = ()
    access_logging: tuple[str, ...] = ()


class ZipkinAddress(StrictModel):
    address: str = Field(min_length=1)

    @field_validator("address")
    @classmethod
    def _host_port(cls, value: str) -> str:
        host, sep, port = value.rpartition(":")
        if not sep or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
            raise ValueError(f"{value[:80]!r} is not host:port")
        return value


class ProxyTracing(StrictModel):
    """`defaultConfig.tracing` (Istio's ProxyConfig.Tracing): the legacy tracer of `enableTracing`."""

    zipkin: ZipkinAddress | None = None
    sampling: float = Field(default=1.0, ge=0.0, le=100.0)
    custom_tags: tuple[tuple[str, CustomTag], ...] = ()
    max_path_tag_length: int = Field(default=0, ge=0)

    @field_validator("custom_tags", mode="before")
    @classmethod
    def _tags(cls, value: Any) -> Any:
        return tuple(sorted(value.items())) if isinstance(value, dict) else value


class MeshTelemetry(ApiModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True)
    access_log_file: str = ""
    access_log_format: str = ""
    access_log_encoding: Literal["TEXT", "JSON"] = "TEXT"
    enable_tracing: bool = False
    tracing: ProxyTracing = ProxyTracing()
    default_providers: DefaultProviders = DefaultProviders()
    providers: tuple[TelemetryProvider, ...] = ()

    @model_validator(mode="after")
    def _json_format(self) -> MeshTelemetry:
        if self.access_log_encoding == "JSON" and self.access_log_format:
            try:
                labels = json.loads(self.access_log_format)
            except ValueError:
                labels = None
            if not isinstance(labels, dict) or not all(isinstance(v, str) for v in labels.values()):
                raise ValueError("accessLogFormat: with accessLogEncoding JSON it must be a JSON object of strings")
        return self

    @property
    def json_labels(self) -> tuple[tuple[str, str], ...]:
        """accessLogFormat as JSON labels (empty: Istio's default JSON format)."""
        if not self.access_log_format:
            return ()
        return tuple(json.loads(self.access_log_format).items())

    def provider(self, name: str) -> TelemetryProvider | None:
        found = next((p for p in self.providers if p.name == name), None)
        if found is None and name == BUILTIN_ACCESS_LOG:
            return TelemetryProvider(
                name=name, kind="envoyFileAccessLog", file=FileAccessLogProvider(path="/dev/stdout")
            )
        return found


class InvalidTelemetryConfig(ValueError):
    pass


_FIELDS: dict[str, tuple[str, type[StrictModel]]] = {
    "envoyFileAccessLog": ("file", FileAccessLogProvider),
    "envoyOtelAls": ("otel_als", OtelAlsProvider),
    "zipkin": ("zipkin", ZipkinProvider),
    "opentelemetry": ("otel", OtelTracingProvider),
}


def parse_mesh_telemetry(raw: dict[str, Any]) -> MeshTelemetry:
    """The telemetry parts of a MeshConfig mapping. Raises InvalidTelemetryConfig naming the field."""
    providers: list[TelemetryProvider] = []
    entries = raw.get("extensionProviders") or []
    for i, entry in enumerate(entries if isinstance(entries, list) else []):
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
            continue  # api/meshconfig.py names that error
        for kind in (k for k in entry if k != "name"):
            if kind in _FIELDS:
                attr, model = _FIELDS[kind]
                value = _validate(
                    model, entry[kind] if entry[kind] is not None else {}, f"extensionProviders[{i}].{kind}"
                )
                providers.append(TelemetryProvider(name=entry["name"], kind=kind, **{attr: value}))
            elif kind in UNSUPPORTED_KINDS:
                providers.append(TelemetryProvider(name=entry["name"], kind=kind))
    default_config = raw.get("defaultConfig") or {}
    if not isinstance(default_config, dict):
        raise InvalidTelemetryConfig("defaultConfig: must be a mapping")
    tracing = default_config.get("tracing") or {}
    if not isinstance(tracing, dict):
        raise InvalidTelemetryConfig("defaultConfig.tracing: must be a mapping")
    for other in tracing:
        if other not in ("zipkin", "sampling", "customTags", "custom_tags", "maxPathTagLength"):
            raise InvalidTelemetryConfig(
                f"defaultConfig.tracing.{other}: not supported by meshd "
                "(zipkin, sampling, customTags, maxPathTagLength)"
            )
    data = {
        "accessLogFile": raw.get("accessLogFile") or "",
        "accessLogFormat": raw.get("accessLogFormat") or "",
        "accessLogEncoding": raw.get("accessLogEncoding") or "TEXT",
        "enableTracing": bool(raw.get("enableTracing", False)),
        "tracing": {("customTags" if k == "custom_tags" else k): v for k, v in tracing.items()},
        "defaultProviders": raw.get("defaultProviders") or {},
        "providers": providers,
    }
    try:
        return MeshTelemetry.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = field_path(first["loc"])
        where = f"defaultConfig.{where}" if where.startswith("tracing") else where
        message = "unknown field" if first["type"] == "extra_forbidden" else first["msg"].removeprefix("Value error, ")
        raise InvalidTelemetryConfig(f"{where}: {message}") from None


def _validate(model: type[StrictModel], value: Any, where: str) -> Any:
    try:
        return model.model_validate(value)
    except ValidationError as exc:
        first = exc.errors()[0]
        message = "unknown field" if first["type"] == "extra_forbidden" else first["msg"].removeprefix("Value error, ")
        field = field_path(first["loc"])
        head, sep, rest = message.partition(": ")  # a model-level check names its field first ("bogus: unknown field")
        if sep and head and " " not in head:
            field, message = (f"{field}.{head}" if field != "<root>" else head), rest
        raise InvalidTelemetryConfig(f"{where}.{field}: {message}") from None
