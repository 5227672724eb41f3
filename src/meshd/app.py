"""Composition root: with `meshd/wiring/`, the only code that builds and wires everything.

One Kubernetes API client (`wiring/cluster.py`) serves every cluster user; the plaintext xDS server
and the secure port each get their own ADS servicer on the one hub (`wiring/grpc_servers.py`); the ops
HTTP port renders what it is handed (`wiring/ops.py`); the leader duties are a plain list
(`wiring/leading.py`). Edge packages receive their dependencies and build nothing for each other.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal

from aiohttp import web
from prometheus_client import CollectorRegistry

from meshd.ca.signer import utc_now
from meshd.clock import Clock, SystemClock
from meshd.gcpolicy import GcPolicy
from meshd.kube.mode import KubeMode
from meshd.kube.source import KubeSource
from meshd.model.store import ConfigStore
from meshd.obs.metrics import Metrics
from meshd.push.loop import PushLoop
from meshd.settings import Settings
from meshd.sources.directory import DirectorySource
from meshd.sources.mesh_file import MeshConfigFile
from meshd.wiring.authority import load_authority
from meshd.wiring.cluster import ClusterApi, wants_leader_duties
from meshd.wiring.debug_access import debug_authorizer
from meshd.wiring.gateway_deploy import gateway_deployer
from meshd.wiring.grpc_servers import ads_servicer, plaintext_server, start_secure_port
from meshd.wiring.jwks import jwks_fetcher
from meshd.wiring.kube_mode import build_kube_mode
from meshd.wiring.leading import DutyFactory, root_cert_publisher, run_leader_duties
from meshd.wiring.ops import ops_app
from meshd.wiring.secure_workers import serve_secure_from_workers
from meshd.wiring.webhooks import current_proxy_configs, proxy_config, webhook_patcher, webhook_server
from meshd.wiring.workers import WorkerPool, debug_answers
from meshd.xds.hub import Hub

log = logging.getLogger("meshd")


async def run_server(settings: Settings, *, clock: Clock | None = None, stop: asyncio.Event | None = None) -> None:
    """Run meshd until `stop` is set or the process gets SIGINT/SIGTERM."""
    clock = clock or SystemClock()
    stop = stop or asyncio.Event()
    in_cluster = settings.config_dir is None  # Kubernetes mode: the cluster is the config source
    if in_cluster:
        settings = settings.model_copy(update={"check_tls_files": False})  # sidecars are not on this host
    metrics = Metrics(CollectorRegistry())
    store = ConfigStore()
    gc_policy = GcPolicy(every=settings.gc_full_every_pushes, enabled=settings.gc_freeze)
    hub = Hub(gc_policy=gc_policy)
    workers: list[WorkerPool] = []  # `--workers N` (N > 1): the processes serving the plaintext xDS port
    push = PushLoop(
        store=store,
        hub=hub,
        settings=settings,
        clock=clock,
        metrics=metrics,
        log=log,
        gc_policy=gc_policy,
        rejected=lambda: [*hub.rejected(), *(r for pool in workers for r in pool.rejected())],
    )
    if settings.workers > 1:
        workers.append(
            WorkerPool(
                settings=settings,
                store=store,
                mesh=lambda: push.mesh_config,
                extra=lambda: push.injected,
                clock=clock,
                log=log,
                log_level=logging.getLevelName(logging.getLogger().getEffectiveLevel()),
            )
        )
        workers[0].answer = debug_answers(workers[0], hub=hub, cluster_id=settings.cluster_id)
    mesh_file = None
    if settings.mesh_config is not None and settings.config_dir is not None:
        mesh_file = MeshConfigFile(  # raises on an unusable file: meshd does not start
            path=settings.mesh_config,
            store=store,
            clock=clock,
            interval_s=settings.file_poll_interval_s,
            log=log,
            root_namespace=settings.root_namespace,
            trust_domain=settings.trust_domain,
        )
        push.follow_mesh(lambda: mesh_file.mesh if mesh_file is not None else None)
    cluster = ClusterApi(kubeconfig=settings.kubeconfig)
    thresholds = gc_policy.install()
    try:
        async with contextlib.AsyncExitStack() as cleanup:  # undone in reverse: servers first, the client last
            cleanup.push_async_callback(cluster.close)
            kube: KubeMode | None = None
            source: DirectorySource | KubeMode
            if settings.config_dir is None:
                api = await cluster.get()
                kube = source = build_kube_mode(
                    api=api, settings=settings, store=store, registry=metrics.registry, clock=clock, log=log
                )
                kube_source = kube.source
                push.follow_mesh(lambda: kube_source.mesh)  # the `istio` ConfigMap
            else:
                source = DirectorySource(
                    directory=settings.config_dir,
                    store=store,
                    clock=clock,
                    interval_s=settings.file_poll_interval_s,
                    log=log,
                    watch=settings.file_watch,
                    max_file_bytes=settings.max_config_file_bytes,
                )

            # The source lists (reads) while the rest starts: in Kubernetes mode the lists wait mostly for the
            # API server, and the CA's Secret, the servers and the certificates need none of it.
            source_task = asyncio.create_task(source.run())
            cleanup.push_async_callback(_cancelled, source_task)
            # The workers start now too: their imports overlap the lists (a worker waits for the secure
            # port's material, when meshd runs its CA, before it is told to start serving).
            pool_tasks = [asyncio.create_task(pool.run()) for pool in workers]
            for task in pool_tasks:
                cleanup.push_async_callback(_cancelled, task)

            grpc_server, xds_port = None, workers[0].xds_port if workers else settings.xds_port
            if not workers:  # else the workers serve it
                ads = ads_servicer(settings=settings, hub=hub, metrics=metrics, clock=clock, log=log)
                grpc_server, xds_port = plaintext_server(
                    host=settings.xds_host,
                    port=settings.xds_port,
                    ads=ads,
                    metrics=metrics,
                    log=log,
                    max_connections=settings.xds_max_connections,
                )
            debug_authorize = (
                debug_authorizer(settings=settings, api=await cluster.get() if in_cluster else None, log=log)
                if settings.debug_expose
                else None
            )
            http_app = ops_app(
                hub=hub,
                push=push,
                metrics=metrics,
                kube=kube,
                enable_test_hooks=settings.enable_test_hooks,
                debug_expose=settings.debug_expose,
                debug_authorize=debug_authorize,
                workers=workers[0] if workers else None,
            )
            runner = web.AppRunner(http_app, access_log=None)
            await runner.setup()
            cleanup.push_async_callback(runner.cleanup)
            site = web.TCPSite(runner, settings.http_host, settings.http_port)

            loop = asyncio.get_running_loop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                with contextlib.suppress(NotImplementedError, RuntimeError):
                    loop.add_signal_handler(sig, stop.set)

            # The CA: raises on an unusable one (meshd must not run half-secured).
            authority, certificate = None, None
            if settings.ca_enabled:
                api = await cluster.get() if in_cluster else None
                authority = await load_authority(settings=settings, api=api, metrics=metrics, wall=utc_now, log=log)
                if workers:  # they serve the secure port; the main process answers their CSRs and tokens
                    certificate = serve_secure_from_workers(
                        workers[0], settings=settings, authority=authority, metrics=metrics, clock=clock, log=log
                    )
                else:
                    secure = await start_secure_port(
                        settings=settings, authority=authority, hub=hub, metrics=metrics, clock=clock, log=log
                    )
                    cleanup.push_async_callback(secure.stop)
                    certificate = secure.certificate
            if grpc_server is not None:
                await grpc_server.start()
                cleanup.push_async_callback(grpc_server.stop, 1.0)
            await site.start()
            log.info(
                "event=started xds_port=%d http_port=%d config_dir=%s workers=%d",
                xds_port,
                settings.http_port,
                settings.config_dir,
                settings.workers,
            )

            mesh_source: KubeSource | MeshConfigFile | None = kube.source if kube is not None else mesh_file

            def discovery_address() -> str:
                return mesh_source.mesh.discovery_address if mesh_source is not None else ""

            webhook = webhook_server(
                settings=settings,
                ca_issued=in_cluster,
                authority=authority,
                clock=clock,
                metrics=metrics,
                log=log,
                discovery_address=discovery_address,
                proxy_configs=lambda: current_proxy_configs(mesh_source.mesh if mesh_source else None, store),
            )
            more_duties: list[DutyFactory] = []
            if authority is not None and kube is not None:
                more_duties.append(
                    root_cert_publisher(
                        root_pem=authority.root_pem,
                        informers=kube.informers,
                        interval_s=settings.root_cert_resync_s,
                        clock=clock,
                        log=log,
                    )
                )
            if authority is not None and webhook is not None and webhook.ssl_context is not None:
                more_duties.append(
                    webhook_patcher(
                        settings=settings, root_pem=authority.root_pem, is_ready=lambda: hub.ready, clock=clock, log=log
                    )
                )
            if kube is not None and settings.gateway_deploy:
                more_duties.append(
                    gateway_deployer(
                        store=store,
                        config=lambda: proxy_config(settings, discovery_address=discovery_address()),
                        interval_s=settings.gateway_deploy_resync_s,
                        clock=clock,
                        log=log,
                    )
                )
            jwks = jwks_fetcher(settings=settings, store=store, clock=clock, metrics=metrics, log=log)
            async with asyncio.TaskGroup() as tasks:
                tasks.create_task(_awaited(source_task))
                if mesh_file is not None:
                    tasks.create_task(mesh_file.run())
                tasks.create_task(push.run())
                for task in pool_tasks:
                    tasks.create_task(_awaited(task))
                tasks.create_task(jwks.run())
                if webhook is not None:
                    tasks.create_task(webhook.serve())
                    if webhook.certificate is not None:
                        tasks.create_task(webhook.certificate.run())
                if certificate is not None:
                    tasks.create_task(certificate.run())
                if wants_leader_duties(settings):
                    tasks.create_task(
                        run_leader_duties(
                            cluster=cluster,
                            settings=settings,
                            store=store,
                            errors=lambda: push.errors,
                            settled=lambda: hub.generator is not None and hub.generator.revision == store.revision,
                            more=more_duties,
                            clock=clock,
                            log=log,
                            cached=kube.source.cached if kube is not None else lambda _: None,
                        )
                    )
                await stop.wait()
                raise _Stop
    except* _Stop:
        pass
    finally:
        for pool in workers:  # also when meshd stopped before the workers ran
            pool.close()
        gc_policy.uninstall(thresholds)
        log.info("event=stopped")


class _Stop(Exception):
    pass


async def _awaited(task: asyncio.Task[None]) -> None:
    await task


async def _cancelled(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
