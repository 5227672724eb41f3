"""Applying EnvoyFilters to one proxy's generated config (decoded Envoy messages, changed in place).

The filters apply one after the other (selection order); each as a whole or not at all: its patches run
on the config the previous filters left, then every resource it changed is validated (the PGV rules of
Envoy's protos, translate/proto_guard.py, and the HTTP filter chain rule Envoy enforces: the terminal
router filter last). A filter that fails (a patch that cannot apply, e.g. ADD of a cluster that exists, or a
result Envoy would refuse) is rolled back and reported on the EnvoyFilter, naming the patch and the Envoy
resource; the config keeps what the other filters did. Envoy's own NACK (xds/isolation.py) is the backstop
for what no check here sees (e.g. Lua code that does not compile).

Operations per `applyTo` (Istio's): LISTENER, CLUSTER, ROUTE_CONFIGURATION: ADD (a new resource), MERGE,
REPLACE, REMOVE of the matched ones; FILTER_CHAIN, VIRTUAL_HOST: ADD (to the matched listener / route
configuration), MERGE, REPLACE, REMOVE; NETWORK_FILTER, HTTP_FILTER, LISTENER_FILTER, HTTP_ROUTE: items of
an ordered list, anchored on the one the match names (filter.name, subFilter.name, listenerFilter, route):
ADD (appended, or placed by `filterClass`), INSERT_BEFORE / INSERT_AFTER (the anchor; without one: first /
last), INSERT_FIRST, MERGE, REPLACE, REMOVE (of the anchor); EXTENSION_CONFIG: ADD (an ECDS resource).
BOOTSTRAP patches are not applied here: they go to the node agent (bootstrap.py)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, MutableMapping
from dataclasses import dataclass, field
from typing import Any

from envoy.config.cluster.v3.cluster_pb2 import Cluster
from envoy.config.core.v3.extension_pb2 import TypedExtensionConfig
from envoy.config.listener.v3.listener_components_pb2 import FilterChain
from envoy.config.listener.v3.listener_pb2 import Listener
from envoy.config.route.v3.route_pb2 import RouteConfiguration
from envoy.extensions.filters.network.http_connection_manager.v3.http_connection_manager_pb2 import (
    HttpConnectionManager,
)
from google.protobuf.message import DecodeError, Message

from meshd.api.envoyfilter import ConfigPatch, EnvoyFilter, VirtualHostMatch
from meshd.api.meta import InvalidResource
from meshd.translate.envoyfilter import match as m
from meshd.translate.envoyfilter.merge import merge, pack, unpack
from meshd.translate.proto_guard import violations

ROUTER_FILTER = "envoy.filters.http.router"
_AUTHN = ("envoy.filters.http.jwt_authn", "istio_authn", "istio.authn")
_AUTHZ = ("envoy.filters.http.rbac", "envoy.filters.http.ext_authz")
_STATS = ("istio.stats", "envoy.filters.http.wasm")


class PatchFailed(Exception):
    pass


@dataclass
class ProxyConfig:
    """A proxy's generated config as messages by name, in the order the snapshot had them."""

    listeners: dict[str, Listener] = field(default_factory=dict)
    clusters: dict[str, Cluster] = field(default_factory=dict)
    routes: dict[str, RouteConfiguration] = field(default_factory=dict)
    extensions: dict[str, TypedExtensionConfig] = field(default_factory=dict)

    def copy(self) -> ProxyConfig:
        return ProxyConfig(*(_copies(getattr(self, n)) for n in ("listeners", "clusters", "routes", "extensions")))

    def kinds(self) -> tuple[tuple[str, dict[str, Any]], ...]:
        return (
            ("listener", self.listeners),
            ("cluster", self.clusters),
            ("route configuration", self.routes),
            ("extension config", self.extensions),
        )


def _copies(messages: Mapping[str, Message]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, msg in messages.items():
        dup = type(msg)()
        dup.CopyFrom(msg)
        out[name] = dup
    return out


def apply_filters(
    config: ProxyConfig, filters: tuple[EnvoyFilter, ...], *, router: bool, metadata: Mapping[str, str]
) -> tuple[ProxyConfig, list[InvalidResource]]:
    """The config with every filter applied that applies cleanly, and an error per filter that does not."""
    errors: list[InvalidResource] = []
    for found in filters:
        before = config
        config = before.copy()
        try:
            for i, patch in enumerate(found.spec.config_patches):
                if not m.proxy_ok(patch.match, metadata=metadata):
                    continue
                try:
                    _apply(config, patch, router=router)
                except PatchFailed as exc:
                    raise PatchFailed(f"spec.configPatches[{i}]", str(exc)) from None
                except (ValueError, TypeError, KeyError, AttributeError, IndexError, DecodeError) as exc:
                    # a message the patch cannot be applied to as written (never a crash of the generation)
                    raise PatchFailed(
                        f"spec.configPatches[{i}]", f"cannot apply: {type(exc).__name__}: {exc}"
                    ) from None
            _rekey(config)
            _validate(before, config)
        except PatchFailed as exc:
            where, message = exc.args if len(exc.args) == 2 else ("spec.configPatches", str(exc))
            errors.append(InvalidResource(found.key, where, f"{message}; the EnvoyFilter is not applied to this proxy"))
            config = before
    return config, errors


def _rekey(config: ProxyConfig) -> None:
    """A REPLACE or MERGE may rename a resource: the mappings follow the names the messages carry."""
    for _, by_name in config.kinds():
        if any(name != msg.name for name, msg in by_name.items()):
            renamed = {msg.name: msg for msg in by_name.values()}
            if len(renamed) != len(by_name):
                raise PatchFailed("the patches give two resources the same name")
            by_name.clear()
            by_name.update(renamed)


def _validate(before: ProxyConfig, after: ProxyConfig) -> None:
    for (kind, old), (_, new) in zip(before.kinds(), after.kinds(), strict=True):
        for name, msg in new.items():
            if old.get(name) == msg:
                continue
            found = violations(msg)
            if isinstance(msg, Listener):
                found += _hcm_problems(msg)
            if found:
                shown = "; ".join(found[:3])
                raise PatchFailed(f"the patched {kind} {name!r} would be refused by Envoy: {shown}")


def _hcm_problems(listener: Listener) -> list[str]:
    out = []
    for chain in m.chains_of(listener):
        for f in chain.filters:
            if f.name != m.HCM or not f.HasField("typed_config"):
                continue
            hcm = unpack(f.typed_config)
            if not isinstance(hcm, HttpConnectionManager):
                continue
            names = [h.name for h in hcm.http_filters]
            if names and ROUTER_FILTER in names and names[-1] != ROUTER_FILTER:
                out.append(f"http_filters: {names[-1]!r} follows the terminal filter {ROUTER_FILTER} (it must be last)")
            if not names or names.count(ROUTER_FILTER) > 1:
                out.append(f"http_filters: exactly one {ROUTER_FILTER}, last, is needed")
    return out


# -- one patch -----------------------------------------------------------------------------------------


def _apply(config: ProxyConfig, patch: ConfigPatch, *, router: bool) -> None:
    apply_to, op, value, match = patch.apply_to, patch.patch.operation, patch.message, patch.match
    if apply_to == "BOOTSTRAP":
        return  # the node agent's, not the served config's (translate/envoyfilter/bootstrap.py)
    if apply_to == "LISTENER":
        _resources(
            config.listeners, patch, lambda x: m.listener_context(x, router=router), m.listener_ok, match.listener
        )
    elif apply_to == "CLUSTER":
        _resources(
            config.clusters, patch, lambda c: m.cluster_context(c.name, router=router), m.cluster_ok, match.cluster
        )
    elif apply_to == "EXTENSION_CONFIG":
        assert value is not None and op == "ADD"
        name = value.name
        if name in config.extensions:
            raise PatchFailed(f"ADD: extension config {name!r} exists already")
        config.extensions[name] = _clone(value)
    elif apply_to in ("FILTER_CHAIN", "NETWORK_FILTER", "HTTP_FILTER", "LISTENER_FILTER"):
        for listener in config.listeners.values():
            if m.context_ok(match.context, m.listener_context(listener, router=router)) and m.listener_ok(
                match.listener, listener
            ):
                _in_listener(listener, patch)
    else:  # ROUTE_CONFIGURATION, VIRTUAL_HOST, HTTP_ROUTE
        _routes(config, patch, router=router)


def _clone(msg: Message) -> Any:
    dup = type(msg)()
    dup.CopyFrom(msg)
    return dup


def _resources(
    by_name: MutableMapping[str, Any],
    patch: ConfigPatch,
    context_of: Callable[[Any], str],
    ok: Callable[[Any, Any], bool],
    match: Any,
) -> None:
    op, value = patch.patch.operation, patch.message
    if op == "ADD":
        assert value is not None
        name = value.name
        if name in by_name:
            raise PatchFailed(f"ADD: {patch.apply_to.lower()} {name!r} exists already")
        by_name[name] = _clone(value)
        return
    for name in list(by_name):
        msg = by_name[name]
        if not (m.context_ok(patch.match.context, context_of(msg)) and ok(match, msg)):
            continue
        _change(by_name, name, msg, op, value)


def _change(by_name: MutableMapping[str, Any], name: str, msg: Any, op: str, value: Message | None) -> None:
    if op == "REMOVE":
        del by_name[name]
    elif op == "MERGE":
        assert value is not None
        merge(msg, value)
    elif op == "REPLACE":
        assert value is not None
        msg.CopyFrom(value)


def _in_listener(listener: Listener, patch: ConfigPatch) -> None:
    apply_to, op, value, lm = patch.apply_to, patch.patch.operation, patch.message, patch.match.listener
    if apply_to == "LISTENER_FILTER":
        wanted = lm.listener_filter if lm is not None else ""
        _items(listener.listener_filters, op, value, (lambda f: f.name == wanted) if wanted else None)
        return
    if apply_to == "FILTER_CHAIN":
        if op == "ADD":
            assert value is not None
            listener.filter_chains.append(value)
            return
        _items(listener.filter_chains, op, value, lambda c: m.chain_ok(lm, c, listener))
        if listener.HasField("default_filter_chain") and m.chain_ok(lm, listener.default_filter_chain, listener):
            if op == "REMOVE":
                listener.ClearField("default_filter_chain")
            else:
                _change({"d": listener.default_filter_chain}, "d", listener.default_filter_chain, op, value)
        return
    for chain in list(m.chains_of(listener)):
        if m.chain_ok(lm, chain, listener):
            _in_chain(chain, patch)


def _in_chain(chain: FilterChain, patch: ConfigPatch) -> None:
    apply_to, op, value, lm = patch.apply_to, patch.patch.operation, patch.message, patch.match.listener
    fm = lm.filter_chain.filter if lm is not None and lm.filter_chain is not None else None
    if apply_to == "NETWORK_FILTER":
        anchor = (lambda f: f.name == fm.name) if fm is not None and fm.name else None
        at = _class_position([f.name for f in chain.filters], patch) if op == "ADD" else None
        _items(chain.filters, op, value, anchor, insert_at=at)
        return
    # HTTP_FILTER: inside the chain's HTTP connection managers (the one the match names, if it names one)
    if fm is not None and fm.name and fm.name != m.HCM:
        return
    sub = fm.sub_filter.name if fm is not None and fm.sub_filter is not None else ""
    for f in chain.filters:
        if f.name != m.HCM or not f.HasField("typed_config"):
            continue
        hcm = unpack(f.typed_config)
        if not isinstance(hcm, HttpConnectionManager):
            continue
        if sub and not any(h.name == sub for h in hcm.http_filters):
            continue
        at = _class_position([h.name for h in hcm.http_filters], patch) if op == "ADD" else None
        _items(hcm.http_filters, op, value, (lambda h: h.name == sub) if sub else None, insert_at=at)
        pack(f.typed_config, hcm)


def _class_position(names: list[str], patch: ConfigPatch) -> int | None:
    """Where `filterClass` puts an added filter (None: appended)."""
    cls = patch.patch.filter_class
    if cls == "UNSPECIFIED":
        return None

    def after(group: tuple[str, ...]) -> int | None:
        found = [i for i, n in enumerate(names) if n in group]
        return found[-1] + 1 if found else None

    if cls == "AUTHN":
        return after(_AUTHN) or 0
    if cls == "AUTHZ":
        return after(_AUTHZ) or after(_AUTHN) or 0
    stats = [i for i, n in enumerate(names) if n in _STATS]
    if stats:
        return stats[0]
    return names.index(ROUTER_FILTER) if ROUTER_FILTER in names else len(names)


def _items(
    items: Any, op: str, value: Message | None, anchor: Callable[[Any], bool] | None, *, insert_at: int | None = None
) -> None:
    """An operation on an ordered list of named items, relative to the items `anchor` selects."""
    hits = [i for i, item in enumerate(items) if anchor is not None and anchor(item)]
    if op == "ADD":
        assert value is not None
        items.insert(len(items) if insert_at is None else insert_at, _clone(value))
    elif op == "INSERT_FIRST":
        if anchor is None or hits:
            items.insert(0, _clone(value))
    elif op == "INSERT_BEFORE":
        if anchor is None:
            items.insert(0, _clone(value))
        elif hits:
            items.insert(hits[0], _clone(value))
    elif op == "INSERT_AFTER":
        if anchor is None:
            items.insert(len(items), _clone(value))
        elif hits:
            items.insert(hits[0] + 1, _clone(value))
    elif anchor is not None:
        for i in reversed(hits):
            if op == "REMOVE":
                del items[i]
            elif op == "MERGE":
                assert value is not None
                merge(items[i], value)
            elif op == "REPLACE":
                assert value is not None
                items[i].CopyFrom(value)


# -- route configurations, RDS and inline ----------------------------------------------------------------


def _routes(config: ProxyConfig, patch: ConfigPatch, *, router: bool) -> None:
    match, op, value = patch.match, patch.patch.operation, patch.message
    rds_context = m.GATEWAY if router else m.OUTBOUND
    if patch.apply_to == "ROUTE_CONFIGURATION" and op == "ADD":
        if m.context_ok(match.context, rds_context):
            assert value is not None
            name = value.name
            if name in config.routes:
                raise PatchFailed(f"ADD: route configuration {name!r} exists already")
            config.routes[name] = _clone(value)
        return
    if m.context_ok(match.context, rds_context):
        for name in list(config.routes):
            _in_route_config(config.routes, name, patch)
    inline_context = m.GATEWAY if router else m.INBOUND
    if not m.context_ok(match.context, inline_context):
        return
    for listener in config.listeners.values():
        if not router and m.listener_context(listener, router=False) != m.INBOUND:
            continue
        for chain in m.chains_of(listener):
            for f in chain.filters:
                if f.name != m.HCM or not f.HasField("typed_config"):
                    continue
                hcm = unpack(f.typed_config)
                if not isinstance(hcm, HttpConnectionManager) or not hcm.HasField("route_config"):
                    continue
                holder = {"inline": hcm.route_config}
                _in_route_config(holder, "inline", patch)
                if "inline" not in holder:
                    hcm.ClearField("route_config")
                pack(f.typed_config, hcm)


def _in_route_config(holder: MutableMapping[str, Any], name: str, patch: ConfigPatch) -> None:
    config: RouteConfiguration = holder[name]
    rm, op, value = patch.match.route_configuration, patch.patch.operation, patch.message
    if not m.route_config_ok(rm, config):
        return
    vm = rm.vhost if rm is not None else None
    if patch.apply_to == "ROUTE_CONFIGURATION":
        _change(holder, name, config, op, value)
        return
    if patch.apply_to == "VIRTUAL_HOST":
        if op == "ADD":
            assert value is not None
            config.virtual_hosts.append(value)
        else:
            _items(config.virtual_hosts, op, value, lambda v: m.vhost_ok(vm, v))
        return
    rmatch = vm.route if vm is not None else None
    named = VirtualHostMatch(name=vm.name) if vm is not None else None
    if rmatch is not None:
        anchor: Callable[[Any], bool] | None = lambda r: m.route_ok(rmatch, r)  # noqa: E731
    else:  # no route named: MERGE / REPLACE / REMOVE act on every route, inserts go first / last
        anchor = None if op in ("INSERT_BEFORE", "INSERT_AFTER", "INSERT_FIRST", "ADD") else (lambda r: True)
    for vhost in config.virtual_hosts:
        if m.vhost_ok(named, vhost):
            _items(vhost.routes, op, value, anchor)
