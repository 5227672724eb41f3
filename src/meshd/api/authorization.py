"""Istio security.istio.io AuthorizationPolicy (v1 and v1beta1): the model and Istio's validation.

Every field of Istio's schema is modelled; an unknown field is refused with its path (a misspelled
`notPaths` must never be dropped: the policy would allow what its author denied). The checks are those
Istio's webhook makes (the messages `kubectl apply` gets from meshd's webhook are these):
- `selector` and `targetRef`/`targetRefs` exclude each other; `targetRefs` name a kind Istio attaches
  policies to (Service, ServiceEntry, Gateway; GatewayClass in the root namespace), in the same namespace;
- `provider` with CUSTOM only, and CUSTOM needs one;
- a `from` needs a non-empty `source`, a `to` a non-empty `operation`, a `when` a known key and `values` or
  `notValues`; no value is an empty string;
- IP blocks and IP conditions are addresses or CIDRs, ports and `destination.port` port numbers, paths with
  `{*}` / `{**}` valid path templates;
- the `istio.io/dry-run` annotation is a boolean.

A policy whose spec fails these checks is not dropped: `refused_policy` keeps what can be read of it (its
scope and action) so that translation fails closed on the workloads it selects (`translate/authz`).
"""

from __future__ import annotations

import ipaddress
import re
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, Field, PrivateAttr, ValidationError, model_validator

from meshd.api.meta import InvalidResource, ObjectMeta, Resource, StrictModel
from meshd.api.values import check_regex

ACTIONS = ("ALLOW", "DENY", "AUDIT", "CUSTOM")
Action = Literal["ALLOW", "DENY", "AUDIT", "CUSTOM"]
DRY_RUN_ANNOTATION = "istio.io/dry-run"
# Go's strconv.ParseBool, which Istio reads the annotation with
_TRUE = frozenset({"1", "t", "T", "TRUE", "true", "True"})
_FALSE = frozenset({"0", "f", "F", "FALSE", "false", "False"})

# targetRef kinds Istio accepts: (group, kind); "" and "core" are the core group
TARGET_KINDS = frozenset(
    {
        ("", "Service"),
        ("core", "Service"),
        ("networking.istio.io", "ServiceEntry"),
        ("gateway.networking.k8s.io", "Gateway"),
        ("gateway.networking.k8s.io", "GatewayClass"),
    }
)

# `when` keys: exact names, and the bracketed families
IP_KEYS = frozenset({"source.ip", "remote.ip", "destination.ip"})
PLAIN_KEYS = IP_KEYS | frozenset(
    {
        "source.namespace",
        "source.principal",
        "request.auth.principal",
        "request.auth.audiences",
        "request.auth.presenter",
        "destination.port",
        "connection.sni",
    }
)
_HEADER_KEY = re.compile(r"request\.headers\[([^\[\]]+)\]")
_CLAIM_KEY = re.compile(r"request\.auth\.claims((?:\[[^\[\]]+\])+)")
_FILTER_KEY = re.compile(r"experimental\.envoy\.filters\.([a-z0-9_]+(?:\.[a-z0-9_]+)+)\[([^\[\]]+)\]")
_TEMPLATE_OPERATOR = re.compile(r"\{\*\*?\}")
_RE2_SPECIAL = frozenset("\\.^$|?*+()[]{}")


def _non_empty(values: list[str]) -> list[str]:
    for i, value in enumerate(values):
        if value == "":
            raise ValueError(f"item {i} is an empty string")
    return values


def _ip_blocks(values: list[str]) -> list[str]:
    _non_empty(values)
    for i, value in enumerate(values):
        if not is_ip_block(value):
            raise ValueError(f"item {i} ({value[:60]!r}) is not an IP address or CIDR block")
    return values


def _ports(values: list[str]) -> list[str]:
    _non_empty(values)
    for i, value in enumerate(values):
        if not is_port(value):
            raise ValueError(f"item {i} ({value[:60]!r}) is not a port number (0..65535)")
    return values


def _paths(values: list[str]) -> list[str]:
    _non_empty(values)
    for i, value in enumerate(values):
        problem = path_template_problem(value)
        if problem:
            raise ValueError(f"item {i} ({value[:100]!r}) {problem}")
    return values


Strings = Annotated[list[str], AfterValidator(_non_empty)]
IpBlocks = Annotated[list[str], AfterValidator(_ip_blocks)]
Ports = Annotated[list[str], AfterValidator(_ports)]
Paths = Annotated[list[str], AfterValidator(_paths)]


def is_ip_block(value: str) -> bool:
    try:
        ipaddress.ip_network(value, strict=False)
    except ValueError:
        return False
    return True


def is_port(value: str) -> bool:
    return value.isdigit() and len(value) <= 5 and int(value) <= 65535


def is_path_template(path: str) -> bool:
    return "{" in path or "}" in path


def path_template_problem(path: str) -> str | None:
    """Why a path with `{`/`}` is not a valid path template (Istio's rules), or None."""
    if not is_path_template(path):
        return None
    if not path.startswith("/"):
        return "is not a valid path template: it must start with /"
    operators = _TEMPLATE_OPERATOR.findall(path)
    if "{**}" in operators[:-1]:
        return "is not a valid path template: {**} must be the last operator"
    for segment in path.split("/"):
        if ("{" in segment or "}" in segment or "*" in segment) and segment not in ("{*}", "{**}"):
            return (
                "is not a valid path template: a segment with {*} or {**} must hold nothing else, and * { } are"
                " allowed only in those operators"
            )
    try:
        check_regex(template_regex(path))
    except ValueError:
        return "is too long a path template for Envoy's regex engine"
    return None


def template_regex(path: str) -> str:
    """A path template as an RE2 regex: `{*}` one segment (one or more characters but /), `{**}` what
    remains (any characters, / included)."""
    out = []
    for segment in path.split("/"):
        if segment == "{*}":
            out.append("[^/]+")
        elif segment == "{**}":
            out.append(".*")
        else:
            out.append("".join("\\" + c if c in _RE2_SPECIAL else c for c in segment))
    return "/".join(out)


def condition_key_problem(key: str) -> str | None:
    """Why a `when` key is not one Istio knows (istio.io/docs/reference/config/security/conditions), or None."""
    if key in PLAIN_KEYS or _HEADER_KEY.fullmatch(key) or _CLAIM_KEY.fullmatch(key) or _FILTER_KEY.fullmatch(key):
        return None
    return f"{key!r} is not a supported attribute (istio.io/docs/reference/config/security/conditions)"


def header_name(key: str) -> str | None:
    found = _HEADER_KEY.fullmatch(key)
    return found.group(1) if found else None


def claim_path(key: str) -> list[str] | None:
    """`request.auth.claims[a][b]` -> ["a", "b"] (nested claims)."""
    found = _CLAIM_KEY.fullmatch(key)
    return found.group(1)[1:-1].split("][") if found else None


def filter_metadata_key(key: str) -> tuple[str, str] | None:
    """`experimental.envoy.filters.network.mysql_proxy[db.table]` -> (the filter name, "db.table")."""
    found = _FILTER_KEY.fullmatch(key)
    return (f"envoy.filters.{found.group(1)}", found.group(2)) if found else None


class Source(StrictModel):
    principals: Strings = Field(default_factory=list)
    not_principals: Strings = Field(default_factory=list)
    request_principals: Strings = Field(default_factory=list)
    not_request_principals: Strings = Field(default_factory=list)
    namespaces: Strings = Field(default_factory=list)
    not_namespaces: Strings = Field(default_factory=list)
    ip_blocks: IpBlocks = Field(default_factory=list)
    not_ip_blocks: IpBlocks = Field(default_factory=list)
    remote_ip_blocks: IpBlocks = Field(default_factory=list)
    not_remote_ip_blocks: IpBlocks = Field(default_factory=list)

    @property
    def empty(self) -> bool:
        return not any(getattr(self, name) for name in type(self).model_fields)


class Operation(StrictModel):
    hosts: Strings = Field(default_factory=list)
    not_hosts: Strings = Field(default_factory=list)
    ports: Ports = Field(default_factory=list)
    not_ports: Ports = Field(default_factory=list)
    methods: Strings = Field(default_factory=list)
    not_methods: Strings = Field(default_factory=list)
    paths: Paths = Field(default_factory=list)
    not_paths: Paths = Field(default_factory=list)

    @property
    def empty(self) -> bool:
        return not any(getattr(self, name) for name in type(self).model_fields)


class From(StrictModel):
    source: Source | None = None

    @model_validator(mode="after")
    def _needs_source(self) -> From:
        if self.source is None or self.source.empty:
            raise ValueError("source: must not be empty (set at least one field)")
        return self


class To(StrictModel):
    operation: Operation | None = None

    @model_validator(mode="after")
    def _needs_operation(self) -> To:
        if self.operation is None or self.operation.empty:
            raise ValueError("operation: must not be empty (set at least one field)")
        return self


class Condition(StrictModel):
    key: str
    values: Strings = Field(default_factory=list)
    not_values: Strings = Field(default_factory=list)

    @model_validator(mode="after")
    def _check_key(self) -> Condition:
        problem = condition_key_problem(self.key)
        if problem:
            raise ValueError(f"key: {problem}")
        if not self.values and not self.not_values:
            raise ValueError("values: one of values or notValues must be set")
        for field, found in (("values", self.values), ("notValues", self.not_values)):
            for i, value in enumerate(found):
                if self.key in IP_KEYS and not is_ip_block(value):
                    raise ValueError(f"{field}[{i}]: {value[:60]!r} is not an IP address or CIDR block")
                if self.key == "destination.port" and not is_port(value):
                    raise ValueError(f"{field}[{i}]: {value[:60]!r} is not a port number (0..65535)")
        return self


class Rule(StrictModel):
    from_: list[From] = Field(default_factory=list, alias="from")
    to: list[To] = Field(default_factory=list)
    when: list[Condition] = Field(default_factory=list)


class PolicySelector(StrictModel):
    match_labels: dict[str, str] = Field(default_factory=dict)


class TargetRef(StrictModel):
    group: str = ""
    kind: str = Field(min_length=1)
    name: str = Field(min_length=1, max_length=253)
    namespace: str = ""

    @model_validator(mode="after")
    def _kind(self) -> TargetRef:
        if (self.group, self.kind) not in TARGET_KINDS:
            raise ValueError(
                f"kind: {self.group or 'core'}/{self.kind} is not a kind Istio attaches authorization policies to"
                " (core/Service, networking.istio.io/ServiceEntry, gateway.networking.k8s.io/Gateway or GatewayClass)"
            )
        return self


class ExtensionProviderRef(StrictModel):
    name: str = ""


class AuthorizationPolicySpec(StrictModel):
    selector: PolicySelector | None = None
    target_ref: TargetRef | None = None
    target_refs: list[TargetRef] = Field(default_factory=list)
    rules: list[Rule] = Field(default_factory=list)
    action: Action = "ALLOW"
    provider: ExtensionProviderRef | None = None

    @model_validator(mode="after")
    def _cross_fields(self) -> AuthorizationPolicySpec:
        if self.target_ref is not None and self.target_refs:
            raise ValueError("targetRef: only one of targetRef or targetRefs can be set")
        if self.selector is not None and self.targets:
            raise ValueError("selector: only one of selector or targetRefs can be set")
        if self.action == "CUSTOM" and (self.provider is None or not self.provider.name):
            raise ValueError(
                "provider: the CUSTOM action needs provider.name (an extension provider of the mesh config)"
            )
        if self.action != "CUSTOM" and self.provider is not None:
            raise ValueError(f"provider: can only be used with the CUSTOM action, not {self.action}")
        return self

    @property
    def targets(self) -> list[TargetRef]:
        return [self.target_ref] if self.target_ref is not None else list(self.target_refs)


class AuthorizationPolicy(Resource):
    kind: Literal["AuthorizationPolicy"]
    spec: AuthorizationPolicySpec = Field(default_factory=AuthorizationPolicySpec)
    # Set on a policy whose spec failed validation (`refused_policy`; never read from a document): what
    # was wrong, and its action if that could be read. Its `spec` then holds only its scope.
    _refusal: InvalidResource | None = PrivateAttr(default=None)
    _refused_action: str | None = PrivateAttr(default=None)

    @model_validator(mode="after")
    def _dry_run(self) -> AuthorizationPolicy:
        value = self.metadata.annotations.get(DRY_RUN_ANNOTATION)
        if value is not None and value not in _TRUE | _FALSE:
            raise ValueError(f"metadata.annotations: {DRY_RUN_ANNOTATION} must be true or false, not {value[:40]!r}")
        return self

    @property
    def dry_run(self) -> bool:
        return self.metadata.annotations.get(DRY_RUN_ANNOTATION, "false") in _TRUE

    @property
    def refusal(self) -> InvalidResource | None:
        return self._refusal

    @property
    def action(self) -> str | None:
        """The action; None for a refused policy whose action could not be read."""
        return self.spec.action if self._refusal is None else self._refused_action


def refused_policy(doc: dict[str, Any], error: InvalidResource) -> AuthorizationPolicy | None:
    """A policy whose spec failed validation, kept with what can be read of it so that it fails closed:
    its metadata, its `selector` or `targetRefs` if they read on their own (else it is namespace-wide) and
    its action if that reads (else None). None when even the metadata is unreadable."""
    try:
        metadata = ObjectMeta.model_validate(doc.get("metadata"))
    except (ValidationError, TypeError, ValueError):
        return None
    raw = doc.get("spec")
    spec = raw if isinstance(raw, dict) else {}
    scope: dict[str, Any] = {}
    for field in ("selector", "targetRef", "targetRefs"):
        if field in spec:
            try:
                scope = AuthorizationPolicySpec.model_validate({field: spec[field]}).model_dump(
                    by_alias=True, exclude_defaults=True
                )
            except (ValidationError, TypeError, ValueError):
                scope = {}
            break
    action = spec.get("action", "ALLOW")
    # a dry-run policy stays one (never enforced), unless the annotation itself is what is invalid
    annotations = {k: v for k, v in metadata.annotations.items() if k != DRY_RUN_ANNOTATION or v in _TRUE | _FALSE}
    policy = AuthorizationPolicy(
        api_version=str(doc.get("apiVersion")),
        kind="AuthorizationPolicy",
        metadata=metadata.model_copy(update={"annotations": annotations}),
        spec=AuthorizationPolicySpec.model_validate(scope),
    )
    policy._refusal = error
    policy._refused_action = action if isinstance(action, str) and action in ACTIONS else None
    return policy
