"""The leader keeps meshd's webhook configurations pointing at meshd: every webhook of the
MutatingWebhookConfiguration (injection) and the ValidatingWebhookConfiguration gets meshd's root as
its `caBundle`, and once meshd is ready the validating webhooks' `failurePolicy` goes from `Ignore`
to `Fail` (as istiod does: the chart installs them `Ignore` so a cluster without a ready meshd is not
blocked). A configuration that does not exist is skipped (the chart may not install it) and looked up
again at the next pass; each write is a JSON patch guarded by a `test` of the webhook's name.
"""

from __future__ import annotations

import asyncio
import base64
import logging
from collections.abc import Callable
from typing import Any

from kubernetes_asyncio import client
from kubernetes_asyncio.client.exceptions import ApiException

from meshd.clock import Clock, sleep_or_wake


class WebhookConfigPatcher:
    def __init__(
        self,
        *,
        api: client.ApiClient,
        root_pem: str,
        mutating: str | None,
        validating: str | None,
        is_leader: Callable[[], bool],
        is_ready: Callable[[], bool],
        log: logging.Logger,
    ) -> None:
        self._admission = client.AdmissionregistrationV1Api(api)
        self._bundle = base64.b64encode(root_pem.encode()).decode()
        self._mutating, self._validating = mutating, validating
        self._is_leader, self._is_ready = is_leader, is_ready
        self._log = log
        self._wake = asyncio.Event()

    def trigger(self) -> None:
        self._wake.set()

    def _ops(self, webhooks: list[Any], *, fail: bool) -> list[dict[str, Any]]:
        ops: list[dict[str, Any]] = []
        for index, hook in enumerate(webhooks):
            changes: list[dict[str, Any]] = []
            if hook.client_config is not None and hook.client_config.ca_bundle != self._bundle:
                changes.append({"op": "add", "path": f"/webhooks/{index}/clientConfig/caBundle", "value": self._bundle})
            if fail and hook.failure_policy != "Fail":
                changes.append({"op": "add", "path": f"/webhooks/{index}/failurePolicy", "value": "Fail"})
            if changes:
                ops += [{"op": "test", "path": f"/webhooks/{index}/name", "value": hook.name}, *changes]
        return ops

    async def _patch_one(self, kind: str, name: str, *, fail: bool) -> bool:
        if kind == "mutating":
            read, patch = (
                self._admission.read_mutating_webhook_configuration,
                self._admission.patch_mutating_webhook_configuration,
            )
        else:
            read, patch = (
                self._admission.read_validating_webhook_configuration,
                self._admission.patch_validating_webhook_configuration,
            )
        try:
            current = await read(name)
        except ApiException as exc:
            if exc.status == 404:
                self._log.info("event=webhook_config_absent kind=%s name=%s", kind, name)
                return False
            raise
        ops = self._ops(current.webhooks or [], fail=fail)
        if not ops:
            return False
        await patch(name, ops)
        self._log.info(
            "event=webhook_config_patched kind=%s name=%s ca_bundle=set failure_policy=%s",
            kind,
            name,
            "Fail" if fail else "unchanged",
        )
        return True

    async def sync(self) -> int:
        """One pass; returns the number of configurations written."""
        writes = 0
        ready = self._is_ready()
        for kind, name, fail in (("mutating", self._mutating, False), ("validating", self._validating, ready)):
            if not name or not self._is_leader():
                continue
            try:
                writes += await self._patch_one(kind, name, fail=fail)
            except ApiException as exc:  # a conflict or a failed test: the next pass reads again
                self._log.warning(
                    "event=webhook_config_patch_failed kind=%s name=%s status=%s reason=%r",
                    kind,
                    name,
                    exc.status,
                    exc.reason,
                )
            except Exception as exc:  # API server unreachable, timeout...: the next pass tries again
                self._log.warning(
                    "event=webhook_config_patch_failed kind=%s name=%s error_type=%s error=%r",
                    kind,
                    name,
                    type(exc).__name__,
                    str(exc),
                )
        return writes

    async def run(self, *, clock: Clock, interval_s: float = 30.0, ready_poll_s: float = 1.0) -> None:
        """Sync on trigger and every interval (repairs edits); until meshd is ready, check every ready_poll_s."""
        while True:
            self._wake.clear()
            await self.sync()
            await sleep_or_wake(clock, interval_s if self._is_ready() else ready_poll_s, self._wake)
