"""The Lease of leader election, read and written through the Kubernetes API (kubernetes-asyncio)."""

from __future__ import annotations

from typing import Any

from kubernetes_asyncio import client
from kubernetes_asyncio.client.exceptions import ApiException

from meshd.kube.leader import LeaseConflict


class KubeLeaseLock:
    def __init__(self, *, api: client.ApiClient, name: str, namespace: str) -> None:
        self._api = api
        self._coordination = client.CoordinationV1Api(api)
        self._name, self._namespace = name, namespace

    def _plain(self, lease: Any) -> dict[str, Any]:
        plain: dict[str, Any] = self._api.sanitize_for_serialization(lease)
        return plain

    async def get(self) -> dict[str, Any] | None:
        try:
            lease = await self._coordination.read_namespaced_lease(self._name, self._namespace)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
        return self._plain(lease)

    async def create(self, lease: dict[str, Any]) -> dict[str, Any]:
        try:
            return self._plain(await self._coordination.create_namespaced_lease(self._namespace, lease))
        except ApiException as exc:
            if exc.status == 409:
                raise LeaseConflict(self._name) from None
            raise

    async def replace(self, lease: dict[str, Any]) -> dict[str, Any]:
        try:
            return self._plain(await self._coordination.replace_namespaced_lease(self._name, self._namespace, lease))
        except ApiException as exc:
            if exc.status == 409:
                raise LeaseConflict(self._name) from None
            raise
