"""Checked cache keys: what a build read, and whether a reused entry's key covered it.

Every cached build runs against a context (the World, and where there is one the proxy's Scope and
the Proxy). In check mode the build gets traced stand-ins for them: every attribute, mapping lookup
and method call it makes is recorded with the value it returned. When an entry is later reused
(its key matched), the recorded reads are replayed against the context of the reuse; a read that now
returns something else means the key missed an input, and `MissedInput` names the cache, the read
and both values. Reads of nested entries (a layer reusing a service's clusters) are added to the
enclosing build's record, so an outer reuse is checked for them too.

Off by default (no wrapper, no record: the hot path is untouched); tests turn it on.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from meshd.model.world import World
from meshd.translate.proxy import Proxy
from meshd.translate.scope import Scope, ScopeKey

# One step from a root object: ("attr", name) | ("get", key) | ("all",) | ("call", name, args)
Step = tuple[Any, ...]
Read = tuple[str, tuple[Step, ...], object]  # (root, path, value seen)
_MISSING = object()
_TRACED_TYPES = (World, Scope, ScopeKey, Proxy)


class MissedInput(AssertionError):
    """A cache entry was reused although an input its build read has changed: the key misses it."""


@dataclass(frozen=True)
class Context:
    """What a build may read: the generation's World, the Scope and Proxy it is built for (if any), and
    the generation's derived values (`queries`: listener plans, inbound index, mTLS modes...)."""

    world: World
    scope: Scope | None = None
    proxy: Proxy | None = None
    queries: Any = None

    def root(self, name: str) -> object:
        return getattr(self, name)


class Tracer:
    """Records reads into every build in progress (builds nest) and checks reused entries."""

    def __init__(self) -> None:
        self._stack: list[list[Read]] = []

    def record(self, read: Read) -> None:
        for reads in self._stack:
            reads.append(read)

    @contextmanager
    def building(self) -> Iterator[list[Read]]:
        reads: list[Read] = []
        self._stack.append(reads)
        try:
            yield reads
        finally:
            self._stack.pop()

    def traced(self, context: Context) -> Context:
        """The stand-in context a build reads through."""
        return Context(
            world=_wrap(self, "world", (), context.world),  # type: ignore[arg-type]
            scope=_wrap(self, "scope", (), context.scope) if context.scope is not None else None,  # type: ignore[arg-type]
            proxy=_wrap(self, "proxy", (), context.proxy) if context.proxy is not None else None,  # type: ignore[arg-type]
            queries=_TracedObject(self, "queries", (), context.queries) if context.queries is not None else None,
        )

    def reused(self, *, cache: str, key: object, reads: list[Read], context: Context) -> None:
        """An entry built with `reads` is reused in `context`: every read must give what it gave then."""
        for root, path, seen in reads:
            base = context.root(root)
            if base is None:
                raise MissedInput(f"cache {cache!r} reused an entry that read {root} in a context without one")
            now = _follow(base, path)
            if not _same(seen, now):
                raise MissedInput(
                    f"cache {cache!r} reused an entry whose build read {_describe(root, path)} = {_short(seen)}, "
                    f"which is now {_short(now)}: its key {_short(key)} does not cover that input"
                )
        for outer in self._stack:
            outer.extend(reads)


def _same(a: object, b: object) -> bool:
    if a is b:
        return True
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        return dict(a) == dict(b)
    try:
        return bool(type(a) is type(b) and a == b)
    except Exception:
        return False


def _follow(obj: Any, path: tuple[Step, ...]) -> object:
    for step in path:
        kind = step[0]
        if kind == "attr":
            obj = getattr(obj, step[1])
        elif kind == "get":
            obj = obj.get(step[1], _MISSING)
        elif kind == "call":
            obj = getattr(obj, step[1])(*step[2])
    return obj


def _describe(root: str, path: tuple[Step, ...]) -> str:
    text = root
    for step in path:
        if step[0] == "attr":
            text += f".{step[1]}"
        elif step[0] == "get":
            text += f"[{step[1]!r}]"
        elif step[0] == "all":
            text += "[*]"
        else:
            text += f".{step[1]}({', '.join(repr(a) for a in step[2])})"
    return text


def _short(value: object, limit: int = 160) -> str:
    text = "<absent>" if value is _MISSING else repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _wrap(tracer: Tracer, root: str, path: tuple[Step, ...], value: object) -> object:
    if isinstance(value, _TRACED_TYPES):
        return _TracedObject(tracer, root, path, value)
    if isinstance(value, Mapping):
        return _TracedMapping(tracer, root, path, value)
    tracer.record((root, path, value))
    return value


class _TracedObject:
    """Stands in for a World, Scope, ScopeKey or Proxy: records what is read of it."""

    __slots__ = ("_obj", "_path", "_root", "_tracer")

    def __init__(self, tracer: Tracer, root: str, path: tuple[Step, ...], obj: object) -> None:
        self._tracer, self._root, self._path, self._obj = tracer, root, path, obj

    def __getattr__(self, name: str) -> object:
        value = getattr(self._obj, name)
        if callable(value) and not isinstance(value, type):
            return self._method(name, value)
        return _wrap(self._tracer, self._root, (*self._path, ("attr", name)), value)

    def _method(self, name: str, method: Callable[..., object]) -> Callable[..., object]:
        def call(*args: object) -> object:
            result = method(*args)
            self._tracer.record((self._root, (*self._path, ("call", name, args)), result))
            return result

        return call

    def __eq__(self, other: object) -> bool:
        self._tracer.record((self._root, self._path, self._obj))
        return bool(self._obj == (other._obj if isinstance(other, _TracedObject) else other))

    def __hash__(self) -> int:
        self._tracer.record((self._root, self._path, self._obj))
        return hash(self._obj)


class _TracedMapping(Mapping[Any, Any]):
    """Stands in for one of the World's mappings: records each key looked up, or the whole content."""

    def __init__(self, tracer: Tracer, root: str, path: tuple[Step, ...], mapping: Mapping[Any, Any]) -> None:
        self._tracer, self._root, self._path, self._mapping = tracer, root, path, mapping

    def get(self, key: Any, default: Any = None) -> Any:
        value = self._mapping.get(key, _MISSING)
        self._tracer.record((self._root, (*self._path, ("get", key)), value))
        return default if value is _MISSING else value

    def __getitem__(self, key: Any) -> Any:
        value = self.get(key, _MISSING)
        if value is _MISSING:
            raise KeyError(key)
        return value

    def __contains__(self, key: object) -> bool:
        return self.get(key, _MISSING) is not _MISSING

    def _whole(self) -> Mapping[Any, Any]:
        self._tracer.record((self._root, (*self._path, ("all",)), self._mapping))
        return self._mapping

    def __iter__(self) -> Iterator[Any]:
        return iter(self._whole())

    def __len__(self) -> int:
        return len(self._whole())
