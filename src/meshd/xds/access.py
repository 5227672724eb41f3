"""Who may be served what on an ADS stream.

credentialName Secrets (SDS resources carrying private keys) are read from the proxy's own namespace
(translate/secrets.py, Istio's rule for sidecars and gateways). They are served only on a stream
whose caller was verified (the secure port: client certificate or token) to be in that namespace. The
plaintext port verifies nobody, so a stream there is never served a secret, whatever node it claims.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, NamedTuple, Protocol

import grpc

from meshd.translate.proxy import Proxy
from meshd.xds.resource import SECRET

# Type URLs served only to a verified caller of the proxy's namespace.
PROTECTED_TYPES = frozenset({SECRET})


class Caller(Protocol):
    """A stream's verified identity (the CA's Identity satisfies it)."""

    @property
    def namespace(self) -> str: ...


Refusal = tuple[grpc.StatusCode, str]
# Admit a stream claiming `proxy`: its verified caller, or why not (the stream is then aborted).
Authorize = Callable[[Any, Proxy], Awaitable["Caller | Refusal"]]


class SecretRefusal(NamedTuple):
    reason: str  # the metric label: "unauthenticated" or "namespace"
    message: str


def secret_refusal(*, verified_namespace: str | None, proxy: Proxy) -> SecretRefusal | None:
    """Why a stream may not be served SDS secrets (None: it may)."""
    if verified_namespace is None:
        return SecretRefusal(
            "unauthenticated", "no verified identity (plaintext port): secrets are served only on the secure port"
        )
    if verified_namespace != proxy.namespace:
        return SecretRefusal(
            "namespace",
            f"verified identity in namespace {verified_namespace!r} is not in the proxy's namespace "
            f"{proxy.namespace!r}",
        )
    return None
