"""An EnvoyFilter patch's `value` as typed Envoy config: the JSON/YAML mapping parsed into the Envoy proto
message its `applyTo` names (protobuf json_format), every `@type` inside it (typed configs packed in
`google.protobuf.Any`) resolved against the descriptors of Envoy's protos (the xds-protos package: the
module of a type is found from its package's directory, imported on first use; nothing is vendored).

Unknown fields, unknown `@type`s, values of the wrong type are refused with the path protobuf names.
Istio's EnvoyFilters write fields in snake_case (proto names) or camelCase (JSON names): both parse."""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Iterator
from functools import cache
from typing import Any

from google.protobuf import descriptor_pool, json_format, message_factory
from google.protobuf.message import Message

# applyTo -> the Envoy message a patch value of that kind is
VALUE_TYPES = {
    "LISTENER": "envoy.config.listener.v3.Listener",
    "FILTER_CHAIN": "envoy.config.listener.v3.FilterChain",
    "NETWORK_FILTER": "envoy.config.listener.v3.Filter",
    "HTTP_FILTER": "envoy.extensions.filters.network.http_connection_manager.v3.HttpFilter",
    "ROUTE_CONFIGURATION": "envoy.config.route.v3.RouteConfiguration",
    "VIRTUAL_HOST": "envoy.config.route.v3.VirtualHost",
    "HTTP_ROUTE": "envoy.config.route.v3.Route",
    "CLUSTER": "envoy.config.cluster.v3.Cluster",
    "EXTENSION_CONFIG": "envoy.config.core.v3.TypedExtensionConfig",
    "LISTENER_FILTER": "envoy.config.listener.v3.ListenerFilter",
    "BOOTSTRAP": "envoy.config.bootstrap.v3.Bootstrap",
}
_TYPE_PREFIX = "type.googleapis.com/"
# the packages of Envoy's protos (xds-protos): the only modules a type name may import
_PROTO_ROOTS = ("envoy.", "udpa.", "xds.", "google.protobuf.", "google.rpc.", "validate.")
_MAX_DEPTH = 64


def message_class(full_name: str) -> type[Message] | None:
    """The generated class of an Envoy (or udpa/xds/google) message type, importing its module on demand."""
    pool = descriptor_pool.Default()
    for attempt in range(2):
        if attempt and not _import_package_of(full_name):
            return None
        try:
            found: type[Message] = message_factory.GetMessageClass(pool.FindMessageTypeByName(full_name))
        except KeyError:
            continue
        return found
    return None


@cache
def _import_package_of(full_name: str) -> bool:
    """Import every `*_pb2` module of the proto package a type name belongs to (its directory)."""
    if not full_name.startswith(_PROTO_ROOTS):
        return False  # never import a module a document names outside Envoy's protos
    parts = full_name.split(".")
    for cut in range(len(parts) - 1, 0, -1):
        package = ".".join(parts[:cut])
        try:
            module = importlib.import_module(package)
        except ImportError:
            continue
        path = getattr(module, "__path__", None)
        if path is None:
            return False
        for info in pkgutil.iter_modules(path):
            if info.name.endswith("_pb2"):
                try:
                    importlib.import_module(f"{package}.{info.name}")
                except ImportError:
                    continue
        return True
    return False


def _type_urls(value: Any, depth: int = 0) -> Iterator[str]:
    if depth > _MAX_DEPTH:
        raise ValueError(f"nested deeper than {_MAX_DEPTH} levels")
    if isinstance(value, dict):
        for key, item in value.items():
            if key in ("@type", "type_url", "typeUrl") and isinstance(item, str):
                yield item
            else:
                yield from _type_urls(item, depth + 1)
    elif isinstance(value, list):
        for item in value:
            yield from _type_urls(item, depth + 1)


def resolve_types(value: Any) -> None:
    """Import the modules of every `@type` a JSON mapping names; raises ValueError for an unknown one."""
    for url in _type_urls(value):
        if not url.startswith(_TYPE_PREFIX):
            if url.count("/") == 0 and "." not in url:
                continue  # a plain string field that happens to be called type_url
            raise ValueError(f"type URL {url!r} does not start with {_TYPE_PREFIX}")
        if message_class(url.removeprefix(_TYPE_PREFIX)) is None:
            raise ValueError(f"unknown @type {url!r}: no such message in Envoy's protos (xds-protos)")


def parse_value(apply_to: str, value: dict[str, Any]) -> Message:
    """The patch value as the message `apply_to` takes; raises ValueError naming what is wrong."""
    full_name = VALUE_TYPES[apply_to]
    cls = message_class(full_name)
    assert cls is not None, full_name
    resolve_types(value)
    _check_typed_structs(value)
    message = cls()
    try:
        json_format.ParseDict(value, message, descriptor_pool=descriptor_pool.Default())
    except json_format.ParseError as exc:
        raise ValueError(_short_error(str(exc))) from None
    except (TypeError, KeyError, AttributeError, RecursionError) as exc:
        raise ValueError(f"{type(exc).__name__}: {exc}") from None
    return message


_TYPED_STRUCTS = (_TYPE_PREFIX + "udpa.type.v1.TypedStruct", _TYPE_PREFIX + "xds.type.v3.TypedStruct")


def _check_typed_structs(value: Any, depth: int = 0) -> None:
    """A TypedStruct's `value` is checked as the message its `type_url` names (Envoy converts it so)."""
    if depth > _MAX_DEPTH:
        return
    if isinstance(value, dict):
        if value.get("@type") in _TYPED_STRUCTS:
            url = value.get("type_url", value.get("typeUrl", ""))
            inner = message_class(str(url).removeprefix(_TYPE_PREFIX)) if isinstance(url, str) else None
            if inner is None:
                raise ValueError(f"TypedStruct type_url {url!r} names no message in Envoy's protos (xds-protos)")
            body = value.get("value", {})
            try:
                json_format.ParseDict(
                    body if isinstance(body, dict) else {}, inner(), descriptor_pool=descriptor_pool.Default()
                )
            except json_format.ParseError as exc:
                raise ValueError(f"TypedStruct value: {_short_error(str(exc))}") from None
        for item in value.values():
            _check_typed_structs(item, depth + 1)
    elif isinstance(value, list):
        for item in value:
            _check_typed_structs(item, depth + 1)


def _short_error(text: str) -> str:
    return text.split("  Available Fields")[0].replace("\n", " ")
