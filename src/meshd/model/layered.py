"""Layered: an immutable mapping derived from another by a few changes without copying it.

Per-generation indexes over the whole mesh (the inbound index: every workload address) change by a few keys
per endpoint change. A copy per generation costs what the mesh holds (2 ms at 15 000 addresses); a Layered
shares its predecessor's base dict and keeps only the keys set or removed over it, so `updated` costs the
change. Once those outgrow a share of the base they are folded into a new base: each change is copied a
bounded number of times, so the cost stays proportional to the change, amortised.

A lookup is one or two dict lookups. Iteration yields the base's keys in their order (a changed value keeps its
key's place), then the keys added over it.
"""

from __future__ import annotations

from collections.abc import ItemsView, Iterable, Iterator, Mapping, ValuesView
from typing import TypeVar, cast, overload

_K = TypeVar("_K")
_V = TypeVar("_V")
_T = TypeVar("_T")

_REMOVED = object()  # a key of the base removed in the layer over it
_MIN_FOLD = 64  # fold when the layer holds more keys than this and a quarter of the base


class Layered(Mapping[_K, _V]):
    __slots__ = ("_base", "_len", "_over")

    def __init__(self, base: Mapping[_K, _V] | None = None) -> None:
        self._base: dict[_K, _V] = dict(base or {})
        self._over: dict[_K, object] = {}  # key -> value, or _REMOVED
        self._len = len(self._base)

    def __getitem__(self, key: _K) -> _V:
        found = self._over.get(key, self)
        if found is self:
            return self._base[key]
        if found is _REMOVED:
            raise KeyError(key)
        return cast(_V, found)

    @overload
    def get(self, key: _K, /) -> _V | None: ...
    @overload
    def get(self, key: _K, /, default: _V | _T) -> _V | _T: ...
    def get(self, key: _K, /, default: object = None) -> object:
        found = self._over.get(key, self)
        if found is self:
            return self._base.get(key, default)
        return default if found is _REMOVED else cast(_V, found)

    def __contains__(self, key: object) -> bool:
        found = self._over.get(cast(_K, key), self)
        return key in self._base if found is self else found is not _REMOVED

    def __iter__(self) -> Iterator[_K]:
        base, over = self._base, self._over
        if not over:
            yield from base
            return
        for key in base:
            if over.get(key, self) is not _REMOVED:
                yield key
        for key, value in over.items():
            if value is not _REMOVED and key not in base:
                yield key

    def items(self) -> ItemsView[_K, _V]:
        return _Items(self)

    def values(self) -> ValuesView[_V]:
        return _Values(self)

    def _pairs(self) -> Iterator[tuple[_K, _V]]:
        base, over = self._base, self._over
        if not over:
            yield from base.items()
            return
        for key, value in base.items():
            held = over.get(key, self)
            if held is self:
                yield key, value
            elif held is not _REMOVED:
                yield key, cast(_V, held)
        for key, held in over.items():
            if held is not _REMOVED and key not in base:
                yield key, cast(_V, held)

    def __len__(self) -> int:
        return self._len

    def updated(self, changed: Mapping[_K, _V], removed: Iterable[_K] = ()) -> Layered[_K, _V]:
        """A new Layered with `changed` set and `removed` taken out (a key absent already is ignored);
        this one is left as it was."""
        out: Layered[_K, _V] = Layered.__new__(Layered)
        out._base, over, length = self._base, dict(self._over), self._len
        base = self._base
        for key, value in changed.items():
            held = over.get(key, self)
            length += held is _REMOVED or (held is self and key not in base)
            over[key] = value
        for key in removed:
            held = over.get(key, self)
            if key not in changed and (key in base if held is self else held is not _REMOVED):
                length -= 1
                over[key] = _REMOVED
        if len(over) > _MIN_FOLD and 4 * len(over) > len(base):
            folded = dict(base)
            for key, held in over.items():
                if held is _REMOVED:
                    folded.pop(key, None)
                else:
                    folded[key] = cast(_V, held)
            out._base, over = folded, {}
        out._over, out._len = over, length
        return out


class _Items(ItemsView[_K, _V]):
    _mapping: Layered[_K, _V]

    def __iter__(self) -> Iterator[tuple[_K, _V]]:
        return self._mapping._pairs()


class _Values(ValuesView[_V]):
    _mapping: Layered[object, _V]

    def __iter__(self) -> Iterator[_V]:
        return (value for _, value in self._mapping._pairs())
