"""Resource specs: what translation declares instead of building eagerly.

A spec is a resource name, a key holding every input the resource depends on, and a function
that builds it. The cache layer builds each distinct key once and shares the result across proxy
groups and across pushes; translation stays pure and never needs to know about caching.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import Any, NamedTuple

from meshd.api.meta import InvalidResource


class Ident:
    """Key part for an input compared by identity (e.g. a parsed VirtualService). Holding the object
    keeps it alive, so its identity cannot be reused while the key exists."""

    __slots__ = ("obj",)

    def __init__(self, obj: object) -> None:
        self.obj = obj

    def __hash__(self) -> int:
        return id(self.obj)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Ident) and other.obj is self.obj

    def __repr__(self) -> str:
        return f"Ident({type(self.obj).__name__}@{id(self.obj):x})"


def ident(obj: object | None) -> Ident | None:
    return None if obj is None else Ident(obj)


class Partial(NamedTuple):
    """Serialised bytes assembled without some parts the proto guard refused (a virtual host left out
    of its route configuration): what is served, and why the parts are missing. `body` None: nothing is
    served (a part the resource cannot do without was refused)."""

    body: bytes | None
    errors: tuple[InvalidResource, ...]


def refusal(kind: str, name: str, found: list[str]) -> InvalidResource:
    """The error of a generated resource (or part) Envoy's proto validation would refuse: left out."""
    return InvalidResource(None, f"{kind} {name}", "left out: Envoy's proto validation refuses it: " + "; ".join(found))


class Spec(NamedTuple):
    """`build` returns a protobuf message, or already-serialised bytes of type `type_url` (a `Partial`
    when parts were left out).
    (A NamedTuple: thousands are made per push, and tuples are the cheapest to make.)"""

    name: str
    key: Hashable
    build: Callable[[], Any]
    type_url: str = ""
