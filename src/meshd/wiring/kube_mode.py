"""Kubernetes mode's source, built on the shared API client: one reflector per watched kind, their
handlers feeding `KubeSource` (which fills the store), and the reflector metrics."""

from __future__ import annotations

import logging

from kubernetes_asyncio.client import ApiClient
from prometheus_client import CollectorRegistry

from meshd.clock import Clock
from meshd.kube.informers import Informers
from meshd.kube.kinds import watched_kinds
from meshd.kube.metrics import KubeMetrics
from meshd.kube.mode import KubeMode
from meshd.kube.reflector import ReflectorSettings
from meshd.kube.source import KubeSource
from meshd.kube.transport import ApiClientTransport
from meshd.model.store import ConfigStore
from meshd.settings import Settings


def build_kube_mode(
    *,
    api: ApiClient,
    settings: Settings,
    store: ConfigStore,
    registry: CollectorRegistry,
    clock: Clock,
    log: logging.Logger,
) -> KubeMode:
    informers = Informers(
        kinds=watched_kinds(namespace=settings.namespace),
        transport=ApiClientTransport(api),
        clock=clock,
        log=log,
        metrics=KubeMetrics(registry),
        settings=ReflectorSettings(
            watch_timeout_s=settings.kube_watch_timeout_s, recheck_s=settings.kube_crd_recheck_s
        ),
    )
    source = KubeSource(store=store, namespace=settings.namespace, log=log, trust_domain=settings.trust_domain)
    for kind in informers.reflectors:
        informers.add_handler(kind, source.handler(kind))
    informers.on_synced(source.mark_synced)
    log.info("event=kube_mode kubeconfig=%s namespace=%s", settings.kubeconfig or "in-cluster", settings.namespace)
    return KubeMode(informers=informers, source=source)
