"""Istio telemetry.istio.io Telemetry (v1 and v1alpha1): a workload's access logging, tracing and metrics
providers, by selector or targetRef(s), inherited mesh (root namespace) -> namespace -> workload.

Field names follow Istio's CRD schema. Unknown fields are refused with their path, as are the parts meshd
does not translate yet (metrics overrides and reportingInterval, targetRefs to waypoint kinds): never
silently dropped. Istio's own validation rules are checked here so admission and translation agree.
"""

from __future__ import annotations

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


class MetricSelector(StrictModel):
    metric: str = ""
    custom_metric: str = ""
    mode: WorkloadMode = "CLIENT_AND_SERVER"


class TagOverride(StrictModel):
    operation: Literal["UPSERT", "REMOVE"] = "UPSERT"
    value: str = ""


class MetricsOverride(StrictModel):
    match: MetricSelector | None = None
    disabled: bool | None = None
    tag_overrides: dict[str, TagOverride] = Field(default_factory=dict)


class Metrics(StrictModel):
    providers: list[ProviderRef] = Field(default_factory=list)
    overrides: list[MetricsOverride] | None = refused(
        "metrics overrides are not applied yet: every Istio standard metric is reported with its default labels"
    )
    reporting_interval: str | None = refused("Envoy's stats are scraped, not pushed: no reporting interval applies")

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
