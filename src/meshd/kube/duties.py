"""Wiring of the leader-only duties and the validation webhook, called once from app.py.

- the webhook server (`/validate`, `/inject`), when `webhook_cert`/`webhook_key` are set (needs no
  cluster) or meshd's CA issued its certificate (`webhook_ssl`, Kubernetes mode);
- the leader's webhook configuration patcher (caBundle, failurePolicy), see `kube/webhook_patcher.py`;
- leader election and the status writer, when meshd talks to a cluster (Kubernetes mode, or a
  `kubeconfig` given next to a config directory) and `leader_election` is on. Only the leader
  writes status; xDS serving never waits for any of this.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from meshd.api.meta import InvalidResource
from meshd.ca.publisher import RootCertPublisher
from meshd.clock import Clock
from meshd.kube.client import new_api_client
from meshd.kube.leader import LeaderElector, LeaseConfig, default_identity
from meshd.kube.lease_lock import KubeLeaseLock
from meshd.kube.status import KubeStatusApi, StatusWriter
from meshd.kube.webhook import serve_webhook
from meshd.kube.webhook_patcher import WebhookConfigPatcher
from meshd.kube.webhook_wiring import PatcherFactory, injection_config
from meshd.model.store import ConfigStore
from meshd.settings import Settings

# Builds the leader-only `istio-ca-root-cert` publisher, given the elector's `is_leader`.
PublisherFactory = Callable[[Callable[[], bool]], RootCertPublisher]


async def _webhook_or_log(*, log: logging.Logger, serve: Callable[..., Awaitable[None]], **kwargs: Any) -> None:
    """A webhook that cannot start (unreadable certificate, port taken) is reported; xDS keeps serving."""
    try:
        await serve(log=log, **kwargs)
    except (OSError, ValueError) as exc:
        log.error("event=webhook_failed error=%s", exc)


def wants_cluster_duties(settings: Settings) -> bool:
    return settings.leader_election and (settings.config_dir is None or settings.kubeconfig is not None)


@dataclass(frozen=True)
class Duties:
    """What the duties read: the store and its errors, whether the push caught up, the root publisher."""

    settings: Settings
    store: ConfigStore
    errors: Callable[[], list[InvalidResource]]
    settled: Callable[[], bool]
    clock: Clock
    log: logging.Logger
    root_publisher: PublisherFactory | None = None
    webhook_ssl: ssl.SSLContext | None = None  # the webhook certificate from meshd's CA
    webhook_patcher: PatcherFactory | None = None


async def run_kube_duties(duties: Duties) -> None:
    """Run until cancelled (returns at once if nothing is enabled)."""
    settings = duties.settings
    async with asyncio.TaskGroup() as tasks:
        files = settings.webhook_cert is not None and settings.webhook_key is not None
        if files or duties.webhook_ssl is not None:
            tasks.create_task(
                _webhook_or_log(
                    log=duties.log,
                    serve=serve_webhook,
                    host=settings.webhook_host,
                    port=settings.webhook_port,
                    cert=settings.webhook_cert,
                    key=settings.webhook_key,
                    ssl_context=None if files else duties.webhook_ssl,
                    injection=injection_config(settings),
                )
            )
        if wants_cluster_duties(settings):
            tasks.create_task(_keep_leading(duties))


async def _keep_leading(duties: Duties) -> None:
    """Leader duties must never take meshd down: an unusable kubeconfig is retried, with backoff."""
    delay = 1.0
    while True:
        try:
            await _lead(duties)
        except Exception as exc:
            duties.log.error("event=leader_duties_failed error=%s retry_in_s=%.0f", exc, delay)
        await duties.clock.sleep(delay)
        delay = min(delay * 2, 30.0)


async def _lead(duties: Duties) -> None:
    settings, clock, log = duties.settings, duties.clock, duties.log
    api = await new_api_client(settings.kubeconfig)
    try:
        config = LeaseConfig(
            name=settings.lease_name,
            namespace=settings.lease_namespace or settings.namespace,
            identity=settings.leader_identity or default_identity(),
            duration_s=settings.lease_duration_s,
        )
        writer: StatusWriter | None = None
        publisher: RootCertPublisher | None = None
        patcher: WebhookConfigPatcher | None = None

        def on_change(leading: bool) -> None:
            if writer is not None:
                writer.leadership_changed(leading)
            if publisher is not None and leading:
                publisher.trigger()
            if patcher is not None and leading:
                patcher.trigger()

        elector = LeaderElector(
            config=config,
            lock=KubeLeaseLock(api=api, name=config.name, namespace=config.namespace),
            clock=clock,
            log=log,
            on_change=on_change,
        )
        writer = StatusWriter(
            api=KubeStatusApi(api),
            store=duties.store,
            errors=duties.errors,
            settled=duties.settled,
            is_leader=lambda: elector.is_leader,
            clock=clock,
            log=log,
            interval_s=settings.status_interval_s,
        )
        log.info(
            "event=leader_election_started lease=%s/%s identity=%s", config.namespace, config.name, config.identity
        )
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(elector.run())
            if settings.write_status:
                tasks.create_task(writer.run())
            if duties.root_publisher is not None:
                publisher = duties.root_publisher(lambda: elector.is_leader)
                tasks.create_task(publisher.run(clock=clock))
            if duties.webhook_patcher is not None:
                patcher = duties.webhook_patcher(lambda: elector.is_leader)
                tasks.create_task(patcher.run(clock=clock))
    finally:
        await api.close()
