"""The operations HTTP port as `meshd serve` wires it: the debug views over the hub, the push loop
and (Kubernetes mode) the informers, plus the test hooks of the end-to-end tests
(`--enable-test-hooks`: inject an invalid cluster to exercise the NACK path, clear it)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web
from envoy.config.cluster.v3 import cluster_pb2
from google.protobuf import duration_pb2

from meshd.kube.mode import KubeMode
from meshd.obs.metrics import Metrics
from meshd.ops.http import DebugAuthorizer, DebugViews, build_app
from meshd.push.loop import PushLoop
from meshd.xds import debug
from meshd.xds.hub import Hub
from meshd.xds.resource import CLUSTER, make_resource


def hooks_for_tests(push: PushLoop) -> Callable[[web.Request], Awaitable[web.Response]]:
    async def hook(request: web.Request) -> web.Response:
        name = request.match_info["hook"]
        if name == "inject-invalid-cluster":
            # connect_timeout must be > 0: Envoy rejects this cluster (the NACK path under test). With
            # `?name=`, it replaces the generated cluster of that name (served over it, past the proto guard).
            bad = cluster_pb2.Cluster(
                name=request.query.get("name", "meshd-test-invalid"),
                type=cluster_pb2.Cluster.STATIC,
                connect_timeout=duration_pb2.Duration(seconds=-1),
            )
            push.inject(CLUSTER, [make_resource(bad.name, bad)])
        elif name == "clear":
            push.inject(CLUSTER, [])
        else:
            return web.Response(status=404, text=f"unknown hook {name}\n")
        return web.Response(text="ok\n")

    return hook


def ops_app(
    *,
    hub: Hub,
    push: PushLoop,
    metrics: Metrics,
    kube: KubeMode | None,
    enable_test_hooks: bool,
    debug_expose: bool = False,
    debug_authorize: DebugAuthorizer | None = None,
) -> web.Application:
    views = DebugViews(
        sync_status=lambda: debug.sync_status(hub),
        config_dump=lambda proxy_id: debug.config_dump(hub, proxy_id),
        config_errors=lambda: push.errors,
        informers=kube.debug_status if kube is not None else None,
    )
    return build_app(
        registry=metrics.registry,
        is_ready=lambda: hub.ready,
        views=views,
        test_hooks=hooks_for_tests(push) if enable_test_hooks else None,
        debug_expose=debug_expose,
        debug_authorize=debug_authorize,
    )
