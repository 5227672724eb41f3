"""The leader duty that keeps every Gateway's generated objects (`kube/gateway_deploy.py`) in the cluster.

- Applied by server-side apply (field manager `meshd`): a listener removed from the Gateway removes its
  Service port, and fields others own (an HPA's `replicas`, a LoadBalancer's allocations) are left alone.
- An object of the same name that this Gateway does not own is never taken over: it is logged
  (`event=gateway_deploy_conflict`) and left as it is.
- A pass applies only what changed since the last pass that applied it; every `interval_s` a full pass
  applies everything again (repairs hand edits and deletions) and deletes the objects meshd manages
  (`gateway.istio.io/managed`) that no Gateway asks for any more (a Gateway deleted while no leader ran,
  switched to manual deployment or to another class). Kubernetes' garbage collector deletes a Gateway's
  objects with it (owner references).
- Only the leader writes; leadership lost mid-pass stops writing at once.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from typing import Any

from kubernetes_asyncio import client
from kubernetes_asyncio.client.exceptions import ApiException

from meshd.clock import Clock, sleep_or_wake
from meshd.kube.gateway_deploy import KINDS, MANAGED_LABEL, DeployRefusal, GatewayDeployment

FIELD_MANAGER = "meshd"
APPLY = "application/apply-patch+yaml"
ObjectKey = tuple[str, str, str]  # kind, namespace, name


class GatewayDeployer:
    def __init__(
        self,
        *,
        api: client.ApiClient,
        plan: Callable[[], tuple[list[GatewayDeployment], list[DeployRefusal]]],
        managed_values: tuple[str, ...],
        is_leader: Callable[[], bool],
        clock: Clock,
        log: logging.Logger,
        interval_s: float = 60.0,
    ) -> None:
        self._core = client.CoreV1Api(api)
        self._apps = client.AppsV1Api(api)
        self._plan = plan
        self._managed_values = managed_values
        self._is_leader = is_leader
        self._log = log
        self._clock = clock
        self._interval_s = interval_s
        self._wake = asyncio.Event()
        self._full_next = True  # the first pass, and the first after leadership is gained, is a full one
        self._applied: dict[ObjectKey, str] = {}  # what the last successful apply of each object sent
        self._refused: set[tuple[str, str, str]] = set()  # logged once per reason

    def trigger(self) -> None:
        self._wake.set()

    def leadership_changed(self, leading: bool) -> None:
        if leading:
            self._full_next = True
            self._wake.set()

    async def sync(self, *, full: bool = False) -> int:
        """One pass; returns the number of objects applied or deleted."""
        deployments, refusals = self._plan()
        for refusal in refusals:
            marker = (refusal.namespace, refusal.gateway, refusal.reason)
            if marker not in self._refused:
                self._refused.add(marker)
                self._log.warning(
                    "event=gateway_deploy_refused gateway=%s/%s reason=%r",
                    refusal.namespace,
                    refusal.gateway,
                    refusal.reason,
                )
        if full:
            self._applied.clear()
        writes = 0
        wanted: set[ObjectKey] = set()
        for deployment in deployments:
            for body in deployment.objects:
                key = (body["kind"], deployment.namespace, deployment.name)
                wanted.add(key)
                text = json.dumps(body, sort_keys=True)
                if self._applied.get(key) == text:
                    continue
                if not self._is_leader():
                    return writes
                try:
                    if await self._apply(key, body, owner_uid=deployment.uid):
                        writes += 1
                        self._applied[key] = text
                except Exception as exc:  # the API refused or is away: the next pass tries again
                    self._failed("apply", key, exc)
        for key in [k for k in self._applied if k not in wanted]:
            del self._applied[key]
            writes += await self._delete(key)
        if full:
            for key in await self._managed_objects():
                if key not in wanted and self._is_leader():
                    writes += await self._delete(key)
        return writes

    async def _apply(self, key: ObjectKey, body: dict[str, Any], *, owner_uid: str) -> bool:
        kind, ns, name = key
        owners = await self._owners(kind, ns, name)
        if owners is not None and owner_uid not in owners:
            self._log.warning(
                "event=gateway_deploy_conflict object=%s/%s/%s reason=%r",
                kind,
                ns,
                name,
                "exists and is not owned by its Gateway: left as it is",
            )
            return False
        patch = {"field_manager": FIELD_MANAGER, "force": True, "_content_type": APPLY}
        if kind == "ServiceAccount":
            await self._core.patch_namespaced_service_account(name, ns, body, **patch)
        elif kind == "Service":
            await self._core.patch_namespaced_service(name, ns, body, **patch)
        else:
            await self._apps.patch_namespaced_deployment(name, ns, body, **patch)
        self._log.info("event=gateway_deployed object=%s/%s/%s", kind, ns, name)
        return True

    async def _owners(self, kind: str, ns: str, name: str) -> set[str] | None:
        """The uids owning the object, or None if there is no such object."""
        read = {
            "ServiceAccount": self._core.read_namespaced_service_account,
            "Service": self._core.read_namespaced_service,
            "Deployment": self._apps.read_namespaced_deployment,
        }[kind]
        try:
            obj = await read(name, ns)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
        return {str(ref.uid) for ref in (obj.metadata.owner_references or [])}

    async def _delete(self, key: ObjectKey) -> int:
        kind, ns, name = key
        delete = {
            "ServiceAccount": self._core.delete_namespaced_service_account,
            "Service": self._core.delete_namespaced_service,
            "Deployment": self._apps.delete_namespaced_deployment,
        }[kind]
        try:
            await delete(name, ns)
        except ApiException as exc:
            if exc.status == 404:
                return 0
            self._failed("delete", key, exc)
            return 0
        except Exception as exc:
            self._failed("delete", key, exc)
            return 0
        self._log.info("event=gateway_undeployed object=%s/%s/%s", kind, ns, name)
        return 1

    async def _managed_objects(self) -> list[ObjectKey]:
        """Every object meshd's controllers manage, whatever Gateway asked for it."""
        selector = f"{MANAGED_LABEL} in ({','.join(self._managed_values)})"
        listers = {
            "ServiceAccount": self._core.list_service_account_for_all_namespaces,
            "Service": self._core.list_service_for_all_namespaces,
            "Deployment": self._apps.list_deployment_for_all_namespaces,
        }
        found: list[ObjectKey] = []
        for kind in KINDS:
            try:
                listed = await listers[kind](label_selector=selector)
            except Exception as exc:
                self._failed("list", (kind, "", ""), exc)
                continue
            found += [(kind, item.metadata.namespace, item.metadata.name) for item in listed.items]
        return found

    def _failed(self, action: str, key: ObjectKey, exc: Exception) -> None:
        status = exc.status if isinstance(exc, ApiException) else None
        self._log.warning(
            "event=gateway_deploy_failed action=%s object=%s/%s/%s status=%s error=%r",
            action,
            *key,
            status,
            str(exc)[:300],
        )

    async def run(self) -> None:
        while True:
            self._wake.clear()
            if self._is_leader():
                full, self._full_next = self._full_next, False
                await self.sync(full=full)
            await sleep_or_wake(self._clock, self._interval_s, self._wake)
            if not self._wake.is_set():
                self._full_next = True  # the interval passed: a full pass
