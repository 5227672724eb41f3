"""meshd's one Kubernetes API client, shared by everything that talks to the cluster: the informers,
leader election, the status writer, the webhook patcher, the CA's TokenReview and Secret store, the
root-cert publisher. Opened on first use (Kubernetes mode: at start-up, fatal if it fails; a kubeconfig
next to `--config-dir`: by the leader duties, retried) and closed once, at shutdown."""

from __future__ import annotations

import asyncio
import pathlib

from kubernetes_asyncio.client import ApiClient

from meshd.kube.client import new_api_client
from meshd.settings import Settings


def wants_leader_duties(settings: Settings) -> bool:
    """Leader election and what only the leader does need a cluster: Kubernetes mode, or a kubeconfig
    given next to a config directory."""
    return settings.leader_election and (settings.config_dir is None or settings.kubeconfig is not None)


class ClusterApi:
    def __init__(self, *, kubeconfig: pathlib.Path | None) -> None:
        self._kubeconfig = kubeconfig
        self._client: ApiClient | None = None
        self._opening = asyncio.Lock()

    async def get(self) -> ApiClient:
        """The client, opened at the first call that succeeds (a failure raises and is tried again next call)."""
        async with self._opening:
            if self._client is None:
                self._client = await new_api_client(self._kubeconfig)
            return self._client

    async def close(self) -> None:
        if self._client is not None:
            client, self._client = self._client, None
            await client.close()
