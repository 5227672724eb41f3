"""protoc-gen-validate field rules (`[(validate.rules)]` options of Envoy's protos) compiled into checks.

A check takes a field's value (for a repeated field or map: the whole container; its items and keys
have their own checks) and returns what it violates as text, or None. Compiled once per field, see
proto_guard. Supported: numbers (const, lt, lte, gt, gte incl. exclusive ranges, in, not_in) of every
scalar kind, also on wrapper messages (UInt32Value...); bool const; string (const, len, min_len,
max_len, len_bytes, min_bytes, max_bytes, pattern, prefix, suffix, contains, not_contains, in, not_in,
well_known_regex HTTP_HEADER_NAME/VALUE); bytes (const, len, min_len, max_len, pattern, prefix,
suffix, contains, in, not_in); enum (const, defined_only, in, not_in); repeated (min_items,
max_items, unique, items); map (min_pairs, max_pairs, keys, values); message required and skip;
any (required, in, not_in); duration (required, const, lt, lte, gt, gte, in, not_in); ignore_empty.
Skipped (accepted unchecked): string/bytes well-known formats (email, hostname, ip, ipv4, ipv6, uri,
uri_ref, address, uuid), map no_sparse, timestamp rules, and a pattern Python's `re` cannot compile.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sized
from typing import Any, NamedTuple

from google.protobuf.descriptor import FieldDescriptor
from validate import validate_pb2

Check = Callable[[Any], "str | None"]

WRAPPERS = frozenset(
    f"google.protobuf.{t}Value" for t in ("Double", "Float", "Int64", "UInt64", "Int32", "UInt32", "Bool", "String")
)
_NUMERIC = frozenset(
    {"float", "double", "int32", "int64", "uint32", "uint64", "sint32", "sint64", "fixed32", "fixed64"}
    | {"sfixed32", "sfixed64"}
)
# PGV's expressions for KnownRegex (strict and not)
_HEADER_NAME = re.compile(r"^:?[0-9a-zA-Z!#$%&'*+\-.^_|~`]+$")
_HEADER_VALUE = re.compile(r"^[^\x00-\x08\x0A-\x1F\x7F]*$")
_HEADER_LAX = re.compile(r"^[^\x00\n\r]*$")


class FieldChecks(NamedTuple):
    """The compiled rules of one field. `value`: on the field's value (singular) or container
    (repeated, map); `item`: on each item or map value; `key`: on each map key. `required`: unset is
    a violation (message fields). `skip`: do not look inside its messages."""

    value: Check | None
    item: Check | None
    key: Check | None
    required: bool
    skip: bool


def _all(checks: list[Check]) -> Check | None:
    if not checks:
        return None
    if len(checks) == 1:
        return checks[0]

    def check(v: Any) -> str | None:
        for c in checks:
            found = c(v)
            if found is not None:
                return found
        return None

    return check


def _ignoring_empty(check: Check | None, ignore: bool) -> Check | None:
    if check is None or not ignore:
        return check
    inner = check
    return lambda v: None if not v else inner(v)


def _bounds(r: Any, convert: Callable[[Any], Any] = lambda x: x) -> list[Check]:
    """const, gt/gte/lt/lte (an upper bound below the lower one: outside that range), in, not_in."""
    checks: list[Check] = []
    has = r.HasField
    if has("const"):
        const = convert(r.const)
        checks.append(lambda v: None if v == const else f"const {const}")
    lo = ("gt", convert(r.gt)) if has("gt") else ("gte", convert(r.gte)) if has("gte") else None
    hi = ("lt", convert(r.lt)) if has("lt") else ("lte", convert(r.lte)) if has("lte") else None

    def above(v: Any, b: tuple[str, Any]) -> bool:
        return bool(v > b[1] if b[0] == "gt" else v >= b[1])

    def below(v: Any, b: tuple[str, Any]) -> bool:
        return bool(v < b[1] if b[0] == "lt" else v <= b[1])

    if lo is not None and hi is not None and hi[1] < lo[1]:
        low, high = lo, hi
        outside = f"outside {high[0]} {high[1]} or {low[0]} {low[1]}"
        checks.append(lambda v: None if above(v, low) or below(v, high) else outside)
    else:
        if lo is not None:
            low_ = lo
            checks.append(lambda v: None if above(v, low_) else f"{low_[0]} {low_[1]}")
        if hi is not None:
            high_ = hi
            checks.append(lambda v: None if below(v, high_) else f"{high_[0]} {high_[1]}")
    members = [convert(x) for x in getattr(r, "in")]
    if members:
        allowed = frozenset(members)
        checks.append(lambda v: None if v in allowed else f"in {sorted(allowed)}")
    if r.not_in:
        refused = frozenset(convert(x) for x in r.not_in)
        checks.append(lambda v: None if v not in refused else f"not_in {sorted(refused)}")
    return checks


def _with_value(check: Check | None) -> Check | None:
    """For rules on the reported value (number, duration), the message says what the value was."""
    if check is None:
        return None
    inner = check
    return lambda v: None if (found := inner(v)) is None else f"{found} (got {v})"


def _nanos(d: Any) -> int:
    return int(d.seconds) * 1_000_000_000 + int(d.nanos)


def _duration(r: Any) -> Check | None:
    inner = _all(_bounds(r, _nanos))
    if inner is None:
        return None
    return lambda d: None if (found := inner(_nanos(d))) is None else f"duration {found}ns (got {_nanos(d)}ns)"


def _length(measure: Callable[[Any], int], rule: str, bound: int, test: Callable[[int, int], bool]) -> Check:
    return lambda v: None if test(measure(v), bound) else f"{rule} {bound}"


def _part(rule: str, part: Any, test: Callable[[Any, Any], bool]) -> Check:
    return lambda v: None if test(v, part) else f"{rule} {part!r}"


def _lengths(r: Any, measure: Callable[[Any], int], names: tuple[str, str, str]) -> list[Check]:
    exact, low, high = names
    tests: tuple[tuple[str, Callable[[int, int], bool]], ...] = (
        (exact, lambda n, b: n == b),
        (low, lambda n, b: n >= b),
        (high, lambda n, b: n <= b),
    )
    return [_length(measure, rule, getattr(r, rule), test) for rule, test in tests if r.HasField(rule)]


def _pattern(expr: str, flags_bytes: bool) -> Check | None:
    try:
        compiled = re.compile(expr.encode() if flags_bytes else expr)
    except re.error:
        return None  # RE2 syntax Python does not know: skipped
    return lambda v: None if compiled.search(v) else f"pattern {expr!r}"


def _text(r: Any, is_bytes: bool) -> Check | None:
    checks: list[Check] = []
    if r.HasField("const"):
        const = r.const
        checks.append(lambda v: None if v == const else f"const {const!r}")
    checks += _lengths(r, len, ("len", "min_len", "max_len"))
    if not is_bytes:
        checks += _lengths(r, lambda v: len(v.encode()), ("len_bytes", "min_bytes", "max_bytes"))
    if r.HasField("pattern"):
        found = _pattern(r.pattern, is_bytes)
        if found is not None:
            checks.append(found)
    tests: tuple[tuple[str, Callable[[Any, Any], bool]], ...] = (
        ("prefix", lambda v, x: v.startswith(x)),
        ("suffix", lambda v, x: v.endswith(x)),
        ("contains", lambda v, x: x in v),
    )
    checks += [_part(rule, getattr(r, rule), test) for rule, test in tests if r.HasField(rule)]
    if not is_bytes and r.HasField("not_contains"):
        part = r.not_contains
        checks.append(lambda v: None if part not in v else f"not_contains {part!r}")
    checks += _membership(r)
    if not is_bytes and r.HasField("well_known_regex") and r.well_known_regex:
        strict = not r.HasField("strict") or r.strict
        if r.well_known_regex == validate_pb2.HTTP_HEADER_NAME:
            regex = _HEADER_NAME if strict else _HEADER_LAX
        else:
            regex = _HEADER_VALUE if strict else _HEADER_LAX
        name = validate_pb2.KnownRegex.Name(r.well_known_regex)
        checks.append(lambda v: None if regex.match(v) else f"well_known_regex {name}")
    return _ignoring_empty(_all(checks), r.ignore_empty)


def _enum(r: Any, fd: FieldDescriptor) -> Check | None:
    checks = _bounds_enum(r)
    if r.defined_only:
        defined = frozenset(v.number for v in fd.enum_type.values)
        checks.append(lambda v: None if v in defined else "defined_only")
    return _with_value(_all(checks))


def _bounds_enum(r: Any) -> list[Check]:
    checks: list[Check] = []
    if r.HasField("const"):
        const = r.const
        checks.append(lambda v: None if v == const else f"const {const}")
    checks += _membership(r)
    return checks


def _any(r: Any) -> Check | None:
    checks = [_of_type_url(check) for check in _membership(r)]
    return _all(checks)


def _of_type_url(check: Check) -> Check:
    """A check of an Any's type URL."""
    return lambda a: check(a.type_url)


def _count(r: Any, names: tuple[str, str]) -> Check | None:
    checks: list[Check] = []
    low, high = names
    if r.HasField(low) and getattr(r, low):
        least = getattr(r, low)
        checks.append(lambda v: None if len(v) >= least else f"{low} {least}")
    if r.HasField(high):
        most = getattr(r, high)
        checks.append(lambda v: None if len(v) <= most else f"{high} {most}")
    if getattr(r, "unique", False):
        checks.append(_unique)
    return _ignoring_empty(_all(checks), r.ignore_empty)


def _unique(v: Sized) -> str | None:
    items = list(v)  # type: ignore[call-overload]
    try:
        return None if len(set(items)) == len(items) else "unique"
    except TypeError:  # messages are not hashable: left unchecked
        return None


def _scalar(rules: Any, fd: FieldDescriptor) -> tuple[Check | None, bool, bool]:
    """(check of one value, required, skip) for rules on a single value (a field or an item)."""
    kind = rules.WhichOneof("type")
    required = rules.HasField("message") and rules.message.required
    skip = rules.HasField("message") and rules.message.skip
    check: Check | None = None
    if kind in _NUMERIC:
        check = _with_value(_all(_bounds(getattr(rules, kind))))
        if check is not None and fd.message_type is not None and fd.message_type.full_name in WRAPPERS:
            inner = check
            check = lambda w: inner(w.value)  # noqa: E731
        elif check is not None and getattr(rules, kind).ignore_empty:
            check = _ignoring_empty(check, True)
    elif kind == "bool" and rules.bool.HasField("const"):
        const = rules.bool.const
        check = lambda v: None if bool(getattr(v, "value", v)) == const else f"const {const}"  # noqa: E731
    elif kind in ("string", "bytes"):
        check = _text(getattr(rules, kind), kind == "bytes")
        if check is not None and fd.message_type is not None:
            inner_text = check
            check = lambda w: inner_text(w.value)  # noqa: E731
    elif kind == "enum":
        check = _enum(rules.enum, fd)
    elif kind == "duration":
        check = _duration(rules.duration)
        required = required or rules.duration.required
    elif kind == "any":
        check = _any(rules.any)
        required = required or rules.any.required
    return check, required, skip


def compile_field(fd: FieldDescriptor, rules: Any, *, is_map: bool) -> FieldChecks:
    kind = rules.WhichOneof("type")
    if is_map:
        container = _count(rules.map, ("min_pairs", "max_pairs")) if kind == "map" else None
        key_fd, value_fd = fd.message_type.fields_by_name["key"], fd.message_type.fields_by_name["value"]
        keys = _scalar(rules.map.keys, key_fd)[0] if kind == "map" and rules.map.HasField("keys") else None
        values = _scalar(rules.map.values, value_fd) if kind == "map" and rules.map.HasField("values") else None
        return FieldChecks(container, values[0] if values else None, keys, False, bool(values and values[2]))
    if fd.is_repeated:
        if kind != "repeated":
            return FieldChecks(None, None, None, False, False)
        container = _count(rules.repeated, ("min_items", "max_items"))
        item = _scalar(rules.repeated.items, fd) if rules.repeated.HasField("items") else None
        return FieldChecks(container, item[0] if item else None, None, False, bool(item and item[2]))
    check, required, skip = _scalar(rules, fd)
    return FieldChecks(check, None, None, required, skip)


def _membership(r: Any) -> list[Check]:
    """The `in` and `not_in` rules of a rule message (any scalar kind)."""
    checks: list[Check] = []
    members = list(getattr(r, "in"))
    if members:
        allowed = frozenset(members)
        checks.append(lambda v: None if v in allowed else f"in {sorted(allowed)}")
    if r.not_in:
        refused = frozenset(r.not_in)
        checks.append(lambda v: None if v not in refused else f"not_in {sorted(refused)}")
    return checks
