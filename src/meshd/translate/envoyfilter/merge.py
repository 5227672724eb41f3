"""MERGE as Istio does it: protobuf merge (set fields overwrite, repeated fields append, maps merge by key,
messages merge recursively), with Istio's exceptions: a `google.protobuf.Any` (a typed config) of the same
type as the one it merges into is unpacked, merged and packed again (of another type: replaced); the
well-known value types (Duration, Timestamp, the wrappers, Struct) are replaced whole, so `connect_timeout:
5s` merged into 0.25s gives 5s, not the field-by-field sum a plain merge would."""

from __future__ import annotations

from google.protobuf.message import Message

from meshd.api.envoy_value import message_class

_ANY = "google.protobuf.Any"
_ATOMIC = frozenset(
    {
        "google.protobuf.Duration",
        "google.protobuf.Timestamp",
        "google.protobuf.Struct",
        "google.protobuf.Value",
        "google.protobuf.ListValue",
        "google.protobuf.BoolValue",
        "google.protobuf.UInt32Value",
        "google.protobuf.UInt64Value",
        "google.protobuf.Int32Value",
        "google.protobuf.Int64Value",
        "google.protobuf.DoubleValue",
        "google.protobuf.FloatValue",
        "google.protobuf.StringValue",
        "google.protobuf.BytesValue",
    }
)


def unpack(packed: Message) -> Message | None:
    """The message an Any holds (None if its type is unknown)."""
    cls = message_class(packed.type_url.rsplit("/", 1)[-1])
    if cls is None:
        return None
    inner = cls()
    inner.ParseFromString(packed.value)
    return inner


def pack(target: Message, inner: Message) -> None:
    target.type_url = "type.googleapis.com/" + inner.DESCRIPTOR.full_name
    target.value = inner.SerializeToString(deterministic=True)


def merge_any(dst: Message, src: Message) -> None:
    if dst.type_url == src.type_url:
        a, b = unpack(dst), unpack(src)
        if a is not None and b is not None:
            merge(a, b)
            pack(dst, a)
            return
    dst.CopyFrom(src)


def merge(dst: Message, src: Message) -> None:
    """Merge `src` into `dst` in place (Istio's MERGE)."""
    name = dst.DESCRIPTOR.full_name
    if name == _ANY:
        merge_any(dst, src)
        return
    if name in _ATOMIC:
        dst.CopyFrom(src)
        return
    for field, value in src.ListFields():
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            target = getattr(dst, field.name)
            value_field = field.message_type.fields_by_name["value"]
            for key, item in value.items():
                if value_field.message_type is None:
                    target[key] = item
                elif key in target:
                    merge(target[key], item)
                else:
                    target[key].CopyFrom(item)
        elif field.is_repeated:
            getattr(dst, field.name).extend(value)
        elif field.message_type is not None:
            sub = getattr(dst, field.name)
            if not dst.HasField(field.name):
                sub.CopyFrom(value)
            else:
                merge(sub, value)
        else:
            setattr(dst, field.name, value)
