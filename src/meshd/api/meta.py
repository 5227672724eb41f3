"""Object metadata, resource keys and the error type every invalid resource becomes."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel


class ApiModel(BaseModel):
    """Base of every model: camelCase on the wire, unknown fields ignored, immutable."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore", frozen=True)


class ObjectMeta(ApiModel):
    name: str = Field(min_length=1)
    namespace: str = "default"
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)
    uid: str = ""
    resource_version: str = ""
    creation_timestamp: str = ""


@dataclass(frozen=True, order=True)
class ResourceKey:
    """Identity of a resource: kind, namespace and name (the apiVersion does not change identity)."""

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
        return ResourceKey(self.kind, self.metadata.namespace, self.metadata.name)


MAX_MESSAGE_CHARS = 2000
MAX_FIELD_CHARS = 300


@dataclass(frozen=True)
class InvalidResource(Exception):
    """A resource rejected by validation. `key` is None when even its identity could not be read."""

    key: ResourceKey | None
    field: str
    message: str
    origin: str = ""

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
