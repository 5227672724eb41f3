"""One bounded HTTP GET of a key set (or an OpenID discovery document) for the JWKS fetcher.

A RequestAuthentication's `jwksUri` is user input that makes meshd open connections: an address policy
refuses loopback, link-local (169.254.0.0/16, fe80::/10) and cloud metadata addresses unless a setting
allows them. The host is resolved first, every address it resolves to is checked, and the connection is
made only to those checked addresses (no second lookup a DNS answer could change in between). Redirects
are followed by hand (at most 3), each target checked the same way. The response must be 200, is read up
to a size limit, and the whole exchange (lookup included) has a deadline.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from dataclasses import dataclass
from typing import Any
from urllib.parse import urljoin, urlsplit

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult

# Instance metadata services: AWS/GCP/Azure/OpenStack (link-local), AWS ECS task metadata, AWS IPv6,
# Alibaba Cloud. Refused unless link-local addresses are allowed.
METADATA_ADDRESSES = frozenset(
    ipaddress.ip_address(a) for a in ("169.254.169.254", "169.254.170.2", "fd00:ec2::254", "100.100.100.200")
)
MAX_REDIRECTS = 3


class FetchFailed(Exception):
    """The document could not be fetched (the message says why, without the body)."""


class FetchRefused(FetchFailed):
    """The address policy refused to connect (a setting can allow it)."""


@dataclass(frozen=True)
class AddressPolicy:
    allow_loopback: bool = False
    allow_link_local: bool = False  # link-local and cloud metadata addresses

    def refusal(self, address: str) -> str | None:
        """Why meshd must not connect to this address, or None."""
        ip = ipaddress.ip_address(address.split("%", 1)[0])
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        if (ip.is_loopback or ip.is_unspecified) and not self.allow_loopback:
            return "a loopback address (allowed with --jwks-allow-loopback)"
        if ip in METADATA_ADDRESSES and not self.allow_link_local:
            return "a cloud metadata address (allowed with --jwks-allow-link-local)"
        if ip.is_link_local and not self.allow_link_local:
            return "a link-local address (allowed with --jwks-allow-link-local)"
        return None


class _Pinned(AbstractResolver):
    """Answers with the addresses already resolved and checked, never a new lookup."""

    def __init__(self, results: list[ResolveResult]) -> None:
        self._results = results

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        return self._results

    async def close(self) -> None:
        return None


async def _checked_addresses(host: str, port: int, policy: AddressPolicy) -> list[ResolveResult]:
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as err:
        raise FetchFailed(f"cannot resolve {host}: {err}") from None
    results: list[ResolveResult] = []
    for family, _, proto, _, sockaddr in infos:
        address = str(sockaddr[0])
        reason = policy.refusal(address)
        if reason is not None:
            raise FetchRefused(f"{host} is {address}, {reason}")
        results.append(
            ResolveResult(
                hostname=host, host=address, port=port, family=family, proto=proto, flags=socket.AI_NUMERICHOST
            )
        )
    if not results:
        raise FetchFailed(f"{host} resolves to no address")
    return results


async def _get_once(url: str, *, policy: AddressPolicy, max_bytes: int) -> tuple[int, str | None, bytes]:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise FetchFailed(f"not an http(s) URL: {url[:200]}")
    port = parts.port or (443 if parts.scheme == "https" else 80)
    pinned = _Pinned(await _checked_addresses(parts.hostname, port, policy))
    connector = aiohttp.TCPConnector(resolver=pinned, use_dns_cache=False, limit=1)
    headers: dict[str, Any] = {"Accept": "application/json"}
    async with (
        aiohttp.ClientSession(connector=connector, trust_env=False) as session,
        session.get(url, allow_redirects=False, headers=headers) as response,
    ):
        if response.status in (301, 302, 303, 307, 308):
            return response.status, response.headers.get("Location"), b""
        if response.status != 200:
            return response.status, None, b""
        body = bytearray()
        async for chunk in response.content.iter_chunked(64 * 1024):
            body += chunk
            if len(body) > max_bytes:
                raise FetchFailed(f"the response is larger than {max_bytes} bytes")
        return 200, None, bytes(body)


async def fetch_document(url: str, *, policy: AddressPolicy, timeout_s: float, max_bytes: int) -> bytes:
    """The body of a 200 answer to GET `url`. Raises FetchFailed (FetchRefused for the address policy)."""
    try:
        async with asyncio.timeout(timeout_s):
            for _ in range(MAX_REDIRECTS + 1):
                status, location, body = await _get_once(url, policy=policy, max_bytes=max_bytes)
                if status == 200:
                    return body
                if location is None:
                    raise FetchFailed(f"HTTP {status}")
                url = urljoin(url, location)
            raise FetchFailed(f"more than {MAX_REDIRECTS} redirects")
    except TimeoutError:
        raise FetchFailed(f"no answer within {timeout_s:g}s") from None
    except aiohttp.ClientError as err:
        raise FetchFailed(f"{type(err).__name__}: {err}"[:300]) from None
