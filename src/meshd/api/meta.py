"""Object metadata, resource keys and the error type every invalid resource becomes."""

from __future__ import annotations

import difflib
import types
import typing
from dataclasses import dataclass
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic.alias_generators import to_camel


class ApiModel(BaseModel):
    """Base of every model: camelCase on the wire, unknown fields ignored, immutable.

    A null where the field takes no null means "not set", as in Kubernetes: a real API server serves an
    empty list or map as null (an EndpointSlice with no endpoints: `"endpoints": null, "ports": null`), and
    `annotations:` with nothing after it is YAML null. Such a field then gets its default (empty)."""

    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="ignore", frozen=True, defer_build=True
    )
    _null_is_unset: ClassVar[frozenset[str]] = frozenset()

    @classmethod
    def __pydantic_init_subclass__(cls, **kwargs: Any) -> None:
        super().__pydantic_init_subclass__(**kwargs)
        names: set[str] = set()
        for name, info in cls.model_fields.items():
            if not info.is_required() and not _accepts_none(info.annotation):
                names.update({name, info.alias or name})
        cls._null_is_unset = frozenset(names)

    @model_validator(mode="before")
    @classmethod
    def _drop_nulls(cls, data: Any) -> Any:
        if isinstance(data, dict) and None in data.values():
            return {k: v for k, v in data.items() if v is not None or k not in cls._null_is_unset}
        return data


REFUSED_MARK = "x-meshd-refused"


def refused(reason: str, *, alias: str | None = None) -> Any:
    """A field of Istio's API that meshd does not implement: modelled (so the CRD has its type and the
    API server hands it to meshd rather than pruning it) and refused, naming it, whenever it is set.
    `reason` says what that means for traffic; the field-walk test lists every such field."""
    return Field(default=None, alias=alias, json_schema_extra={REFUSED_MARK: reason})


class StrictModel(ApiModel):
    """The base of every Istio API model: an unknown field is refused with its path and, when one of the
    model's fields is close, "did you mean" (a typo like `timout` must never be dropped); a field marked
    `refused(...)` is refused, with its reason, when set. The schema says `additionalProperties: false`,
    so the chart's CRDs (tools/gencrds.py) are as strict as the models."""

    model_config = ConfigDict(**{**ApiModel.model_config, "extra": "forbid", "hide_input_in_errors": True})
    _known: ClassVar[frozenset[str]] = frozenset()
    _wire_names: ClassVar[tuple[str, ...]] = ()
    _refused: ClassVar[dict[str, str]] = {}

    @classmethod
    def __pydantic_init_subclass__(cls, **kwargs: Any) -> None:
        super().__pydantic_init_subclass__(**kwargs)
        cls._known = frozenset(n for name, info in cls.model_fields.items() for n in (name, info.alias or name))
        cls._wire_names = tuple(info.alias or name for name, info in cls.model_fields.items())
        wire = {info.alias or name: name for name, info in cls.model_fields.items()}
        refused_fields: dict[str, str] = {}  # by wire name, and by Python name unless that is another's wire name
        for name, info in cls.model_fields.items():
            extra = info.json_schema_extra
            if isinstance(extra, dict) and isinstance(extra.get(REFUSED_MARK), str):
                reason = extra[REFUSED_MARK]
                assert isinstance(reason, str)
                refused_fields[info.alias or name] = reason
                if wire.get(name, name) == name:
                    refused_fields[name] = reason
        cls._refused = refused_fields

    @model_validator(mode="before")
    @classmethod
    def _strict(cls, data: Any) -> Any:
        if isinstance(data, dict):
            for key, value in data.items():
                name = str(key)
                if name not in cls._known:
                    raise ValueError(f"{_path_part(name)}: unknown field{did_you_mean(name, cls._wire_names)}")
                if value is not None and name in cls._refused:
                    raise ValueError(f"{name}: not supported by meshd: {cls._refused[name]}")
        return data

    @classmethod
    def refused_fields(cls) -> dict[str, str]:
        """Wire name -> reason, for the fields this model refuses when set."""
        return {
            info.alias or name: cls._refused[info.alias or name]
            for name, info in cls.model_fields.items()
            if (info.alias or name) in cls._refused
        }


def did_you_mean(name: str, candidates: typing.Iterable[str]) -> str:
    """` (did you mean 'timeout'?)` when a candidate is close to `name` (case-insensitive), else ''."""
    if len(name) > 64:  # no field name is that long: not a typo of one (and difflib stays cheap)
        return ""
    lowered = {c.lower(): c for c in candidates}
    close = difflib.get_close_matches(name.lower(), list(lowered), n=1, cutoff=0.75)
    return f" (did you mean {lowered[close[0]]!r}?)" if close else ""


def _path_part(name: str) -> str:
    """A key as a path part the parser folds into the field path (no spaces, bounded)."""
    clipped = name if len(name) <= 80 else f"{name[:80]}..."
    return clipped if clipped and " " not in clipped and ":" not in clipped else repr(clipped).replace(" ", "\\x20")


def _accepts_none(annotation: Any) -> bool:
    if annotation is None or annotation is type(None) or annotation is Any:
        return True
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return any(_accepts_none(arg) for arg in typing.get_args(annotation))
    if typing.get_origin(annotation) is typing.Annotated:
        return _accepts_none(typing.get_args(annotation)[0])
    return False


class ObjectMeta(ApiModel):
    name: str = Field(min_length=1)
    namespace: str = "default"
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)
    uid: str = ""
    resource_version: str = ""
    creation_timestamp: str = ""


# Kinds whose name another API group also uses: their identity (ResourceKey.kind, the store's, the World's and
# the Kubernetes source's) is distinct, so that an Istio `networking.istio.io` Gateway and a Gateway API
# `gateway.networking.k8s.io` Gateway of the same namespace/name never replace each other.
GATEWAY_API_GROUP = "gateway.networking.k8s.io"
KUBERNETES_GATEWAY = "KubernetesGateway"
_QUALIFIED_KINDS = {(GATEWAY_API_GROUP, "Gateway"): KUBERNETES_GATEWAY}


def api_group(api_version: str) -> str:
    """The group of an apiVersion ("" for the core group's `v1`)."""
    return api_version.rpartition("/")[0]


def kind_identity(api_version: str, kind: str) -> str:
    """The kind meshd identifies a resource by: its kind, unless another group uses the same kind name."""
    return _QUALIFIED_KINDS.get((api_group(api_version), kind), kind)


@dataclass(frozen=True, order=True)
class ResourceKey:
    """Identity of a resource: kind identity (`kind_identity`: the group matters only where two groups share a
    kind name), namespace and name (the version does not change identity)."""

    kind: str
    namespace: str
    name: str

    def __str__(self) -> str:
        return f"{self.kind} {self.namespace}/{self.name}"


class Resource(ApiModel):
    """A top-level object with apiVersion, kind and metadata."""

    api_version: str
    kind: str
    metadata: ObjectMeta

    @property
    def key(self) -> ResourceKey:
        return ResourceKey(kind_identity(self.api_version, self.kind), self.metadata.namespace, self.metadata.name)


MAX_MESSAGE_CHARS = 2000
MAX_FIELD_CHARS = 300


@dataclass(frozen=True)
class InvalidResource(Exception):
    """A resource rejected by validation. `key` is None when even its identity could not be read.
    `severity` "warning": the resource is served, but not to every proxy (the message says to which not)."""

    key: ResourceKey | None
    field: str
    message: str
    origin: str = ""
    severity: str = "error"

    def __post_init__(self) -> None:
        # Messages may quote the input (a pydantic error, a YAML problem): bounded, whatever the input.
        for name, limit in (("field", MAX_FIELD_CHARS), ("message", MAX_MESSAGE_CHARS)):
            value = getattr(self, name)
            if len(value) > limit:
                object.__setattr__(self, name, f"{value[:limit]}... ({len(value) - limit} more characters)")

    def __str__(self) -> str:
        where = f"{self.origin}: " if self.origin else ""
        what = str(self.key) if self.key else "resource"
        return f"{where}{what}: {self.field}: {self.message}"


def field_path(loc: tuple[Any, ...]) -> str:
    """Render a pydantic error location as a field path like `spec.http[0].route[1].weight`."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out or "<root>"
