"""Composition root: the only module that builds and wires everything."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Awaitable, Callable

import grpc
from aiohttp import web
from envoy.config.cluster.v3 import cluster_pb2
from google.protobuf import duration_pb2
from prometheus_client import CollectorRegistry

from meshd.ca.publisher import RootCertPublisher
from meshd.ca.runtime import Security, register_plaintext, start_security
from meshd.ca.server import SERVER_OPTIONS
from meshd.clock import Clock, SystemClock
from meshd.gcpolicy import GcPolicy
from meshd.kube.duties import Duties, PublisherFactory, run_kube_duties
from meshd.kube.mode import KubeMode, start_kube_mode
from meshd.kube.webhook_wiring import webhook_duties
from meshd.model.store import ConfigStore
from meshd.obs.http import build_app
from meshd.obs.metrics import Metrics
from meshd.push.loop import PushLoop
from meshd.settings import Settings
from meshd.sources.directory import DirectorySource
from meshd.xds.hub import Hub
from meshd.xds.resource import CLUSTER, make_resource
from meshd.xds.server import AdsServicer, add_to_server

log = logging.getLogger("meshd")


def _test_hooks(push: PushLoop) -> Callable[[web.Request], Awaitable[web.Response]]:
    async def hook(request: web.Request) -> web.Response:
        name = request.match_info["hook"]
        if name == "inject-invalid-cluster":
            # connect_timeout must be > 0: Envoy rejects this cluster (the NACK path under test).
            bad = cluster_pb2.Cluster(
                name="meshd-test-invalid",
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


async def run_server(settings: Settings, *, clock: Clock | None = None, stop: asyncio.Event | None = None) -> None:
    """Run meshd until `stop` is set or the process gets SIGINT/SIGTERM."""
    clock = clock or SystemClock()
    stop = stop or asyncio.Event()
    if settings.config_dir is None:
        settings = settings.model_copy(update={"check_tls_files": False})  # sidecars are not on this host
    metrics = Metrics(CollectorRegistry())
    store = ConfigStore()
    hub = Hub()
    gc_policy = GcPolicy(every=settings.gc_full_every_pushes, enabled=settings.gc_freeze)
    push = PushLoop(store=store, hub=hub, settings=settings, clock=clock, metrics=metrics, log=log, gc_policy=gc_policy)
    source: DirectorySource | KubeMode
    if settings.config_dir is None:
        source = await start_kube_mode(settings=settings, store=store, registry=metrics.registry, clock=clock, log=log)
    else:
        source = DirectorySource(
            directory=settings.config_dir,
            store=store,
            clock=clock,
            interval_s=settings.file_poll_interval_s,
            log=log,
            watch=settings.file_watch,
        )

    grpc_server = grpc.aio.server(options=list(SERVER_OPTIONS))
    servicer = AdsServicer(
        hub=hub,
        metrics=metrics,
        clock=clock,
        log=log,
        send_timeout_s=settings.send_timeout_s,
        max_concurrent_pushes=settings.max_concurrent_pushes,
    )
    add_to_server(grpc_server, servicer)
    register_plaintext(grpc_server, metrics=metrics, log=log)
    xds_port = grpc_server.add_insecure_port(f"{settings.xds_host}:{settings.xds_port}")

    http_app = build_app(
        hub=hub,
        push=push,
        metrics=metrics,
        is_ready=lambda: hub.ready,
        test_hooks=_test_hooks(push) if settings.enable_test_hooks else None,
    )
    if isinstance(source, KubeMode):
        source.add_routes(http_app)
    runner = web.AppRunner(http_app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, settings.http_host, settings.http_port)

    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)

    security = (
        await start_security(settings=settings, hub=hub, metrics=metrics, clock=clock, log=log)
        if settings.ca_enabled
        else None
    )
    await grpc_server.start()
    await site.start()
    log.info(
        "event=started xds_port=%d http_port=%d config_dir=%s",
        xds_port,
        settings.http_port,
        settings.config_dir,
    )
    try:
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(source.run())
            tasks.create_task(push.run())
            tasks.create_task(
                run_kube_duties(
                    Duties(
                        settings=settings,
                        store=store,
                        errors=lambda: push.errors,
                        settled=lambda: hub.generator is not None and hub.generator.revision == store.revision,
                        clock=clock,
                        log=log,
                        root_publisher=root_publisher_factory(security, source, log),
                        **webhook_duties(settings, security, is_ready=lambda: hub.ready, log=log),
                    )
                )
            )
            await stop.wait()
            raise _Stop
    except* _Stop:
        pass
    finally:
        await grpc_server.stop(grace=1.0)
        if security is not None:
            await security.stop()
        await runner.cleanup()
        log.info("event=stopped")


def root_publisher_factory(security: Security | None, source: object, log: logging.Logger) -> PublisherFactory | None:
    """Kubernetes mode with the CA on: the leader publishes the root to every namespace the informers
    know, again whenever a namespace appears or changes."""
    if security is None or security.api is None or not isinstance(source, KubeMode):
        return None
    informers = source.informers
    current: list[RootCertPublisher] = []
    informers.add_handler("Namespace", lambda *_: current[-1].trigger() if current else None)

    def namespaces() -> list[str]:
        return [str(ns["metadata"]["name"]) for ns in informers.objects("Namespace")]

    def build(is_leader: Callable[[], bool]) -> RootCertPublisher:
        current[:] = [security.root_publisher(namespaces=namespaces, is_leader=is_leader, log=log)]
        return current[0]

    return build


class _Stop(Exception):
    pass
