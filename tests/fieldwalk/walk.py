"""Every field of every Istio (and Gateway API) model, and which of them translation reads: a recording
`__getattribute__` on the models while the golden cases are translated (parsing excluded: validators reading a
field do not count as using it)."""

from __future__ import annotations

import contextlib
import pathlib
import types
import typing
from collections.abc import Iterator
from typing import Any

from pydantic import BaseModel

from meshd.api.meta import GATEWAY_API_GROUP, StrictModel
from meshd.api.parse import KINDS

GOLDEN = pathlib.Path(__file__).resolve().parents[1] / "golden" / "testdata"
Field = tuple[str, str]  # (model class name, wire name)


def istio_spec_models() -> dict[str, type[StrictModel]]:
    """kind -> its spec model, for the Istio and Gateway API kinds meshd reads."""
    out = {}
    for kind, (model, versions) in KINDS.items():
        if any(".istio.io/" in v or v.startswith(f"{GATEWAY_API_GROUP}/") for v in versions):
            spec = model.model_fields["spec"].annotation
            assert isinstance(spec, type) and issubclass(spec, StrictModel), kind
            out[kind] = spec
    return out


def _models_in(annotation: Any) -> Iterator[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        yield annotation
    origin = typing.get_origin(annotation)
    if origin is not None or isinstance(annotation, types.UnionType):
        for arg in typing.get_args(annotation):
            yield from _models_in(arg)


def reachable(root: type[StrictModel], *, skip: set[Field] | None = None) -> list[type[StrictModel]]:
    """Every model a spec is made of (the spec first), not descending into refused fields (nor `skip`)."""
    seen: list[type[StrictModel]] = []
    todo: list[type[BaseModel]] = [root]
    while todo:
        model = todo.pop()
        if not issubclass(model, StrictModel):
            raise AssertionError(f"{model.__name__} in {root.__name__} is not a StrictModel")
        if model in seen:
            continue
        seen.append(model)
        refused = model.refused_fields()
        for name, info in model.model_fields.items():
            wire = info.alias or name
            if wire not in refused and (model.__name__, wire) not in (skip or set()):
                todo.extend(_models_in(info.annotation))
    return seen


def wire_name(model: type[BaseModel], name: str) -> str:
    info = model.model_fields[name]
    return info.alias or name


@contextlib.contextmanager
def recording(reads: set[Field]) -> Iterator[dict[str, bool]]:
    """While active (and `switch["on"]`), a read of a model field is added to `reads`."""
    switch = {"on": True}
    original = StrictModel.__getattribute__

    def record(self: Any, name: str) -> Any:
        cls = type(self)
        if switch["on"] and not name.startswith("_") and name in cls.model_fields:
            reads.add((cls.__name__, wire_name(cls, name)))
        return original(self, name)

    StrictModel.__getattribute__ = record  # type: ignore[method-assign]
    try:
        yield switch
    finally:
        StrictModel.__getattribute__ = original  # type: ignore[method-assign]
