"""Kubernetes CA store: Secret `istio-ca-secret` (self-signed root) or `cacerts` (plugged-in CA) in
meshd's namespace.

Create-or-adopt: every replica that finds no root generates one and tries to *create* the Secret;
the API server accepts exactly one create, the others get 409 AlreadyExists and read and adopt the
winner's root. A root is never overwritten.
"""

from __future__ import annotations

import base64
from collections.abc import Callable

from kubernetes_asyncio import client
from kubernetes_asyncio.client.exceptions import ApiException

from meshd.ca.material import CaMaterial, InvalidCaMaterial

SELF_SIGNED_SECRET = "istio-ca-secret"
PLUGGED_SECRET = "cacerts"
SECRET_TYPE = "istio.io/ca-root"


def _decode(secret: client.V1Secret, name: str, namespace: str) -> CaMaterial:
    data = secret.data or {}
    try:
        files = {key: base64.b64decode(value) for key, value in data.items()}
        return CaMaterial.from_files(files)
    except (InvalidCaMaterial, ValueError) as exc:
        raise InvalidCaMaterial(f"Secret {namespace}/{name}: {exc}") from None


class SecretStore:
    def __init__(self, *, api: client.ApiClient, namespace: str) -> None:
        self._core = client.CoreV1Api(api)
        self.namespace = namespace

    async def _get(self, name: str) -> client.V1Secret | None:
        try:
            return await self._core.read_namespaced_secret(name, self.namespace)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    async def load_plugged(self) -> CaMaterial | None:
        secret = await self._get(PLUGGED_SECRET)
        return None if secret is None else _decode(secret, PLUGGED_SECRET, self.namespace)

    async def load_or_create(self, *, generate: Callable[[], CaMaterial]) -> tuple[CaMaterial, bool]:
        """The root in `istio-ca-secret`, created if absent. Returns (material, created)."""
        existing = await self._get(SELF_SIGNED_SECRET)
        if existing is not None:
            return _decode(existing, SELF_SIGNED_SECRET, self.namespace), False
        material = generate()
        body = client.V1Secret(
            metadata=client.V1ObjectMeta(name=SELF_SIGNED_SECRET, namespace=self.namespace),
            type=SECRET_TYPE,
            data={key: base64.b64encode(value).decode() for key, value in material.as_files().items()},
        )
        try:
            await self._core.create_namespaced_secret(self.namespace, body)
        except ApiException as exc:
            if exc.status != 409:
                raise
            winner = await self._get(SELF_SIGNED_SECRET)
            if winner is None:
                raise InvalidCaMaterial(
                    f"Secret {self.namespace}/{SELF_SIGNED_SECRET}: create conflicted but the Secret is gone"
                ) from None
            return _decode(winner, SELF_SIGNED_SECRET, self.namespace), False
        return material, True
