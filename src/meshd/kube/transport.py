"""The HTTP calls a reflector makes, on a kubernetes-asyncio ApiClient (its configuration, auth and
connection pool): a JSON GET and a watch stream read line by line. Errors come back as KubeApiError
with the HTTP status and Retry-After, whatever layer produced them."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Sequence
from typing import Any, Protocol

import aiohttp
from kubernetes_asyncio.client import ApiClient
from kubernetes_asyncio.client.exceptions import ApiException

Query = Sequence[tuple[str, str]]
MAX_LINE = 64 * 1024 * 1024  # one watch event; anything longer is garbage


class KubeApiError(Exception):
    """A failed API call. status 0: no HTTP answer (connection refused, reset, garbage)."""

    def __init__(self, status: int, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(f"{status} {message}" if status else message)
        self.status = status
        self.retry_after = retry_after

    @property
    def expired(self) -> bool:
        return self.status == 410


def retry_after_of(value: str | None) -> float | None:
    try:
        return max(0.0, float(value)) if value else None
    except ValueError:
        return None


def from_api_exception(exc: ApiException) -> KubeApiError:
    headers: dict[str, str] = dict(exc.headers or {})
    return KubeApiError(exc.status or 0, str(exc.reason), retry_after=retry_after_of(headers.get("Retry-After")))


class Transport(Protocol):
    async def get_json(self, path: str, query: Query = ()) -> dict[str, Any]: ...

    def stream(self, path: str, query: Query, *, read_timeout_s: float) -> AsyncIterator[bytes]: ...


class ApiClientTransport:
    """Transport over a kubernetes-asyncio ApiClient (kubeconfig or in-cluster configuration)."""

    def __init__(self, client: ApiClient, *, request_timeout_s: float = 30.0) -> None:
        self._client = client
        self._timeout = request_timeout_s

    async def _open(self, path: str, query: Query, limits: aiohttp.ClientTimeout) -> Any:
        try:
            resp = await self._client.call_api(
                path,
                "GET",
                query_params=list(query),
                header_params={"Accept": "application/json"},
                auth_settings=["BearerToken"],
                _preload_content=False,
                _request_timeout=limits,
            )
        except ApiException as exc:
            raise from_api_exception(exc) from None
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise KubeApiError(0, f"{type(exc).__name__}: {exc}") from None
        if not 200 <= resp.status <= 299:
            try:
                body = await resp.text()
            except (aiohttp.ClientError, OSError, TimeoutError):
                body = ""
            retry_after = retry_after_of(resp.headers.get("Retry-After"))
            resp.release()
            raise KubeApiError(resp.status, _status_message(body) or str(resp.reason), retry_after=retry_after)
        return resp

    async def get_json(self, path: str, query: Query = ()) -> dict[str, Any]:
        resp = await self._open(path, query, aiohttp.ClientTimeout(total=self._timeout))
        try:
            data = json.loads(await resp.read())
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise KubeApiError(0, f"{type(exc).__name__}: {exc}") from None
        except ValueError as exc:
            raise KubeApiError(0, f"response is not JSON: {exc}") from None
        finally:
            resp.release()
        if not isinstance(data, dict):
            raise KubeApiError(0, "response is not a JSON object")
        return data

    async def stream(self, path: str, query: Query, *, read_timeout_s: float) -> AsyncIterator[bytes]:
        """Complete lines of a chunked response (without the newline). A stream that ends inside a
        line raises KubeApiError: the event it carried is lost, so the caller must resume."""
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=self._timeout, sock_read=read_timeout_s)
        resp = await self._open(path, query, timeout)
        buffer = b""
        try:
            async for chunk in resp.content.iter_any():
                buffer += chunk
                *lines, buffer = buffer.split(b"\n")
                for line in lines:
                    if line.strip():
                        yield line
                if len(buffer) > MAX_LINE:
                    raise KubeApiError(0, "watch event larger than the limit")
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise KubeApiError(0, f"watch stream broken: {type(exc).__name__}: {exc}") from None
        finally:
            resp.release()
        if buffer.strip():
            raise KubeApiError(0, "watch stream cut in the middle of an event")


def _status_message(body: str) -> str:
    try:
        data = json.loads(body)
    except ValueError:
        return body[:200]
    return str(data.get("message", "")) if isinstance(data, dict) else ""
