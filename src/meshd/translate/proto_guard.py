"""The last guard before serving: a generated message checked against the protoc-gen-validate rules of
its descriptor (Envoy's `[(validate.rules)]`), which Envoy enforces by refusing (NACK) the whole update.

`violations(message)` walks the message recursively, messages packed in `google.protobuf.Any` (typed
configs of filters and transport sockets) included when their type is in the descriptor pool, and
returns each violation with its path, e.g.
`filter_chains[0].filters[1].typed_config(HttpConnectionManager).route_config.virtual_hosts[0].name: min_len 1`.

The rules are compiled once per message type (proto_rules says which rule kinds are checked and which
skipped) into a walker: a handler per field that has rules or rules somewhere below it, what an unset
field violates, the required oneofs. A walk visits only the fields a message has set (`ListFields()`)
and never enters a message type with no rule anywhere below it (nor an Any of such a type: not even
parsed), so its cost follows the set fields that can matter. A packed payload (an Any) found clean is
remembered by its bytes and not walked again.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from google.protobuf import descriptor_pool, message_factory
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import DecodeError, Message
from validate import validate_pb2

from meshd.translate.proto_rules import FieldChecks, compile_field

_ANY = "google.protobuf.Any"
_MAX_DEPTH = 100  # deeper than any generated config; guards against a pathological Any chain
_NO_CHECKS = FieldChecks(None, None, None, False, False)

# A path, rendered only when a violation is found: (parent, field name, index or key, Any type shown)
_Path = tuple[Any, str, Any, str] | None
# A compiled walker of one message type, and a handler of one of its fields:
# (message or field value, path of the message, violations found, depth)
Walker = Callable[[Any, _Path, list[str], int], None]

_own: dict[str, bool] = {}  # by type full name: has a rule itself
_below: dict[str, bool] = {}  # by type full name: has a rule itself or in a type reachable from it
_walkers: dict[Descriptor, Walker | None] = {}  # None: nothing to check below this type
_classes: dict[str, type[Message] | None] = {}  # Any type URL -> message class (None: nothing to check)
# Packed payloads found without a violation, by (type URL, bytes, depth): the result of a walk is a function
# of those alone. Bounded: small payloads (the recurring typed configs: stats loggers, filters, TLS contexts),
# the oldest forgotten first.
_CLEAN_MAX_BYTES = 8192
_CLEAN_MAX_ENTRIES = 1024
_clean: dict[tuple[str, bytes, int], None] = {}


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
        value: Descriptor | None = fd.message_type.fields_by_name["value"].message_type
        return value
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
    while todo:
        current = todo.pop()
        known = _below.get(current.full_name)
        if known or _has_own_rules(current):
            found = True
            break
        if known is False:
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


def _walker(desc: Descriptor) -> Walker | None:
    if desc in _walkers:
        return _walkers[desc]
    walker = None
    if _rules_below(desc) and not desc.GetOptions().Extensions[validate_pb2.disabled]:
        walker = _compile(desc)
    _walkers[desc] = walker
    return walker


def _compile(desc: Descriptor) -> Walker:
    handlers: dict[FieldDescriptor, Walker] = {}
    unset: list[tuple[FieldDescriptor, str, str]] = []
    for fd in desc.fields:
        rules = _rules(fd)
        checks = compile_field(fd, rules, is_map=_is_map(fd)) if rules is not None else _NO_CHECKS
        sub = _message_type(fd)
        walk = sub is not None and not checks.skip and _rules_below(sub)
        if checks.value or checks.item or checks.key or walk:
            handlers[fd] = _handler(fd, checks, sub if walk else None)
        if fd.containing_oneof is None:
            violation = _unset_violation(fd, checks)
            if violation is not None:
                unset.append((fd, fd.name, violation))
    oneofs = tuple(
        (o.name, frozenset(o.fields)) for o in desc.oneofs if o.GetOptions().Extensions[validate_pb2.required]
    )
    return _message_walker(handlers, tuple(unset), oneofs)


def _message_walker(
    handlers: dict[FieldDescriptor, Walker],
    unset: tuple[tuple[FieldDescriptor, str, str], ...],
    oneofs: tuple[tuple[str, frozenset[FieldDescriptor]], ...],
) -> Walker:
    get = handlers.get
    if not unset and not oneofs:

        def walk(message: Any, path: _Path, out: list[str], depth: int) -> None:
            for fd, value in message.ListFields():
                handle = get(fd)
                if handle is not None:
                    handle(value, path, out, depth)

        return walk

    def walk_all(message: Any, path: _Path, out: list[str], depth: int) -> None:
        listed = message.ListFields()
        for fd, value in listed:
            handle = get(fd)
            if handle is not None:
                handle(value, path, out, depth)
        present = {fd for fd, _ in listed}
        for fd, name, violation in unset:
            if fd not in present:
                out.append(f"{_at(path, name)}: {violation}")
        for name, members in oneofs:
            if present.isdisjoint(members):
                out.append(f"{_at(path, name)}: oneof required")

    return walk_all


def _handler(fd: FieldDescriptor, checks: FieldChecks, sub: Descriptor | None) -> Walker:
    """The handler of one field's value: its checks, then (`sub`: a message type with rules below) its
    messages walked."""
    name, check, item_check, key_check = fd.name, checks.value, checks.item, checks.key
    is_any = sub is not None and sub.full_name == _ANY

    def descend(value: Any, path: _Path, out: list[str], depth: int) -> None:
        if depth >= _MAX_DEPTH:
            out.append(f"{_render(path)}: nested deeper than {_MAX_DEPTH}")
        elif is_any:
            _walk_any(value, path, out, depth + 1)
        else:
            walker = _walkers[sub] if sub in _walkers else _walker(sub)
            if walker is not None:
                walker(value, path, out, depth + 1)

    def checked(value: Any, path: _Path, out: list[str]) -> None:
        if check is not None and (found := check(value)) is not None:
            out.append(f"{_at(path, name)}: {found}")

    if _is_map(fd):

        def handle_map(value: Any, path: _Path, out: list[str], depth: int) -> None:
            checked(value, path, out)
            for key, item in value.items():
                if key_check is not None and (found := key_check(key)) is not None:
                    out.append(f"{_at(path, name)}[{key!r}] key: {found}")
                here = (path, name, repr(key), "")
                if item_check is not None and (found := item_check(item)) is not None:
                    out.append(f"{_render(here)}: {found}")
                if sub is not None:
                    descend(item, here, out, depth)

        return handle_map
    if fd.is_repeated:

        def handle_items(value: Any, path: _Path, out: list[str], depth: int) -> None:
            checked(value, path, out)
            if item_check is None and sub is None:
                return
            for i, item in enumerate(value):
                here = (path, name, i, "")
                if item_check is not None and (found := item_check(item)) is not None:
                    out.append(f"{_render(here)}: {found}")
                if sub is not None:
                    descend(item, here, out, depth)

        return handle_items
    if sub is None:

        def handle_value(value: Any, path: _Path, out: list[str], depth: int) -> None:
            if (found := check(value)) is not None:  # type: ignore[misc]
                out.append(f"{_at(path, name)}: {found}")

        return handle_value

    def handle_message(value: Any, path: _Path, out: list[str], depth: int) -> None:
        checked(value, path, out)
        descend(value, (path, name, None, ""), out, depth)

    return handle_message


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


def _walk_any(value: Any, path: _Path, out: list[str], depth: int) -> None:
    """A message packed in an Any: parsed and walked if its type is known and has rules. A payload found
    clean once is not walked again (`_clean`): the same typed configs recur in every listener."""
    type_url = value.type_url
    payload = value.value
    key = (type_url, payload, depth) if len(payload) <= _CLEAN_MAX_BYTES else None
    if key is not None and key in _clean:
        return
    found = len(out)
    _walk_packed(type_url, payload, path, out, depth)
    if key is not None and len(out) == found:
        if len(_clean) >= _CLEAN_MAX_ENTRIES:
            del _clean[next(iter(_clean))]  # the oldest
        _clean[key] = None


def _walk_packed(type_url: str, payload: bytes, path: _Path, out: list[str], depth: int) -> None:
    if type_url in _classes:
        cls = _classes[type_url]
    else:
        cls = None
        try:
            desc = descriptor_pool.Default().FindMessageTypeByName(type_url.rsplit("/", 1)[-1])
        except KeyError:
            desc = None
        if desc is not None and _walker(desc) is not None:
            cls = message_factory.GetMessageClass(desc)
        _classes[type_url] = cls
    if cls is None:
        return
    inner = cls()
    try:
        inner.ParseFromString(payload)
    except DecodeError:
        out.append(f"{_render(path)}: {type_url} does not parse")
        return
    assert path is not None
    parent, name, index, _ = path
    walker = _walkers[inner.DESCRIPTOR]
    assert walker is not None
    walker(inner, (parent, name, index, inner.DESCRIPTOR.name), out, depth)


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


def violations(message: Any) -> list[str]:
    """Every PGV rule the message breaks, each as `path: rule` (empty: Envoy accepts its values)."""
    out: list[str] = []
    walker = _walker(message.DESCRIPTOR)
    if walker is not None:
        walker(message, None, out, 0)
    return out


def has_rules(message_type: Descriptor) -> bool:
    """Whether checking messages of this type can find anything (a rule somewhere below it)."""
    return _walker(message_type) is not None
