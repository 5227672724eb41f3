"""Kubernetes mode wiring: the API client, one reflector per kind, the source feeding the store,
`/debug/informers` and the reflector metrics. app.py calls `start_kube_mode` and runs the result."""

from __future__ import annotations

import json
import logging

from aiohttp import web
from kubernetes_asyncio.client import ApiClient
from prometheus_client import CollectorRegistry

from meshd.clock import Clock
from meshd.kube.client import new_api_client
from meshd.kube.informers import Informers
from meshd.kube.kinds import watched_kinds
from meshd.kube.metrics import KubeMetrics
from meshd.kube.reflector import ReflectorSettings
from meshd.kube.source import KubeSource
from meshd.kube.transport import ApiClientTransport
from meshd.model.store import ConfigStore
from meshd.settings import Settings


class KubeMode:
    def __init__(self, *, client: ApiClient, informers: Informers, source: KubeSource) -> None:
        self.client = client
        self.informers = informers
        self.source = source

    def add_routes(self, app: web.Application) -> None:
        async def informers(_: web.Request) -> web.Response:
            body = {**self.informers.status(), "meshConfig": _mesh(self.source)}
            return web.Response(text=json.dumps(body, indent=2, sort_keys=True), content_type="application/json")

        app.router.add_get("/debug/informers", informers)

    async def run(self) -> None:
        try:
            await self.informers.run()
        finally:
            await self.client.close()


def _mesh(source: KubeSource) -> dict[str, object]:
    mesh = source.mesh
    return {
        "rootNamespace": mesh.root_namespace,
        "trustDomain": mesh.trust_domain,
        "discoveryAddress": mesh.discovery_address,
        "discoverySelectors": len(mesh.discovery_selectors),
        "error": str(source.mesh_error) if source.mesh_error else None,
    }


async def start_kube_mode(
    *, settings: Settings, store: ConfigStore, registry: CollectorRegistry, clock: Clock, log: logging.Logger
) -> KubeMode:
    client = await new_api_client(settings.kubeconfig)
    informers = Informers(
        kinds=watched_kinds(namespace=settings.namespace),
        transport=ApiClientTransport(client),
        clock=clock,
        log=log,
        metrics=KubeMetrics(registry),
        settings=ReflectorSettings(
            watch_timeout_s=settings.kube_watch_timeout_s, recheck_s=settings.kube_crd_recheck_s
        ),
    )
    source = KubeSource(store=store, namespace=settings.namespace, log=log)
    for kind in informers.reflectors:
        informers.add_handler(kind, source.handler(kind))
    informers.on_synced(source.mark_synced)
    log.info("event=kube_mode kubeconfig=%s namespace=%s", settings.kubeconfig or "in-cluster", settings.namespace)
    return KubeMode(client=client, informers=informers, source=source)
