"""The layer of proxyless gRPC clients (`translate/proxyless.py`), one per scope, in its own named
LayerCache (`proxyless`): their listeners, route configurations and clusters, plus the endpoint
assignments of the scope's shared cluster layer (the same objects sidecars get).

It is built from what the scope's shared cluster and route layers are built from (the visible services,
their rules, endpoints and VirtualServices), so its key is the cluster layer by identity (the previous
object exactly while its own inputs are unchanged) and the route layer's inputs (not the layer: a
VirtualService on a TCP port changes no sidecar route but a gRPC client's). Check mode replays the
build's reads on reuse.
"""

from __future__ import annotations

from collections.abc import Hashable

from meshd.generate.layers import LayerCache
from meshd.generate.memo import MemoEntry, ResourceMemo, build_all, reuse_layer
from meshd.generate.outbound import OutboundLayers
from meshd.generate.reads import Context, Tracer
from meshd.translate.proxyless import proxyless_specs
from meshd.translate.scope import Scope, ScopeKey
from meshd.translate.spec import Ident
from meshd.xds.resource import CLUSTER, ENDPOINT, LISTENER, ROUTE, Snapshot

_TYPES = {"grpc-lds": LISTENER, "grpc-rds": ROUTE, "grpc-cds": CLUSTER}


class ProxylessLayers:
    def __init__(
        self,
        *,
        outbound: OutboundLayers,
        memo: ResourceMemo,
        previous: ProxylessLayers | None,
        tracer: Tracer | None,
    ) -> None:
        self._outbound = outbound
        self._memo = memo
        self.layers: LayerCache[ScopeKey, Snapshot] = LayerCache(
            "proxyless", previous=previous.layers if previous is not None else None, memo=memo, tracer=tracer
        )

    def layer(self, scope: Scope, context: Context) -> Snapshot:
        clusters = self._outbound.cluster_layer(scope).layer

        def inputs() -> Hashable:
            # the shared cluster layer covers endpoints and rules; routes are built from what the scope's
            # route layer is (whatever the port's protocol: gRPC clients get routes on every port)
            return (Ident(clusters), self._outbound.route_inputs(scope.key))

        def build(ctx: Context, previous: Snapshot | None) -> tuple[Snapshot, list[MemoEntry]]:
            assert ctx.scope is not None
            refused: list[MemoEntry] = []
            by_type: dict[str, dict[str, object]] = {LISTENER: {}, ROUTE: {}, CLUSTER: {}}
            for spec in proxyless_specs(ctx.scope):
                key = spec.key
                assert isinstance(key, tuple)
                by_type[_TYPES[key[0]]].update(build_all([spec], refused))
            by_type[ENDPOINT] = dict(clusters.resources.get(ENDPOINT, {}))
            self._memo.keep(refused)
            return reuse_layer(by_type, previous), refused  # type: ignore[arg-type]

        return self.layers.get(scope.key, inputs=inputs, context=context, build=build)
