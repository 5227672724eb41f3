"""The `envoyfilters` layer: a proxy's snapshot with the WasmPlugins and EnvoyFilters that select it applied
(pure; the WasmPlugins' filters first, translate/wasm_plugin.py, then the EnvoyFilters' patches, as Istio).

The last step of a proxy's generation, on the resources meshd generated for it (before they are served):
listeners, clusters and route configurations are decoded, patched (translate/envoyfilter), validated, and
those that changed are serialised again; the rest stay the very objects the shared layers hold. A proxy
no EnvoyFilter selects gets its snapshot untouched (no cost). The cache key is the proxy group, the
snapshot patched (an unchanged one is the same object), the filters that select the proxy (read through
`ctx.queries.envoy_filters` / `wasm_plugins`, so check mode verifies the key holds them) and the node
metadata patches match.
An EnvoyFilter that fails on a proxy is left out there and its error is reported while the entry is in use
(as the memo's refused resources are).
The BOOTSTRAP patches that apply to the proxy are added as resources of their own type for its node agent
(translate/envoyfilter/bootstrap.py); a proxy whose node metadata does not say its agent applies them
gets none, and each such patch is reported."""

from __future__ import annotations

from collections.abc import Hashable
from types import MappingProxyType
from typing import Any

from envoy.config.cluster.v3.cluster_pb2 import Cluster
from envoy.config.core.v3.extension_pb2 import TypedExtensionConfig
from envoy.config.listener.v3.listener_pb2 import Listener
from envoy.config.route.v3.route_pb2 import RouteConfiguration

from meshd.api.meta import InvalidResource
from meshd.generate.layers import LayerCache
from meshd.generate.memo import MemoEntry, Refused, ResourceMemo
from meshd.generate.reads import Context, Tracer
from meshd.translate.envoyfilter.apply import ProxyConfig, apply_filters
from meshd.translate.envoyfilter.bootstrap import AGENT_METADATA, BOOTSTRAP_PATCH, selected_patches
from meshd.translate.proxy import Proxy
from meshd.translate.wasm_plugin import apply_plugins
from meshd.xds.resource import CLUSTER, LISTENER, ROUTE, Snapshot, XdsResource, make_raw_resource, make_resource

ECDS = "type.googleapis.com/envoy.config.core.v3.TypedExtensionConfig"
_TYPES: tuple[tuple[str, str, type[Any]], ...] = (
    (LISTENER, "listeners", Listener),
    (CLUSTER, "clusters", Cluster),
    (ROUTE, "routes", RouteConfiguration),
    (ECDS, "extensions", TypedExtensionConfig),
)


class EnvoyFilterLayers:
    """Patched snapshots of one generation, carried from the previous generation's."""

    def __init__(self, *, memo: ResourceMemo, previous: EnvoyFilterLayers | None, tracer: Tracer | None) -> None:
        self.cache: LayerCache[Hashable, Snapshot] = LayerCache(
            "envoyfilters", previous=previous.cache if previous is not None else None, memo=memo, tracer=tracer
        )
        self._memo = memo

    def apply(self, proxy: Proxy, group: Hashable, base: Snapshot, context: Context) -> Snapshot:
        queries = context.queries
        router = proxy.type == "router"
        filters = queries.envoy_filters(proxy.namespace, proxy.ip)
        plugins = queries.wasm_plugins(proxy.namespace, proxy.ip)
        if not filters and not plugins:
            return base

        def inputs() -> Hashable:
            return (base, filters, plugins, proxy.metadata, router)

        def build(ctx: Context, previous: Snapshot | None) -> tuple[Snapshot, list[MemoEntry]]:
            assert ctx.proxy is not None
            chosen = ctx.queries.envoy_filters(ctx.proxy.namespace, ctx.proxy.ip)
            wasm = ctx.queries.wasm_plugins(ctx.proxy.namespace, ctx.proxy.ip)
            metadata = dict(ctx.proxy.metadata)
            snap, used = _patched(base, chosen, wasm, router=router, metadata=metadata, key=(group, proxy.metadata))
            self._memo.keep(used)  # its errors are reported while the entry is in use
            return snap, used

        return self.cache.get((group, proxy.metadata), inputs=inputs, context=context, build=build)


def _patched(
    base: Snapshot, filters: Any, plugins: Any, *, router: bool, metadata: dict[str, str], key: Hashable
) -> tuple[Snapshot, list[MemoEntry]]:
    resources = base.resources
    config = ProxyConfig()
    originals: dict[str, dict[str, Any]] = {}
    for type_url, attr, cls in _TYPES:
        decoded: dict[str, Any] = {}
        for name, resource in resources.get(type_url, {}).items():
            msg = cls()
            msg.ParseFromString(resource.body)
            decoded[name] = msg
        setattr(config, attr, decoded)
        originals[type_url] = {n: _copy(v) for n, v in decoded.items()}
    apply_plugins(config, plugins, router=router)  # as Istio: generated config, then the EnvoyFilters
    patched, errors = apply_filters(config, filters, router=router, metadata=metadata)
    out: dict[str, dict[str, XdsResource]] = {t: dict(r) for t, r in resources.items()}
    for type_url, attr, _ in _TYPES:
        before = originals[type_url]
        now: dict[str, Any] = getattr(patched, attr)
        by_name = out.setdefault(type_url, {})
        for name in list(by_name):
            if name not in now:
                del by_name[name]
        for name, msg in now.items():
            if before.get(name) != msg:
                by_name[name] = make_resource(name, msg)
    failed = {e.key for e in errors}  # a filter not applied to this proxy is not applied to its bootstrap either
    kept = tuple(f for f in filters if f.key not in failed)
    errors += _bootstrap(out, kept, router=router, metadata=metadata)
    snap = Snapshot(resources=MappingProxyType({t: MappingProxyType(r) for t, r in out.items() if r}))
    used: list[MemoEntry] = [(("envoyfilter-errors", key), Refused(None, tuple(errors)))] if errors else []
    return snap, used


def _bootstrap(
    out: dict[str, dict[str, XdsResource]], filters: Any, *, router: bool, metadata: dict[str, str]
) -> list[InvalidResource]:
    """The BOOTSTRAP patches for the proxy's agent (into `out`), or an error per patch its agent cannot apply."""
    chosen = selected_patches(filters, router=router, metadata=metadata)
    if not chosen:
        return []
    if metadata.get(AGENT_METADATA) != "true":
        why = (
            "applyTo BOOTSTRAP: not applied to this proxy: its node agent does not apply bootstrap patches "
            "(`meshd agent --bootstrap-patches`, or BOOTSTRAP_XDS_AGENT=true in its environment)"
        )
        return [InvalidResource(s.envoy_filter.key, f"spec.configPatches[{s.index}]", why) for s in chosen]
    served = out.setdefault(BOOTSTRAP_PATCH, {})
    for s in chosen:
        assert s.patch.message is not None
        body = s.patch.message.SerializeToString(deterministic=True)
        served[s.resource] = make_raw_resource(s.resource, BOOTSTRAP_PATCH, body)
    return []


def _copy(msg: Any) -> Any:
    dup = type(msg)()
    dup.CopyFrom(msg)
    return dup
