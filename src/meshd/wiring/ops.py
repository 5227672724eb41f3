"""The operations HTTP port as `meshd serve` wires it: the debug views over the hub, the push loop
and (Kubernetes mode) the informers, plus the test hooks of the end-to-end tests
(`--enable-test-hooks`: inject an invalid cluster to exercise the NACK path, clear it)."""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from envoy.config.cluster.v3 import cluster_pb2
from google.protobuf import duration_pb2
from prometheus_client import generate_latest

from meshd.generate.authz_view import authorization_view
from meshd.generate.generator import ConfigGenerator
from meshd.kube.mode import KubeMode
from meshd.obs.merge import MergedRegistry
from meshd.obs.metrics import Metrics
from meshd.ops.http import DebugAuthorizer, DebugViews, build_app
from meshd.push.loop import PushLoop
from meshd.wiring.workers import WorkerPool
from meshd.xds import debug
from meshd.xds.hub import Hub
from meshd.xds.resource import CLUSTER, make_resource


def hooks_for_tests(
    push: PushLoop, *, injected: Callable[[], None] = lambda: None
) -> Callable[[web.Request], Awaitable[web.Response]]:
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
        injected()
        return web.Response(text="ok\n")

    return hook


def authorizationz(hub: Hub, proxy_id: str) -> dict[str, Any] | None:
    """/debug/authorizationz: None when no such proxy is connected (or nothing is generated yet)."""
    conn = hub.find(proxy_id)
    generator = hub.generator
    if conn is None or not isinstance(generator, ConfigGenerator):
        return None
    return authorization_view(generator, conn.proxy)


def ops_app(
    *,
    hub: Hub,
    push: PushLoop,
    metrics: Metrics,
    kube: KubeMode | None,
    enable_test_hooks: bool,
    debug_expose: bool = False,
    debug_authorize: DebugAuthorizer | None = None,
    workers: WorkerPool | None = None,
) -> web.Application:
    views = DebugViews(
        sync_status=lambda: debug.sync_status(hub),
        config_dump=lambda proxy_id: debug.config_dump(hub, proxy_id),
        config_errors=lambda: push.errors,
        informers=kube.debug_status if kube is not None else None,
        authorizationz=lambda proxy_id: authorizationz(hub, proxy_id),
    )
    if workers is not None:
        views = with_workers(views, hub=hub, metrics=metrics, workers=workers)
    return build_app(
        registry=metrics.registry,
        is_ready=lambda: hub.ready and (workers is None or workers.ready),
        views=views,
        test_hooks=hooks_for_tests(push, injected=workers.touch if workers else lambda: None)
        if enable_test_hooks
        else None,
        debug_expose=debug_expose,
        debug_authorize=debug_authorize,
    )


def with_workers(views: DebugViews, *, hub: Hub, metrics: Metrics, workers: WorkerPool) -> DebugViews:
    """The views over the main process's own streams and every worker's: lists joined, a proxy looked up
    where its stream is, the workers' stream metrics added to the main process's."""

    async def sync_status() -> Any:
        return [*debug.sync_status(hub), *(row for rows in await workers.ask("syncz") for row in rows)]

    async def one_proxy(name: str, proxy_id: str, own: Any) -> Any:
        if own is not None:
            return own
        return next((data for data in await workers.ask(name, proxy_id) if data is not None), None)

    async def exposition() -> bytes:
        return bytes(generate_latest(MergedRegistry(metrics.registry, await workers.metrics())))

    return dataclasses.replace(
        views,
        sync_status=sync_status,
        config_dump=lambda proxy_id: one_proxy("config_dump", proxy_id, debug.config_dump(hub, proxy_id)),
        authorizationz=lambda proxy_id: one_proxy("authorizationz", proxy_id, authorizationz(hub, proxy_id)),
        exposition=exposition,
    )
