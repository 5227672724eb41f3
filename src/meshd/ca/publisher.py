"""Publishes the root certificate to every namespace as ConfigMap `istio-ca-root-cert` (key
`root-cert.pem`), as istiod does, so workloads can trust meshd's CA. Only the leader writes.

The namespace list and leadership come from outside (the namespace informer and the Lease-based
leader election): `namespaces()` and `is_leader()` are plain callables. `sync()` makes one pass;
`run()` repeats it on `trigger()` (a namespace appeared, leadership was gained, the ConfigMap informer
saw an `istio-ca-root-cert` edited or deleted: `configmap_changed`, repaired within a pass) and every
interval.
Like istiod, it skips the Kubernetes system namespaces kube-public and kube-node-lease.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable
from typing import Any

from kubernetes_asyncio import client
from kubernetes_asyncio.client.exceptions import ApiException

from meshd.clock import Clock, sleep_or_wake

CONFIGMAP = "istio-ca-root-cert"
KEY = "root-cert.pem"
LABELS = {"istio.io/config": "true"}
SKIPPED_NAMESPACES = frozenset({"kube-public", "kube-node-lease"})


class RootCertPublisher:
    def __init__(
        self,
        *,
        api: client.ApiClient,
        root_pem: str,
        namespaces: Callable[[], Iterable[str]],
        is_leader: Callable[[], bool],
        log: logging.Logger,
    ) -> None:
        self._core = client.CoreV1Api(api)
        self._root = root_pem
        self._namespaces = namespaces
        self._is_leader = is_leader
        self._log = log
        self._wake = asyncio.Event()
        self._failing = 0  # namespaces whose publishing failed in the last pass that had failures

    def trigger(self) -> None:
        self._wake.set()

    async def sync(self) -> int:
        """One pass over the namespaces; returns the number of ConfigMaps created or updated. The first
        complete pass without a failure after one with failures is logged (`root_cert_publish_recovered`)."""
        writes = 0
        failed = 0
        for namespace in sorted(set(self._namespaces()) - SKIPPED_NAMESPACES):
            if not self._is_leader():  # leadership can be lost mid-pass: stop writing at once
                return writes
            try:
                writes += await self._publish(namespace)
            except ApiException as exc:
                failed += 1
                self._log.warning(
                    "event=root_cert_publish_failed namespace=%s status=%s reason=%r", namespace, exc.status, exc.reason
                )
            except Exception as exc:  # API server unreachable, timeout...: the next pass tries again
                failed += 1
                self._log.warning(
                    "event=root_cert_publish_failed namespace=%s error_type=%s error=%r",
                    namespace,
                    type(exc).__name__,
                    str(exc),
                )
        if failed:
            self._failing = failed
        elif self._failing:
            self._log.info("event=root_cert_publish_recovered failed_namespaces_before=%d", self._failing)
            self._failing = 0
        return writes

    async def _publish(self, namespace: str) -> int:
        try:
            current = await self._core.read_namespaced_config_map(CONFIGMAP, namespace)
        except ApiException as exc:
            if exc.status != 404:
                raise
            current = None
        if current is None:
            body = client.V1ConfigMap(
                metadata=client.V1ObjectMeta(name=CONFIGMAP, namespace=namespace, labels=dict(LABELS)),
                data={KEY: self._root},
            )
            try:
                await self._core.create_namespaced_config_map(namespace, body)
            except ApiException as exc:
                if exc.status == 409:  # created meanwhile: the next pass checks its content
                    return 0
                raise
            self._log.info("event=root_cert_published namespace=%s action=create", namespace)
            return 1
        if (current.data or {}).get(KEY) == self._root:
            return 0
        current.data = {**(current.data or {}), KEY: self._root}
        # replace carries the resourceVersion we read: a concurrent edit makes it fail (409) and retry later
        await self._core.replace_namespaced_config_map(CONFIGMAP, namespace, current)
        self._log.info("event=root_cert_published namespace=%s action=update", namespace)
        return 1

    async def run(self, *, clock: Clock, interval_s: float = 60.0) -> None:
        while True:
            self._wake.clear()
            await self.sync()
            await sleep_or_wake(clock, interval_s, self._wake)

    def configmap_changed(self, _kind: str, old: dict[str, Any] | None, new: dict[str, Any] | None) -> None:
        """A ConfigMap informer's handler: a pass when a published ConfigMap is edited away from the
        root or deleted."""
        obj = new if new is not None else old
        meta = (obj or {}).get("metadata") or {}
        if meta.get("name") != CONFIGMAP or meta.get("namespace") in SKIPPED_NAMESPACES:
            return
        if new is None or ((new.get("data") or {}).get(KEY)) != self._root:
            self.trigger()
