"""The last guard before serving: a generated message checked against the protoc-gen-validate rules of
its descriptor (Envoy's `[(validate.rules)]`), which Envoy enforces by refusing (NACK) the whole update.

`violations(message)` walks the message recursively, messages packed in `google.protobuf.Any` (typed
configs of filters and transport sockets) included when their type is in the descriptor pool, and
returns each violation with its path, e.g.
`filter_chains[0].filters[1].typed_config(HttpConnectionManager).route_config.virtual_hosts[0].name: min_len 1`.

The rules are compiled once per message type into a plan (proto_rules: which rule kinds are checked,
which skipped): the fields with rules or with rules somewhere below them, what an unset field violates,
required oneofs. A walk visits only the fields a message has set (`ListFields()`) and does not enter a
message type with no rule anywhere below it, so its cost follows the set fields that can matter.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

from google.protobuf import descriptor_pool, message_factory
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import DecodeError, Message
from validate import validate_pb2

from meshd.translate.proto_rules import FieldChecks, compile_field

_ANY = "google.protobuf.Any"
_MAX_DEPTH = 100  # deeper than any generated config; guards against a pathological Any chain


class _Field(NamedTuple):
    name: str
    checks: FieldChecks
    repeated: bool
    is_map: bool
    walk: bool  # a message value with rules below it (or an Any): walked
    is_any: bool


class _Plan(NamedTuple):
    fields: Mapping[int, _Field]  # by field number: the fields to look at when set
    unset: tuple[tuple[int, str, str], ...]  # (number, name, violation) of a field left unset
    oneofs: tuple[tuple[str, frozenset[int]], ...]  # required oneofs: (name, member numbers)


_NO_CHECKS = FieldChecks(None, None, None, False, False)
_plans: dict[str, _Plan | None] = {}  # by descriptor full name; None: no rule anywhere below
_own: dict[str, bool] = {}
_below: dict[str, bool] = {}
_classes: dict[str, type[Message] | None] = {}  # Any type URL -> message class (None: unknown type)


def _rules(fd: FieldDescriptor) -> Any:
    options = fd.GetOptions()
    return options.Extensions[validate_pb2.rules] if options.HasExtension(validate_pb2.rules) else None


def _is_map(fd: FieldDescriptor) -> bool:
    return fd.is_repeated and fd.message_type is not None and fd.message_type.GetOptions().map_entry


def _message_type(fd: FieldDescriptor) -> Descriptor | None:
    """The message type a field's values are walked as (a map: its value type)."""
    if fd.message_type is None:
        return None
    if _is_map(fd):
        value = fd.message_type.fields_by_name["value"]
        return value.message_type
    return fd.message_type


def _has_own_rules(desc: Descriptor) -> bool:
    found = _own.get(desc.full_name)
    if found is None:
        found = _own[desc.full_name] = (
            desc.full_name == _ANY
            or any(_rules(fd) is not None for fd in desc.fields)
            or any(o.GetOptions().Extensions[validate_pb2.required] for o in desc.oneofs)
        )
    return found


def _rules_below(desc: Descriptor) -> bool:
    """Whether the type or any type reachable from it has a rule (an Any counts: it may hold anything)."""
    found = _below.get(desc.full_name)
    if found is not None:
        return found
    seen = {desc.full_name}
    todo = [desc]
    found = False
    while todo and not found:
        current = todo.pop()
        if _below.get(current.full_name) or _has_own_rules(current):
            found = True
            break
        if _below.get(current.full_name) is False:
            continue
        for fd in current.fields:
            sub = _message_type(fd)
            if sub is not None and sub.full_name not in seen:
                seen.add(sub.full_name)
                todo.append(sub)
    if not found:  # nothing reachable from here has a rule: true of every type seen
        for name in seen:
            _below[name] = False
    _below[desc.full_name] = found
    return found


def _plan(desc: Descriptor) -> _Plan | None:
    name = desc.full_name
    if name in _plans:
        return _plans[name]
    plan = None
    if _rules_below(desc) and not desc.GetOptions().Extensions[validate_pb2.disabled]:
        plan = _compile(desc)
    _plans[name] = plan
    return plan


def _compile(desc: Descriptor) -> _Plan:
    fields: dict[int, _Field] = {}
    unset: list[tuple[int, str, str]] = []
    for fd in desc.fields:
        rules = _rules(fd)
        is_map = _is_map(fd)
        checks = compile_field(fd, rules, is_map=is_map) if rules is not None else _NO_CHECKS
        sub = _message_type(fd)
        walk = sub is not None and not checks.skip and _rules_below(sub)
        is_any = sub is not None and sub.full_name == _ANY
        if checks.value or checks.item or checks.key or walk:
            fields[fd.number] = _Field(fd.name, checks, fd.is_repeated, is_map, walk, is_any)
        if fd.containing_oneof is None:
            violation = _unset_violation(fd, checks)
            if violation is not None:
                unset.append((fd.number, fd.name, violation))
    oneofs = tuple(
        (o.name, frozenset(fd.number for fd in o.fields))
        for o in desc.oneofs
        if o.GetOptions().Extensions[validate_pb2.required]
    )
    return _Plan(fields, tuple(unset), oneofs)


def _unset_violation(fd: FieldDescriptor, checks: FieldChecks) -> str | None:
    """What a field left unset violates: a required message; a container's or a (presence-less)
    scalar's rules applied to its default value, as PGV does."""
    if fd.is_repeated:
        return checks.value([]) if checks.value is not None else None
    if fd.message_type is not None:
        return "required" if checks.required else None
    if fd.has_presence or checks.value is None:
        return None
    return checks.value(fd.default_value)


def _unpack(any_message: Any) -> Message | None:
    type_url = any_message.type_url
    if type_url in _classes:
        cls = _classes[type_url]
    else:
        cls = None
        try:
            desc = descriptor_pool.Default().FindMessageTypeByName(type_url.rsplit("/", 1)[-1])
        except KeyError:
            desc = None
        if desc is not None and _plan(desc) is not None:
            cls = message_factory.GetMessageClass(desc)
        _classes[type_url] = cls
    if cls is None:
        return None
    inner: Message = cls()
    inner.ParseFromString(any_message.value)
    return inner


# A path, built only when a violation is found: (parent, field name, index or key, Any type shown)
_Path = tuple[Any, str, Any, str] | None


def _render(path: _Path) -> str:
    parts: list[str] = []
    while path is not None:
        path, name, index, packed = path
        part = name if index is None else f"{name}[{index}]"
        parts.append(f"{part}({packed})" if packed else part)
    return ".".join(reversed(parts))


def _at(path: _Path, name: str) -> str:
    where = _render(path)
    return f"{where}.{name}" if where else name


def _walk(message: Any, path: _Path, out: list[str], depth: int) -> None:
    plan = _plan(message.DESCRIPTOR)
    if plan is None:
        return
    if depth > _MAX_DEPTH:
        out.append(f"{_render(path)}: nested deeper than {_MAX_DEPTH}")
        return
    fields = plan.fields
    present: set[int] | None = set() if plan.unset or plan.oneofs else None
    for fd, value in message.ListFields():
        if present is not None:
            present.add(fd.number)
        field = fields.get(fd.number)
        if field is None:
            continue
        checks = field.checks
        if checks.value is not None and (found := checks.value(value)) is not None:
            out.append(f"{_at(path, field.name)}: {found}")
        if field.is_map:
            for key, item in value.items():
                if checks.key is not None and (found := checks.key(key)) is not None:
                    out.append(f"{_at(path, field.name)}[{key!r}] key: {found}")
                _visit(field, item, (path, field.name, repr(key), ""), out, depth)
        elif field.repeated:
            for i, item in enumerate(value):
                _visit(field, item, (path, field.name, i, ""), out, depth)
        elif field.walk:
            _walk_value(field, value, (path, field.name, None, ""), out, depth)
    if present is not None:
        for number, name, violation in plan.unset:
            if number not in present:
                out.append(f"{_at(path, name)}: {violation}")
        for name, members in plan.oneofs:
            if not members & present:
                out.append(f"{_at(path, name)}: oneof required")


def _visit(field: _Field, item: Any, path: _Path, out: list[str], depth: int) -> None:
    checks = field.checks
    if checks.item is not None and (found := checks.item(item)) is not None:
        out.append(f"{_render(path)}: {found}")
    if field.walk:
        _walk_value(field, item, path, out, depth)


def _walk_value(field: _Field, value: Any, path: _Path, out: list[str], depth: int) -> None:
    if not field.is_any:
        _walk(value, path, out, depth + 1)
        return
    try:
        inner = _unpack(value)
    except DecodeError:
        out.append(f"{_render(path)}: {value.type_url} does not parse")
        return
    if inner is not None and path is not None:
        parent, name, index, _ = path
        _walk(inner, (parent, name, index, inner.DESCRIPTOR.name), out, depth + 1)


def violations(message: Any) -> list[str]:
    """Every PGV rule the message breaks, each as `path: rule` (empty: Envoy accepts its values)."""
    out: list[str] = []
    _walk(message, None, out, 0)
    return out


def has_rules(message_type: Descriptor) -> bool:
    """Whether checking messages of this type can find anything (a rule somewhere below it)."""
    return _plan(message_type) is not None
