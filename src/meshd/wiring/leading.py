"""The leader duties of `meshd serve`, a plain list built once the API client opens: the status
writer (unless `--no-status`), the `istio-ca-root-cert` publisher (Kubernetes mode with the CA), the
webhook configuration patcher (CA-issued webhook certificate). All share the one API client and one
Lease elector; a failure is retried with backoff (`kube/leading.py`), xDS keeps serving."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol

from kubernetes_asyncio.client import ApiClient

from meshd.api.meta import InvalidResource, ResourceKey
from meshd.ca.publisher import RootCertPublisher
from meshd.clock import Clock
from meshd.kube.informers import Informers
from meshd.kube.leader import LeaseConfig, default_identity
from meshd.kube.leading import LeaderDuty, Leadership, keep_trying
from meshd.kube.lease_lock import KubeLeaseLock
from meshd.kube.status import KubeStatusApi, StatusWriter
from meshd.model.store import ConfigStore
from meshd.settings import Settings
from meshd.wiring.cluster import ClusterApi


class Triggered(Protocol):
    def trigger(self) -> None: ...

    async def run(self, *, clock: Clock, interval_s: float = ...) -> None: ...


@dataclass(frozen=True)
class PassOnLeading:
    """A duty that makes a pass at once when leadership is gained (the publisher, the patcher)."""

    target: Triggered
    clock: Clock
    interval_s: float | None = None  # between passes; None: the target's default

    def leadership_changed(self, leading: bool) -> None:
        if leading:
            self.target.trigger()

    async def run(self) -> None:
        if self.interval_s is None:
            await self.target.run(clock=self.clock)
        else:
            await self.target.run(clock=self.clock, interval_s=self.interval_s)


# Builds the duties beyond the status writer, given the client and `is_leader`.
DutyFactory = Callable[[ApiClient, Callable[[], bool]], LeaderDuty]


def root_cert_publisher(
    *, root_pem: str, informers: Informers, interval_s: float, clock: Clock, log: logging.Logger
) -> DutyFactory:
    """The leader publishes the root to every namespace the informers know, again whenever a namespace
    appears or changes or a published ConfigMap is edited or deleted, and every `interval_s`."""

    def namespaces() -> Iterable[str]:  # not those being deleted: they refuse new objects (403)
        return [
            str(ns["metadata"]["name"])
            for ns in informers.objects("Namespace")
            if (ns.get("status") or {}).get("phase") != "Terminating"
        ]

    def build(api: ApiClient, is_leader: Callable[[], bool]) -> LeaderDuty:
        publisher = RootCertPublisher(api=api, root_pem=root_pem, namespaces=namespaces, is_leader=is_leader, log=log)
        informers.add_handler("Namespace", lambda *_: publisher.trigger())
        informers.add_handler("ConfigMap", publisher.configmap_changed)  # one edited or deleted: repaired
        return PassOnLeading(target=publisher, clock=clock, interval_s=interval_s)

    return build


def lease_config(settings: Settings) -> LeaseConfig:
    return LeaseConfig(
        name=settings.lease_name,
        namespace=settings.lease_namespace or settings.namespace,
        identity=settings.leader_identity or default_identity(),
        duration_s=settings.lease_duration_s,
    )


async def run_leader_duties(
    *,
    cluster: ClusterApi,
    settings: Settings,
    store: ConfigStore,
    errors: Callable[[], list[InvalidResource]],
    settled: Callable[[], bool],
    more: Iterable[DutyFactory],
    clock: Clock,
    log: logging.Logger,
    cached: Callable[[ResourceKey], dict[str, Any] | None] = lambda _: None,
) -> None:
    """Run until cancelled: open the client (retried), build the elector and the duties once, then
    elect and run them (retried after a failure, on the same objects)."""
    leading: tuple[Leadership, list[LeaderDuty]] | None = None

    def build(api: ApiClient) -> tuple[Leadership, list[LeaderDuty]]:
        config = lease_config(settings)
        lock = KubeLeaseLock(api=api, name=config.name, namespace=config.namespace)
        leadership = Leadership(config=config, lock=lock, clock=clock, log=log)
        duties: list[LeaderDuty] = []
        if settings.write_status:
            writer = StatusWriter(
                api=KubeStatusApi(api),
                store=store,
                errors=errors,
                settled=settled,
                is_leader=leadership.is_leader,
                clock=clock,
                log=log,
                interval_s=settings.status_interval_s,
                cached=cached,
            )
            duties.append(writer)
        duties += [factory(api, leadership.is_leader) for factory in more]
        return leadership, duties

    async def attempt() -> None:
        nonlocal leading
        if leading is None:
            leading = build(await cluster.get())
        leadership, duties = leading
        await leadership.run(duties)

    await keep_trying(attempt, clock=clock, log=log)
