"""KubeRest: a small async REST client that tests use to drive scenarios, against the fake API
server or a real cluster (from a kubeconfig). It is deliberately not meshd's client: meshd's
production code uses kubernetes-asyncio, and tests must not share its bugs."""

from __future__ import annotations

import base64
import json
import pathlib
import ssl
import tempfile
from typing import Any

import aiohttp
import yaml

from tests.kubeapi.kinds import by_kind, collection_path, object_path

Obj = dict[str, Any]


class KubeError(Exception):
    def __init__(self, status: int, body: Any) -> None:
        super().__init__(f"HTTP {status}: {body}")
        self.status = status
        self.body = body


class KubeRest:
    def __init__(self, url: str, *, token: str | None = None, ssl_context: ssl.SSLContext | None = None) -> None:
        self.url = url.rstrip("/")
        self._headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._ssl = ssl_context
        self._session: aiohttp.ClientSession | None = None

    @classmethod
    def from_kubeconfig(cls, path: pathlib.Path) -> KubeRest:
        config = yaml.safe_load(path.read_text())
        context_name = config.get("current-context")
        context = next(c["context"] for c in config["contexts"] if c["name"] == context_name)
        cluster = next(c["cluster"] for c in config["clusters"] if c["name"] == context["cluster"])
        user = next((u["user"] for u in config.get("users", []) if u["name"] == context.get("user")), {}) or {}
        ssl_context: ssl.SSLContext | None = None
        if cluster["server"].startswith("https"):
            ssl_context = ssl.create_default_context()
            if cluster.get("insecure-skip-tls-verify"):
                ssl_context.check_hostname = False
                ssl_context.verify_mode = ssl.CERT_NONE
            elif cluster.get("certificate-authority-data"):
                ssl_context.load_verify_locations(
                    cadata=base64.b64decode(cluster["certificate-authority-data"]).decode()
                )
            elif cluster.get("certificate-authority"):
                ssl_context.load_verify_locations(cafile=cluster["certificate-authority"])
            if user.get("client-certificate-data"):
                with tempfile.TemporaryDirectory() as tmp:
                    cert, key = pathlib.Path(tmp, "c.pem"), pathlib.Path(tmp, "k.pem")
                    cert.write_bytes(base64.b64decode(user["client-certificate-data"]))
                    key.write_bytes(base64.b64decode(user["client-key-data"]))
                    ssl_context.load_cert_chain(cert, key)
            elif user.get("client-certificate"):
                ssl_context.load_cert_chain(user["client-certificate"], user.get("client-key"))
        return cls(cluster["server"], token=user.get("token"), ssl_context=ssl_context)

    async def _request(
        self, method: str, path: str, *, body: Any = None, content_type: str = "application/json"
    ) -> Any:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10))
        headers = dict(self._headers)
        data = None
        if body is not None:
            headers["Content-Type"] = content_type
            data = json.dumps(body)
        async with self._session.request(method, self.url + path, data=data, headers=headers, ssl=self._ssl) as resp:
            payload = await resp.json(content_type=None)
            if resp.status >= 400:
                raise KubeError(resp.status, payload)
            return payload

    @staticmethod
    def _split(obj: Obj) -> tuple[Any, str, str | None, str]:
        kind = by_kind(obj["apiVersion"], obj["kind"])
        version = obj["apiVersion"].rpartition("/")[2]
        meta = obj.get("metadata", {})
        namespace = meta.get("namespace", "default") if kind.namespaced else None
        return kind, version, namespace, meta.get("name", "")

    async def create(self, obj: Obj) -> Obj:
        kind, version, namespace, _ = self._split(obj)
        result: Obj = await self._request("POST", collection_path(kind, version, namespace), body=obj)
        return result

    async def replace(self, obj: Obj, *, subresource: str = "") -> Obj:
        kind, version, namespace, name = self._split(obj)
        result: Obj = await self._request("PUT", object_path(kind, version, namespace, name, subresource), body=obj)
        return result

    async def apply(self, obj: Obj) -> Obj:
        """Create, or replace the current object (taking its resourceVersion).

        A replace can lose a race with meshd's status writer, which bumps the resourceVersion between our read and
        our write: the API server answers 409 Conflict, and we read again and retry, as kubectl does."""
        try:
            return await self.create(obj)
        except KubeError as error:
            if error.status != 409:
                raise
        for attempt in range(10):
            current = await self.get(
                obj["apiVersion"], obj["kind"], obj["metadata"].get("namespace", "default"), obj["metadata"]["name"]
            )
            assert current is not None
            version = current["metadata"]["resourceVersion"]
            try:
                return await self.replace({**obj, "metadata": {**obj["metadata"], "resourceVersion": version}})
            except KubeError as error:
                if error.status != 409 or attempt == 9:
                    raise
        raise AssertionError("unreachable")

    async def patch(
        self, api_version: str, kind_name: str, namespace: str, name: str, patch: Any, *, subresource: str = ""
    ) -> Obj:
        kind = by_kind(api_version, kind_name)
        path = object_path(
            kind, api_version.rpartition("/")[2], namespace if kind.namespaced else None, name, subresource
        )
        result: Obj = await self._request("PATCH", path, body=patch, content_type="application/merge-patch+json")
        return result

    async def get(self, api_version: str, kind_name: str, namespace: str, name: str) -> Obj | None:
        kind = by_kind(api_version, kind_name)
        path = object_path(kind, api_version.rpartition("/")[2], namespace if kind.namespaced else None, name)
        try:
            result: Obj = await self._request("GET", path)
        except KubeError as error:
            if error.status == 404:
                return None
            raise
        return result

    async def list(self, api_version: str, kind_name: str, namespace: str | None = None) -> list[Obj]:
        kind = by_kind(api_version, kind_name)
        result = await self._request("GET", collection_path(kind, api_version.rpartition("/")[2], namespace))
        items: list[Obj] = result["items"]
        return items

    async def delete(
        self, api_version: str, kind_name: str, namespace: str, name: str, *, missing_ok: bool = True
    ) -> None:
        kind = by_kind(api_version, kind_name)
        path = object_path(kind, api_version.rpartition("/")[2], namespace if kind.namespaced else None, name)
        try:
            await self._request("DELETE", path)
        except KubeError as error:
            if not (missing_ok and error.status == 404):
                raise

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
