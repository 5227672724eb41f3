"""What access logging, tracing and metrics a workload gets: its Telemetry resources (mesh-wide in the root
namespace, namespace-wide, then by selector or targetRef; the oldest at each level, as Istio picks) and
the mesh config, resolved into one frozen, hashable value (`WorkloadTelemetry`) per side: `client`
(outbound listeners, and gateways, as Istio's CLIENT mode covers them) and `server` (inbound).

Access logging: each entry applies to the providers it names, else to the default ones
(meshConfig.defaultProviders.accessLogging, else the mesh config's own file log when accessLogFile is
set, else Istio's built-in `envoy` provider); a later level sets each provider again (`disabled`,
`filter`). Without any Telemetry access logging, `accessLogFile` alone logs (TEXT or JSON).
Tracing: the most specific level that sets a field wins (providers, randomSamplingPercentage,
disableSpanReporting, useRequestIdForTraceSampling); customTags merge by name. Without any Telemetry
tracing, `enableTracing` uses `defaultConfig.tracing` (a Zipkin collector). A provider that cannot be
used (unknown, of a kind meshd does not translate, its service not in the mesh) is left out here and
reported by `problems` on the resource that names it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from meshd.api.meshtelemetry import ACCESS_LOG_KINDS, TRACING_KINDS, MeshTelemetry, TelemetryProvider
from meshd.api.telemetry import CustomTag, Telemetry
from meshd.model.services import MeshService
from meshd.translate import naming
from meshd.translate.metrics import DEFAULT_METRICS, MetricOverride, MetricsConfig

MESH_LOG = ""  # the pseudo-provider of accessLogFile / accessLogFormat / accessLogEncoding
DEFAULT_TRACING_ADDRESS = "zipkin.{root}:9411"  # Istio's defaultConfig.tracing.zipkin.address


@dataclass(frozen=True)
class AccessLogSink:
    """One Envoy access logger: a file (`path`) or OpenTelemetry ALS (`cluster`), TEXT (`text`) or JSON
    (`labels`; neither: Istio's default TEXT format), with a CEL filter."""

    provider: str
    path: str = ""
    cluster: str = ""
    authority: str = ""
    log_name: str = ""
    text: str | None = None
    labels: tuple[tuple[str, str], ...] | None = None
    filter: str = ""


@dataclass(frozen=True)
class TraceConfig:
    kind: str  # zipkin | opentelemetry
    cluster: str
    authority: str
    sampling: float
    custom_tags: tuple[tuple[str, CustomTag], ...] = ()
    use_request_id: bool = True
    path: str = ""
    max_tag_length: int = 0
    trace_id_128bit: bool = True
    service_name: str = ""


@dataclass(frozen=True)
class SideTelemetry:
    logs: tuple[AccessLogSink, ...] = ()
    tracing: TraceConfig | None = None


@dataclass(frozen=True)
class WorkloadTelemetry:
    client: SideTelemetry = SideTelemetry()
    server: SideTelemetry = SideTelemetry()
    metrics: MetricsConfig = DEFAULT_METRICS  # Istio's standard metrics after the Telemetry overrides

    @property
    def empty(self) -> bool:
        return self == NO_TELEMETRY

    @property
    def collector_clusters(self) -> frozenset[str]:
        names = {s.cluster for side in (self.client, self.server) for s in side.logs if s.cluster}
        names |= {side.tracing.cluster for side in (self.client, self.server) if side.tracing is not None}
        return frozenset(names)


NO_TELEMETRY = WorkloadTelemetry()
SIDES = (("client", "CLIENT"), ("server", "SERVER"))


def applicable(
    telemetries: Mapping[str, tuple[Telemetry, ...]], *, namespace: str, labels: Mapping[str, str], root_namespace: str
) -> tuple[Telemetry, ...]:
    """The Telemetry of each level that applies to a workload, least specific first: mesh-wide (root
    namespace, no selector), namespace-wide, then the oldest selecting it in its own namespace."""
    out: list[Telemetry] = []
    levels = [root_namespace] if namespace == root_namespace else [root_namespace, namespace]
    for ns in levels:
        broad = next((t for t in telemetries.get(ns, ()) if not t.spec.has_selector), None)
        if broad is not None:
            out.append(broad)
    selecting = next((t for t in telemetries.get(namespace, ()) if t.selects(dict(labels))), None)
    if selecting is not None:
        out.append(selecting)
    return tuple(out)


def workload_telemetry(
    telemetries: Sequence[Telemetry],
    *,
    mesh: MeshTelemetry,
    services: Mapping[str, MeshService],
    domain_suffix: str,
    root_namespace: str,
    service_name: str,
) -> WorkloadTelemetry:
    """The access logging and tracing of a workload that `telemetries` (from `applicable`) apply to."""
    resolver = _Resolver(mesh, services, domain_suffix, root_namespace)
    sides = {
        side: SideTelemetry(
            logs=_logs(telemetries, mode, mesh, resolver),
            tracing=_tracing(telemetries, mode, mesh, resolver, service_name),
        )
        for side, mode in SIDES
    }
    return WorkloadTelemetry(client=sides["client"], server=sides["server"], metrics=metrics_config(telemetries))


def metrics_config(telemetries: Sequence[Telemetry]) -> MetricsConfig:
    """Istio's standard metrics after every level's `metrics[].overrides`, least specific first: a later
    override sets again what an earlier one set (disabled, a tag's operation), per metric and mode. Tag
    values are CEL expressions, evaluated by Envoy's `%CEL(...)%` formatter."""
    overrides = []
    for telemetry in telemetries:
        for entry in telemetry.spec.metrics:
            for override in entry.overrides:
                tags = override.tag_overrides
                overrides.append(
                    MetricOverride(
                        metric=override.metric,
                        mode=override.mode,
                        disabled=override.disabled,
                        remove_tags=tuple(sorted(n for n, t in tags.items() if t.operation == "REMOVE")),
                        upsert_tags=tuple(
                            sorted((n, f"%CEL({t.value})%") for n, t in tags.items() if t.operation == "UPSERT")
                        ),
                    )
                )
    return MetricsConfig(overrides=tuple(overrides)) if overrides else DEFAULT_METRICS


def _applies(entry_mode: str, mode: str) -> bool:
    return entry_mode in ("CLIENT_AND_SERVER", mode)


def _logs(
    telemetries: Sequence[Telemetry], mode: str, mesh: MeshTelemetry, resolver: _Resolver
) -> tuple[AccessLogSink, ...]:
    state: dict[str, tuple[bool, str]] = {}
    configured = False
    defaults = default_log_providers(mesh)
    for telemetry in telemetries:
        for entry in telemetry.spec.access_logging:
            if not _applies(entry.mode, mode):
                continue
            configured = True
            names = [p.name for p in entry.providers] or list(defaults)
            for name in names:
                state[name] = (not entry.disabled, entry.filter.expression if entry.filter is not None else "")
    if not configured:
        state = {MESH_LOG: (True, "")} if mesh.access_log_file else {}
    sinks = []
    for name, (enabled, expression) in state.items():
        sink = resolver.log_sink(name, expression) if enabled else None
        if sink is not None:
            sinks.append(sink)
    return tuple(sinks)


def default_log_providers(mesh: MeshTelemetry) -> tuple[str, ...]:
    if mesh.default_providers.access_logging:
        return mesh.default_providers.access_logging
    return (MESH_LOG,) if mesh.access_log_file else ("envoy",)


def _tracing(
    telemetries: Sequence[Telemetry], mode: str, mesh: MeshTelemetry, resolver: _Resolver, service_name: str
) -> TraceConfig | None:
    provider: str | None = None
    sampling: float | None = None
    disabled = False
    request_id: bool | None = None
    tags: dict[str, CustomTag] = {}
    configured = False
    for telemetry in telemetries:
        for entry in telemetry.spec.tracing:
            if not _applies(entry.mode, mode):
                continue
            configured = True
            if entry.providers:
                provider = entry.providers[0].name
            if entry.random_sampling_percentage is not None:
                sampling = entry.random_sampling_percentage
            if entry.disable_span_reporting is not None:
                disabled = entry.disable_span_reporting
            if entry.use_request_id_for_trace_sampling is not None:
                request_id = entry.use_request_id_for_trace_sampling
            tags.update(entry.custom_tags)
    legacy = mesh.tracing
    if not configured:
        if not mesh.enable_tracing:
            return None
        tags = dict(legacy.custom_tags)
    if disabled:
        return None
    if provider is None and mesh.default_providers.tracing:
        provider = mesh.default_providers.tracing[0]
    if provider is not None:
        found = resolver.tracer(provider)
    elif mesh.enable_tracing:
        found = resolver.legacy_tracer()
    else:
        found = None
    if found is None:
        return None
    return TraceConfig(
        kind=found.kind,
        cluster=found.cluster,
        authority=found.authority,
        sampling=sampling if sampling is not None else (legacy.sampling if provider is None else 1.0),
        custom_tags=tuple(sorted(tags.items())),
        use_request_id=request_id if request_id is not None else True,
        path=found.path,
        max_tag_length=found.max_tag_length or (legacy.max_path_tag_length if provider is None else 0),
        trace_id_128bit=found.trace_id_128bit,
        service_name=service_name if found.kind == "opentelemetry" else "",
    )


def service_hostname(service: str, *, domain_suffix: str) -> str:
    """A provider's `service` (`[<namespace>/]<hostname>`) as a hostname; `name.namespace` short forms
    (as in `zipkin.istio-system:9411`) get the cluster's domain."""
    host = service.partition("/")[2] if "/" in service else service
    return f"{host}.svc.{domain_suffix}" if host.count(".") == 1 else host


class _Resolver:
    def __init__(
        self, mesh: MeshTelemetry, services: Mapping[str, MeshService], domain_suffix: str, root_namespace: str
    ) -> None:
        self.mesh, self.services, self.suffix, self.root = mesh, services, domain_suffix, root_namespace

    def cluster(self, service: str, port: int) -> tuple[str, str] | None:
        host = service_hostname(service, domain_suffix=self.suffix)
        found = self.services.get(host)
        if found is None or found.port(port) is None:
            return None
        return naming.outbound_cluster(port=port, host=host), host

    def log_sink(self, name: str, expression: str) -> AccessLogSink | None:
        mesh = self.mesh
        if name == MESH_LOG:
            if not mesh.access_log_file:
                return None
            text = mesh.access_log_format or None
            if mesh.access_log_encoding == "JSON":
                return AccessLogSink(
                    provider=name, path=mesh.access_log_file, labels=mesh.json_labels, filter=expression
                )
            return AccessLogSink(provider=name, path=mesh.access_log_file, text=text, filter=expression)
        provider = mesh.provider(name)
        if provider is None or provider.kind not in ACCESS_LOG_KINDS:
            return None
        if provider.file is not None:
            fmt = provider.file.log_format
            return AccessLogSink(
                provider=name,
                path=provider.file.path,
                text=fmt.text if fmt is not None else None,
                labels=fmt.labels if fmt is not None else None,
                filter=expression,
            )
        als = provider.otel_als
        assert als is not None
        target = self.cluster(als.service, als.port)
        if target is None:
            return None
        fmt = als.log_format
        return AccessLogSink(
            provider=name,
            cluster=target[0],
            authority=target[1],
            log_name=als.log_name or "otel_envoy_accesslog",
            text=fmt.text if fmt is not None else None,
            labels=fmt.labels if fmt is not None else None,
            filter=expression,
        )

    def tracer(self, name: str) -> _Tracer | None:
        provider = self.mesh.provider(name)
        if provider is None or provider.kind not in TRACING_KINDS:
            return None
        return self._tracer(provider)

    def _tracer(self, provider: TelemetryProvider) -> _Tracer | None:
        config = provider.zipkin or provider.otel
        assert config is not None
        target = self.cluster(config.service, config.port)
        if target is None:
            return None
        zipkin = provider.zipkin
        return _Tracer(
            kind=provider.kind,
            cluster=target[0],
            authority=target[1],
            path=(zipkin.path or "/api/v2/spans") if zipkin is not None else "",
            max_tag_length=config.max_tag_length,
            trace_id_128bit=not zipkin.enable_64bit_trace_id if zipkin is not None else True,
        )

    def legacy_tracer(self) -> _Tracer | None:
        host, port = legacy_address(self.mesh, root_namespace=self.root)
        target = self.cluster(host, port)
        if target is None:
            return None
        return _Tracer(kind="zipkin", cluster=target[0], authority=target[1], path="/api/v2/spans")


def legacy_address(mesh: MeshTelemetry, *, root_namespace: str) -> tuple[str, int]:
    zipkin = mesh.tracing.zipkin
    address = zipkin.address if zipkin is not None else DEFAULT_TRACING_ADDRESS.format(root=root_namespace)
    host, _, port = address.rpartition(":")
    return host, int(port)


@dataclass(frozen=True)
class _Tracer:
    kind: str
    cluster: str
    authority: str
    path: str = ""
    max_tag_length: int = 0
    trace_id_128bit: bool = True
