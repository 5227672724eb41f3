"""Istio telemetry.istio.io Telemetry (v1 and v1alpha1): a workload's access logging, tracing and metrics
providers, by selector or targetRef(s), inherited mesh (root namespace) -> namespace -> workload.

Field names follow Istio's CRD schema. Unknown fields are refused with their path, as are the parts meshd
does not translate (metrics reportingInterval, tag expressions on
attributes Envoy cannot evaluate, targetRefs to waypoint kinds): never silently dropped. Istio's own
validation rules are checked here so admission and translation agree.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, field_validator, model_validator

from meshd.api.meta import Resource, StrictModel, refused

TELEMETRY_VERSIONS = ("telemetry.istio.io/v1", "telemetry.istio.io/v1alpha1")
WorkloadMode = Literal["CLIENT_AND_SERVER", "CLIENT", "SERVER"]
GATEWAY_API = "gateway.networking.k8s.io"
# the label Istio's Gateway API deployments carry: a targetRef to a Gateway selects its workloads by it
GATEWAY_NAME_LABEL = "gateway.networking.k8s.io/gateway-name"


class ProviderRef(StrictModel):
    name: str = Field(min_length=1)


class TelemetrySelector(StrictModel):
    match_labels: dict[str, str] = Field(default_factory=dict)


class TelemetryTargetRef(StrictModel):
    group: str = ""
    kind: str = Field(min_length=1)
    name: str = Field(min_length=1, max_length=253)
    namespace: str = ""

    @model_validator(mode="after")
    def _kind(self) -> TelemetryTargetRef:
        if (self.group, self.kind) != (GATEWAY_API, "Gateway"):
            raise ValueError(
                f"kind: {self.group or 'core'}/{self.kind} is not supported by meshd: a Telemetry attaches to "
                f"{GATEWAY_API}/Gateway (the other kinds Istio accepts attach to waypoint proxies, which meshd "
                "does not run)"
            )
        return self


class ModeSelector(StrictModel):
    mode: WorkloadMode = "CLIENT_AND_SERVER"


class LiteralTag(StrictModel):
    value: str = ""


class EnvironmentTag(StrictModel):
    name: str = Field(min_length=1)
    default_value: str = ""


class HeaderTag(StrictModel):
    name: str = Field(min_length=1)
    default_value: str = ""


class CustomTag(StrictModel):
    literal: LiteralTag | None = None
    environment: EnvironmentTag | None = None
    header: HeaderTag | None = None

    @model_validator(mode="after")
    def _one(self) -> CustomTag:
        if sum(x is not None for x in (self.literal, self.environment, self.header)) != 1:
            raise ValueError("exactly one of literal, environment, header must be set")
        return self


class Tracing(StrictModel):
    match: ModeSelector | None = None
    providers: list[ProviderRef] = Field(default_factory=list)
    random_sampling_percentage: float | None = Field(default=None, ge=0.0, le=100.0)
    disable_span_reporting: bool | None = None
    custom_tags: dict[str, CustomTag] = Field(default_factory=dict)
    use_request_id_for_trace_sampling: bool | None = None

    @field_validator("providers")
    @classmethod
    def _one_provider(cls, value: list[ProviderRef]) -> list[ProviderRef]:
        if len(value) > 1:
            raise ValueError("only one tracing provider per entry is supported (as in Istio)")
        return value

    @property
    def mode(self) -> str:
        return self.match.mode if self.match is not None else "CLIENT_AND_SERVER"


MetricName = Literal[
    "ALL_METRICS",
    "REQUEST_COUNT",
    "REQUEST_DURATION",
    "REQUEST_SIZE",
    "RESPONSE_SIZE",
    "TCP_OPENED_CONNECTIONS",
    "TCP_CLOSED_CONNECTIONS",
    "TCP_SENT_BYTES",
    "TCP_RECEIVED_BYTES",
    "GRPC_REQUEST_MESSAGES",
    "GRPC_RESPONSE_MESSAGES",
]
# Istio's standard metrics as a `customMetric` names them (the Prometheus name without `istio_`)
STANDARD_METRIC_NAMES = {
    "requests_total": "REQUEST_COUNT",
    "request_duration_milliseconds": "REQUEST_DURATION",
    "request_bytes": "REQUEST_SIZE",
    "response_bytes": "RESPONSE_SIZE",
    "tcp_connections_opened_total": "TCP_OPENED_CONNECTIONS",
    "tcp_connections_closed_total": "TCP_CLOSED_CONNECTIONS",
    "tcp_sent_bytes_total": "TCP_SENT_BYTES",
    "tcp_received_bytes_total": "TCP_RECEIVED_BYTES",
    "request_messages_total": "GRPC_REQUEST_MESSAGES",
    "response_messages_total": "GRPC_RESPONSE_MESSAGES",
}
_TAG_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")


class MetricSelector(StrictModel):
    metric: MetricName = "ALL_METRICS"
    custom_metric: str = ""
    mode: WorkloadMode = "CLIENT_AND_SERVER"

    @model_validator(mode="after")
    def _one_metric(self) -> MetricSelector:
        if self.custom_metric and "metric" in self.model_fields_set:
            raise ValueError("customMetric: only one of metric and customMetric may be set")
        if self.custom_metric and self.custom_metric not in STANDARD_METRIC_NAMES:
            raise ValueError(
                f"customMetric: {self.custom_metric!r} is not one of Istio's standard metrics "
                f"({', '.join(STANDARD_METRIC_NAMES)}): meshd defines no new metrics"
            )
        return self

    @property
    def target(self) -> str:
        """The Istio metric enum this selects (ALL_METRICS for every one)."""
        return STANDARD_METRIC_NAMES[self.custom_metric] if self.custom_metric else self.metric


class TagOverride(StrictModel):
    operation: Literal["UPSERT", "REMOVE"] = "UPSERT"
    value: str = Field(default="", max_length=4096)

    @model_validator(mode="after")
    def _expression(self) -> TagOverride:
        if self.operation != "UPSERT":
            return self
        if not self.value:
            raise ValueError("value: an UPSERT needs a value (an attribute expression)")
        problem = cel_problem(self.value) or tag_expression_problem(self.value)
        if problem:
            raise ValueError(f"value: {problem}")
        return self


class MetricsOverride(StrictModel):
    match: MetricSelector | None = None
    disabled: bool | None = None
    tag_overrides: dict[str, TagOverride] = Field(default_factory=dict)

    @field_validator("tag_overrides")
    @classmethod
    def _tag_names(cls, value: dict[str, TagOverride]) -> dict[str, TagOverride]:
        for name in value:
            if not _TAG_NAME.match(name):
                raise ValueError(f"{name!r}: not a Prometheus label name ([a-zA-Z_][a-zA-Z0-9_]*)")
            if name.startswith("_"):  # translate/metric_labels.py: the scrape endpoints would rewrite it
                raise ValueError(f"{name!r}: names starting with '_' are meshd's compact metric tags")
        return value

    @property
    def metric(self) -> str:
        return self.match.target if self.match is not None else "ALL_METRICS"

    @property
    def mode(self) -> str:
        return self.match.mode if self.match is not None else "CLIENT_AND_SERVER"


class Metrics(StrictModel):
    providers: list[ProviderRef] = Field(default_factory=list)
    overrides: list[MetricsOverride] = Field(default_factory=list)
    reporting_interval: str | None = refused(
        "Envoy's tcp_proxy can flush its access loggers periodically, but the byte counts it reports then are "
        "cumulative: a counter fed at each flush would count a long connection's bytes more than once, so "
        "meshd's TCP byte counters move at the connection's end only"
    )

    @field_validator("providers")
    @classmethod
    def _prometheus(cls, value: list[ProviderRef]) -> list[ProviderRef]:
        for i, ref in enumerate(value):
            if ref.name != "prometheus":
                raise ValueError(f"provider {ref.name!r} (item {i}): only the prometheus metrics provider is supported")
        return value


class AccessLogFilter(StrictModel):
    expression: str = Field(min_length=1, max_length=4096)

    @field_validator("expression")
    @classmethod
    def _cel(cls, value: str) -> str:
        problem = cel_problem(value)
        if problem:
            raise ValueError(f"not a CEL expression Envoy can parse: {problem}")
        return value


class AccessLogging(StrictModel):
    match: ModeSelector | None = None
    providers: list[ProviderRef] = Field(default_factory=list)
    disabled: bool | None = None
    filter: AccessLogFilter | None = None

    @property
    def mode(self) -> str:
        return self.match.mode if self.match is not None else "CLIENT_AND_SERVER"


class TelemetrySpec(StrictModel):
    selector: TelemetrySelector | None = None
    target_ref: TelemetryTargetRef | None = None
    target_refs: list[TelemetryTargetRef] = Field(default_factory=list)
    tracing: list[Tracing] = Field(default_factory=list)
    metrics: list[Metrics] = Field(default_factory=list)
    access_logging: list[AccessLogging] = Field(default_factory=list)

    @field_validator("tracing")
    @classmethod
    def _one_tracing(cls, value: list[Tracing]) -> list[Tracing]:
        if len(value) > 1:
            raise ValueError("only one tracing entry is supported (as in Istio)")
        return value

    @model_validator(mode="after")
    def _attachment(self) -> TelemetrySpec:
        if self.target_ref is not None and self.target_refs:
            raise ValueError("targetRefs: only one of targetRef and targetRefs may be set")
        if self.selector is not None and (self.target_ref is not None or self.target_refs):
            raise ValueError("selector: only one of selector and targetRef(s) may be set")
        for ref in self.refs:
            if ref.namespace:
                raise ValueError("targetRefs: namespace: a Telemetry attaches only to Gateways of its own namespace")
        return self

    @property
    def refs(self) -> list[TelemetryTargetRef]:
        return [self.target_ref] if self.target_ref is not None else list(self.target_refs)

    @property
    def has_selector(self) -> bool:
        return (self.selector is not None and bool(self.selector.match_labels)) or bool(self.refs)


class Telemetry(Resource):
    kind: Literal["Telemetry"]
    spec: TelemetrySpec = Field(default_factory=TelemetrySpec)

    def selects(self, labels: dict[str, str]) -> bool:
        """Whether this Telemetry's selector or targetRef(s) select a workload with these labels (a
        Telemetry without either selects none here: it applies namespace- or mesh-wide)."""
        spec = self.spec
        if spec.refs:
            return any(labels.get(GATEWAY_NAME_LABEL) == ref.name for ref in spec.refs)
        if spec.selector is None or not spec.selector.match_labels:
            return False
        return all(labels.get(k) == v for k, v in spec.selector.match_labels.items())


_PAIRS = {")": "(", "]": "[", "}": "{"}


def cel_problem(text: str) -> str:
    """A light syntax check of a CEL expression (balanced brackets and string literals, no empty operand
    at either end): what Envoy would refuse at load time is refused here, before it reaches a proxy."""
    stack: list[str] = []
    i, n = 0, len(text)
    while i < n:
        ch = text[i]
        if ch in "'\"":
            end = i + 1
            while end < n and text[end] != ch:
                end += 2 if text[end] == "\\" else 1
            if end >= n:
                return f"unterminated string at {i}"
            i = end + 1
            continue
        if ch in "([{":
            stack.append(ch)
        elif ch in ")]}":
            if not stack or stack.pop() != _PAIRS[ch]:
                return f"unbalanced {ch!r} at {i}"
        elif ch in ";`#$@":
            return f"unexpected {ch!r} at {i}"
        i += 1
    if stack:
        return f"unclosed {stack[-1]!r}"
    stripped = text.strip()
    if not stripped or stripped[-1] in "=<>!&|+-*/%.,?:" or stripped[0] in "=<>&|*/%.,?:)":
        return "incomplete expression"
    return ""


# The roots of the attributes Envoy's CEL evaluates (request, response, connection, upstream, source and
# destination addresses, xDS names and metadata, dynamic metadata, filter state)
ENVOY_ATTRIBUTES = frozenset(
    {"request", "response", "connection", "upstream", "source", "destination", "xds", "metadata", "filter_state"}
)
_ADDRESS_PARTS = frozenset({"address", "port"})
_CEL_WORDS = frozenset({"true", "false", "null", "in"})
_STRING = re.compile(r"'(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\"")
_PATH = re.compile(r"(?<![\w.])([A-Za-z_]\w*)((?:\s*\.\s*[A-Za-z_]\w*)*)(\s*\()?")


def tag_expression_problem(text: str) -> str:
    """Why a tag override's value cannot be evaluated by Envoy's CEL formatter (`%CEL(...)%`), else "".
    Istio's attributes that only its own stats filter has (the peer's and node's: `upstream_peer`,
    `downstream_peer`, `node`, `source.labels`...) are refused by name."""
    if "%" in text:
        return "'%' cannot appear in an expression Envoy's formatter embeds as %CEL(...)%"
    bare = _STRING.sub("''", text)
    for match in _PATH.finditer(bare):
        root, rest, call = match.group(1), match.group(2), match.group(3)
        if root in _CEL_WORDS or root.isdigit() or (call and not rest):
            continue  # a literal, an operator word, or a function (has, size, string...)
        parts = [part.strip() for part in rest.split(".") if part.strip()]
        if root not in ENVOY_ATTRIBUTES:
            return (
                f"attribute {root!r} is not one Envoy evaluates (Istio's peer and node attributes come from its "
                f"own stats filter, absent from upstream Envoy); supported roots: {', '.join(sorted(ENVOY_ATTRIBUTES))}"
            )
        if root in ("source", "destination") and parts and parts[0] not in _ADDRESS_PARTS:
            return (
                f"attribute '{root}.{parts[0]}' is not one Envoy evaluates ({root}.address and {root}.port are; "
                "Istio's workload labels come from its own stats filter)"
            )
    return ""
