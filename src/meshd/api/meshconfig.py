"""The parts of Istio's MeshConfig that translation reads for authorization: `extensionProviders`
(envoyExtAuthzHttp / envoyExtAuthzGrpc, for CUSTOM policies), `pathNormalization` and
`trustDomainAliases`. One frozen, hashable value (`MeshPolicy`), part of GenerateOptions and so of
every cache key; read from the `istio` ConfigMap in Kubernetes mode and from `--mesh-config` standalone.

The fields of an ext_authz provider are Istio's (istio.io/docs/reference/config/istio.mesh.v1alpha1);
an unknown one is refused with its path. Providers of other kinds (tracing, access logging...) are kept
by name only: a CUSTOM policy naming one is refused by translation.
"""

from __future__ import annotations

from typing import Any, Literal

from envoy.type.v3 import http_status_pb2
from pydantic import ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic.alias_generators import to_camel

from meshd.api.meshtelemetry import InvalidTelemetryConfig, MeshTelemetry, parse_mesh_telemetry
from meshd.api.meta import ApiModel, StrictModel, field_path
from meshd.api.values import Duration, PortNumber

NORMALIZATIONS = ("NONE", "BASE", "MERGE_SLASHES", "DECODE_AND_MERGE_SLASHES")
DEFAULT_EXT_AUTHZ_TIMEOUT = "600s"  # Istio's default for both provider kinds


_STATUS_CODES = frozenset(c for c in http_status_pb2.StatusCode.values() if c)


class InvalidMeshConfig(ValueError):
    pass


class RequestBody(StrictModel):
    max_request_bytes: int = Field(default=0, ge=0, le=2**32 - 1)
    allow_partial_message: bool = False
    pack_as_bytes: bool = False


class _ExtAuthz(StrictModel):
    service: str = Field(min_length=1)
    port: PortNumber
    timeout: Duration | None = None
    fail_open: bool = False
    clear_route_cache: bool = False
    status_on_error: str = ""
    include_request_body_in_check: RequestBody | None = None

    @field_validator("status_on_error")
    @classmethod
    def _status(cls, value: str) -> str:
        if value and not (value.isdigit() and len(value) == 3 and int(value) in _STATUS_CODES):
            raise ValueError(f"{value[:20]!r} is not an HTTP status code Envoy knows")
        return value

    @property
    def hostname(self) -> str:
        """The service's hostname: `service` may be `<namespace>/<hostname>` (Istio's form)."""
        return self.service.partition("/")[2] if "/" in self.service else self.service

    @property
    def status_code(self) -> int:
        return int(self.status_on_error) if self.status_on_error else 403


class ExtAuthzHttp(_ExtAuthz):
    path_prefix: str = ""
    include_headers_in_check: tuple[str, ...] = ()  # deprecated by Istio: the same as the next
    include_request_headers_in_check: tuple[str, ...] = ()
    include_additional_headers_in_check: tuple[tuple[str, str], ...] = ()
    headers_to_upstream_on_allow: tuple[str, ...] = ()
    headers_to_downstream_on_deny: tuple[str, ...] = ()
    headers_to_downstream_on_allow: tuple[str, ...] = ()

    @field_validator("include_additional_headers_in_check", mode="before")
    @classmethod
    def _pairs(cls, value: Any) -> Any:
        return tuple(sorted(value.items())) if isinstance(value, dict) else value

    @field_validator("path_prefix")
    @classmethod
    def _prefix(cls, value: str) -> str:
        if value and not value.startswith("/"):
            raise ValueError(f"{value[:60]!r} must start with /")
        return value


class ExtAuthzGrpc(_ExtAuthz):
    pass


class ExtensionProvider(ApiModel):
    """One entry of `extensionProviders`: an ext_authz provider, or another kind kept by name."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="allow", frozen=True)
    name: str = Field(min_length=1)
    envoy_ext_authz_http: ExtAuthzHttp | None = None
    envoy_ext_authz_grpc: ExtAuthzGrpc | None = None

    @model_validator(mode="after")
    def _one(self) -> ExtensionProvider:
        if self.envoy_ext_authz_http is not None and self.envoy_ext_authz_grpc is not None:
            raise ValueError("envoyExtAuthzGrpc: only one provider kind per entry")
        return self

    @property
    def ext_authz(self) -> ExtAuthzHttp | ExtAuthzGrpc | None:
        return self.envoy_ext_authz_http or self.envoy_ext_authz_grpc

    @property
    def kind(self) -> str:
        """The provider kind as Istio names the field (the first other one for non-ext_authz kinds)."""
        if self.envoy_ext_authz_http is not None:
            return "envoyExtAuthzHttp"
        if self.envoy_ext_authz_grpc is not None:
            return "envoyExtAuthzGrpc"
        return next(iter(self.model_extra or {}), "none")

    def __hash__(self) -> int:
        return hash((self.name, self.envoy_ext_authz_http, self.envoy_ext_authz_grpc, self.kind))


class MeshPolicy(ApiModel):
    """What translation reads of the mesh config: authorization's parts, and `outboundTrafficPolicy.mode`
    (None: not set, meshd's `--outbound-traffic-policy` applies)."""

    extension_providers: tuple[ExtensionProvider, ...] = ()
    path_normalization: Literal["NONE", "BASE", "MERGE_SLASHES", "DECODE_AND_MERGE_SLASHES"] = "BASE"
    trust_domain_aliases: tuple[str, ...] = ()
    outbound_traffic_policy: Literal["ALLOW_ANY", "REGISTRY_ONLY"] | None = None
    # access logging and tracing (api/meshtelemetry.py)
    telemetry: MeshTelemetry = MeshTelemetry()

    def provider(self, name: str) -> ExtensionProvider | None:
        return next((p for p in self.extension_providers if p.name == name), None)

    def __hash__(self) -> int:
        return hash(
            (
                self.extension_providers,
                self.path_normalization,
                self.trust_domain_aliases,
                self.outbound_traffic_policy,
                self.telemetry,
            )
        )


def parse_mesh_policy(raw: dict[str, Any]) -> MeshPolicy:
    """The authorization parts of a MeshConfig mapping. Raises InvalidMeshConfig naming the field."""
    providers = raw.get("extensionProviders") or []
    normalization = raw.get("pathNormalization") or {}
    outbound = raw.get("outboundTrafficPolicy") or {}
    if not isinstance(outbound, dict):
        raise InvalidMeshConfig("outboundTrafficPolicy: must be a mapping")
    if not isinstance(providers, list):
        raise InvalidMeshConfig("extensionProviders: must be a list")
    if not isinstance(normalization, dict):
        raise InvalidMeshConfig("pathNormalization: must be a mapping")
    mode = normalization.get("normalization") or "BASE"
    data = {
        "extensionProviders": providers,
        "pathNormalization": "BASE" if mode == "DEFAULT" else mode,
        "trustDomainAliases": raw.get("trustDomainAliases") or [],
        "outboundTrafficPolicy": outbound.get("mode"),
    }
    try:
        policy = MeshPolicy.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = field_path(first["loc"]).replace("pathNormalization", "pathNormalization.normalization")
        where = where.replace("outboundTrafficPolicy", "outboundTrafficPolicy.mode")
        message = "unknown field" if first["type"] == "extra_forbidden" else first["msg"].removeprefix("Value error, ")
        head, sep, rest = message.partition(": ")
        if sep and head and " " not in head:  # "<field>: message" from a model validator: part of the path
            where, message = f"{where}.{head}" if where != "<root>" else head, rest
        raise InvalidMeshConfig(f"{where}: {message}") from None
    names = [p.name for p in policy.extension_providers]
    for i, name in enumerate(names):
        if name in names[:i]:
            raise InvalidMeshConfig(f"extensionProviders[{i}].name: {name!r} is already the name of another provider")
    try:
        telemetry = parse_mesh_telemetry(raw)
    except InvalidTelemetryConfig as exc:
        raise InvalidMeshConfig(str(exc)) from None
    return policy.model_copy(update={"telemetry": telemetry})
