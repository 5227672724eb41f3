"""networking.istio.io EnvoyFilter (v1alpha3), as Istio defines it: patches to the Envoy config generated
for the proxies it selects (`workloadSelector`, `targetRefs`, or every proxy of its namespace; of the mesh
from the root namespace), applied in `priority` order.

Strict: an unknown field is refused (named by its path), so is what meshd does not apply:
`routeConfiguration.gateway` / `portName` and `listener.portName` (not matched yet). `applyTo: BOOTSTRAP`
takes MERGE only (the one operation Istio applies to the bootstrap) and no listener / routeConfiguration /
cluster match; translate/envoyfilter/bootstrap.py says how the patch reaches the bootstrap.
Each patch's `value` is parsed as the Envoy message its `applyTo` names
(api/envoy_value.py): a typo in a field name or an unknown `@type` is refused here, with its path."""

from __future__ import annotations

from typing import Any, Literal

from google.protobuf.message import Message
from pydantic import Field, PrivateAttr, model_validator

from meshd.api.envoy_value import VALUE_TYPES, parse_value
from meshd.api.meta import Resource, StrictModel, refused

ApplyTo = Literal[
    "LISTENER",
    "FILTER_CHAIN",
    "NETWORK_FILTER",
    "HTTP_FILTER",
    "ROUTE_CONFIGURATION",
    "VIRTUAL_HOST",
    "HTTP_ROUTE",
    "CLUSTER",
    "EXTENSION_CONFIG",
    "BOOTSTRAP",
    "LISTENER_FILTER",
]
Operation = Literal["MERGE", "ADD", "REMOVE", "INSERT_BEFORE", "INSERT_AFTER", "INSERT_FIRST", "REPLACE"]
PatchContext = Literal["ANY", "SIDECAR_INBOUND", "SIDECAR_OUTBOUND", "GATEWAY"]
FilterClass = Literal["UNSPECIFIED", "AUTHN", "AUTHZ", "STATS"]
RouteAction = Literal["ANY", "ROUTE", "REDIRECT", "DIRECT_RESPONSE"]

# which operations each applyTo takes (Istio's validation)
_INSERTS = {"INSERT_BEFORE", "INSERT_AFTER", "INSERT_FIRST"}
_LISTED = {"NETWORK_FILTER", "HTTP_FILTER", "HTTP_ROUTE", "LISTENER_FILTER"}  # ordered items: inserts make sense


class ProxyMatch(StrictModel):
    proxy_version: str = ""
    metadata: dict[str, str] = Field(default_factory=dict)


class SubFilterMatch(StrictModel):
    name: str = ""


class FilterMatch(StrictModel):
    name: str = ""
    sub_filter: SubFilterMatch | None = None


class FilterChainMatch(StrictModel):
    name: str = ""
    sni: str = ""
    transport_protocol: str = ""
    application_protocols: str = ""
    filter: FilterMatch | None = None
    destination_port: int | None = Field(default=None, ge=0, le=65535)


class ListenerMatch(StrictModel):
    port_number: int | None = Field(default=None, ge=0, le=65535)
    port_name: str | None = refused("deprecated in Istio; the patch would apply nowhere: match by portNumber")
    filter_chain: FilterChainMatch | None = None
    listener_filter: str = ""
    name: str = ""


class RouteMatch(StrictModel):
    name: str = ""
    action: RouteAction = "ANY"


class VirtualHostMatch(StrictModel):
    name: str = ""
    route: RouteMatch | None = None


class RouteConfigurationMatch(StrictModel):
    port_number: int | None = Field(default=None, ge=0, le=65535)
    port_name: str | None = refused("the patch would apply nowhere: match by portNumber or name")
    gateway: str | None = refused("the patch would apply nowhere: match a gateway's route configuration by name")
    vhost: VirtualHostMatch | None = None
    name: str = ""


class ClusterMatch(StrictModel):
    port_number: int | None = Field(default=None, ge=0, le=65535)
    service: str = ""
    subset: str = ""
    name: str = ""


class PatchMatch(StrictModel):
    context: PatchContext = "ANY"
    proxy: ProxyMatch | None = None
    listener: ListenerMatch | None = None
    route_configuration: RouteConfigurationMatch | None = None
    cluster: ClusterMatch | None = None

    @model_validator(mode="after")
    def _one(self) -> PatchMatch:
        if sum(x is not None for x in (self.listener, self.route_configuration, self.cluster)) > 1:
            raise ValueError("only one of listener, routeConfiguration, cluster may be set")
        return self


class Patch(StrictModel):
    operation: Operation
    value: dict[str, Any] | None = None
    filter_class: FilterClass = "UNSPECIFIED"


class ConfigPatch(StrictModel):
    apply_to: ApplyTo
    match: PatchMatch = Field(default_factory=PatchMatch)
    patch: Patch
    _message: Message | None = PrivateAttr(default=None)

    @property
    def message(self) -> Message | None:
        """The patch value as typed Envoy config (None for REMOVE)."""
        return self._message

    @model_validator(mode="after")
    def _check(self) -> ConfigPatch:
        apply_to, op = self.apply_to, self.patch.operation
        if apply_to == "BOOTSTRAP" and op != "MERGE":
            raise ValueError(f"patch.operation: BOOTSTRAP takes MERGE only (as Istio applies it), not {op}")
        if apply_to == "EXTENSION_CONFIG" and op != "ADD":
            raise ValueError(f"patch.operation: EXTENSION_CONFIG takes ADD only (as Istio), not {op}")
        if op in _INSERTS and apply_to not in _LISTED:
            raise ValueError(f"patch.operation: {op} applies to ordered items only ({', '.join(sorted(_LISTED))})")
        if self.patch.filter_class != "UNSPECIFIED" and (
            op != "ADD" or apply_to not in ("HTTP_FILTER", "NETWORK_FILTER")
        ):
            raise ValueError("patch.filterClass: only for the ADD operation of an HTTP_FILTER or NETWORK_FILTER")
        wanted = _expected_match(apply_to)
        given = [n for n in ("listener", "route_configuration", "cluster") if getattr(self.match, n) is not None]
        if given and apply_to == "BOOTSTRAP":
            raise ValueError(f"match.{_camel(given[0])}: applyTo BOOTSTRAP matches by context and proxy only")
        if given and wanted is not None and given[0] != wanted:
            raise ValueError(f"match: applyTo {apply_to} takes a {_camel(wanted)} match, not {_camel(given[0])}")
        if op == "REMOVE":
            return self
        if self.patch.value is None:
            raise ValueError(f"patch.value: required for {op}")
        try:
            self._message = parse_value(apply_to, self.patch.value)
        except ValueError as exc:
            raise ValueError(f"patch.value: {VALUE_TYPES[apply_to].rsplit('.', 1)[-1]}: {exc}") from None
        return self


def _expected_match(apply_to: str) -> str | None:
    if apply_to in ("LISTENER", "FILTER_CHAIN", "NETWORK_FILTER", "HTTP_FILTER", "LISTENER_FILTER"):
        return "listener"
    if apply_to in ("ROUTE_CONFIGURATION", "VIRTUAL_HOST", "HTTP_ROUTE"):
        return "route_configuration"
    if apply_to == "CLUSTER":
        return "cluster"
    return None


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(p.title() for p in rest)


class EnvoyFilterSelector(StrictModel):
    labels: dict[str, str] = Field(default_factory=dict)


class EnvoyFilterTargetRef(StrictModel):
    group: str = ""
    kind: str = Field(min_length=1)
    name: str = Field(min_length=1, max_length=253)
    namespace: str = ""

    @model_validator(mode="after")
    def _kind(self) -> EnvoyFilterTargetRef:
        if (self.group, self.kind) not in (
            ("gateway.networking.k8s.io", "Gateway"),
            ("gateway.networking.k8s.io", "GatewayClass"),
        ):
            raise ValueError(
                f"kind: {self.group or 'core'}/{self.kind}: EnvoyFilters attach to gateway.networking.k8s.io "
                "Gateway or GatewayClass only"
            )
        return self


class EnvoyFilterSpec(StrictModel):
    workload_selector: EnvoyFilterSelector | None = None
    target_refs: list[EnvoyFilterTargetRef] = Field(default_factory=list)
    config_patches: list[ConfigPatch] = Field(default_factory=list)
    priority: int = Field(default=0, ge=-(2**31), le=2**31 - 1)

    @model_validator(mode="after")
    def _selection(self) -> EnvoyFilterSpec:
        if self.workload_selector is not None and self.target_refs:
            raise ValueError("targetRefs: cannot be set together with workloadSelector")
        return self


class EnvoyFilter(Resource):
    spec: EnvoyFilterSpec = Field(default_factory=EnvoyFilterSpec)
