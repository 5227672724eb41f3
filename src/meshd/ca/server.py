"""The CA's gRPC edge: `istio.v1.auth.IstioCertificateService/CreateCertificate`, and the TLS server on the
secure port (15012) that hosts it together with ADS.

- secure port: TLS with meshd's own serving certificate (issued by its CA); callers authenticate with
  a client certificate from this CA or a bearer token (auth.py). ADS streams there carry an identity
  too: a proxy may only claim a node in its own namespace (`xds_authorizer`).
- plaintext port (15010): the CA service is registered but refuses every CSR with UNAUTHENTICATED.
- requests above 4 MiB are refused by gRPC itself (RESOURCE_EXHAUSTED) before any handler runs.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import grpc

from meshd._gen.istio.v1.auth import ca_pb2, ca_pb2_grpc
from meshd.ca.auth import AuthError, CallerAuthenticator, unauthenticated
from meshd.ca.identity import Identity
from meshd.ca.signer import CsrParseError, CsrRejected, Signer, SignerUnavailable
from meshd.obs.logsafe import quoted
from meshd.obs.metrics import CaMetrics
from meshd.translate.proxy import Proxy

MAX_MESSAGE_BYTES = 4 * 1024 * 1024
# Every gRPC server of meshd (plaintext xDS, secure port). HTTP/2: at most 128 concurrent streams per
# connection (Envoy opens one ADS stream per connection). gRPC core cancels calls the application has not
# taken yet beyond `max_pending_requests`: at its default (1,000 soft / 3,000 hard) a cold storm of 2,000
# proxies lost 177-254 streams to CANCELLED (each proxy then reconnects after a backoff; `make bench
# BENCH_ARGS="--peer istiod --peer-cells 1000/2000/sidecar/meshd"`), none at 5,000 / 10,000. Its bound on
# RST_STREAM floods (CVE-2023-44487) is kept: an HTTP/2 rapid reset of 300,000 streams
# (`benchmarks/rapid_reset.py`) grew RSS by 40 MB at the defaults, 41 MB at 5,000 / 10,000 (issue 20 had
# seen a 20,000 limit grow memory faster, before the shared push slot and stream limits were fixed).
SERVER_OPTIONS: tuple[tuple[str, Any], ...] = (
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.so_reuseport", 0),
    ("grpc.max_concurrent_streams", 128),
    ("grpc.server.max_pending_requests", 5_000),
    ("grpc.server.max_pending_requests_hard_limit", 10_000),
)

Verdict = tuple[grpc.StatusCode, str] | None
# For ADS on the secure port: the caller's verified identity, or (code, message) to refuse the stream.
Authorize = Callable[[Any, Proxy], Awaitable[Identity | tuple[grpc.StatusCode, str]]]
# The caller's verified client certificate (PEM) or None; raises AuthError for an unknown connection.
PeerCert = Callable[[Any], bytes | None]


def text_metadata(context: Any) -> list[tuple[str, str]]:
    pairs: list[tuple[str, str]] = []
    for item in context.invocation_metadata() or ():
        key, value = item[0], item[1]
        if isinstance(value, bytes):  # "-bin" headers carry no identity we accept; keep the key visible
            value = ""
        pairs.append((str(key), str(value)))
    return pairs


def peer_of(context: Any) -> str:
    try:
        return str(context.peer())
    except Exception:
        return "?"


class IstioCertificateService(ca_pb2_grpc.IstioCertificateServiceServicer):  # type: ignore[misc]
    """What serves CreateCertificate (here, or in a worker process: `wiring/secure_workers.py`)."""


class CertificateService(IstioCertificateService):
    """CreateCertificate. With `authenticator=None` (the plaintext port) every request is refused."""

    def __init__(
        self,
        *,
        signer: Signer | None,
        authenticator: CallerAuthenticator | None,
        metrics: CaMetrics,
        log: logging.Logger,
        peer_cert: PeerCert | None = None,
    ) -> None:
        self._signer = signer
        self._auth = authenticator
        self._peer_cert = peer_cert
        self._metrics = metrics
        self._log = log

    async def CreateCertificate(self, request: Any, context: Any) -> Any:
        code, message, chain = await self.serve(
            request,
            metadata=text_metadata(context),
            peer_cert=lambda: self._peer_cert_of(context),
            peer=peer_of(context),
        )
        if code is not None:
            await context.abort(code, message)
        return ca_pb2.IstioCertificateResponse(cert_chain=list(chain))

    def _peer_cert_of(self, context: Any) -> bytes | None:
        if self._peer_cert is None:  # not behind the TLS front
            raise unauthenticated("certificates are only issued over TLS on the secure port")
        return self._peer_cert(context)

    async def serve(
        self, request: Any, *, metadata: list[tuple[str, str]], peer_cert: Callable[[], bytes | None], peer: str
    ) -> tuple[grpc.StatusCode | None, str, Sequence[str]]:
        """One CSR, counted and logged: (None, "", chain) or the status to refuse it with. Also how a
        worker process's secure port has a CSR answered (`wiring/secure_workers.py`)."""
        self._metrics.csr_count.inc()
        code, message, chain = await self._handle(request, metadata=metadata, peer_cert=peer_cert, peer=peer)
        if code is not None:
            self._log.warning("event=csr_refused code=%s peer=%s reason=%r", code.name, peer, message)
        return code, message, chain

    async def _handle(
        self, request: Any, *, metadata: list[tuple[str, str]], peer_cert: Callable[[], bytes | None], peer: str
    ) -> tuple[grpc.StatusCode | None, str, Sequence[str]]:
        if self._auth is None or self._signer is None:
            self._metrics.auth_failures.inc()
            return grpc.StatusCode.UNAUTHENTICATED, "certificates are only issued over TLS on the secure port", ()
        keys = list(request.metadata.fields.keys()) if request.HasField("metadata") else []
        try:
            identity = await self._auth.authenticate(
                metadata=metadata, peer_cert_pem=peer_cert(), request_metadata_keys=keys
            )
        except AuthError as exc:
            self._metrics.auth_failures.inc()
            return grpc.StatusCode[exc.code], str(exc), ()
        except Exception as exc:  # a TokenReview transport failure, ...: never crash, never issue
            self._metrics.auth_failures.inc()
            self._log.exception("event=csr_auth_error peer=%s", peer)
            return grpc.StatusCode.UNAUTHENTICATED, f"authentication failed: {type(exc).__name__}", ()
        try:
            issued = self._signer.sign_csr(csr_pem=request.csr, identity=identity, ttl_s=int(request.validity_duration))
        except CsrParseError as exc:
            self._metrics.csr_parsing_errors.inc()
            return grpc.StatusCode.INVALID_ARGUMENT, str(exc), ()
        except CsrRejected as exc:
            self._metrics.sign_errors.inc("CSR_REJECTED")
            return grpc.StatusCode.INVALID_ARGUMENT, str(exc), ()
        except SignerUnavailable as exc:
            self._metrics.sign_errors.inc("CA_UNAVAILABLE")
            return grpc.StatusCode.FAILED_PRECONDITION, str(exc), ()
        self._metrics.success.inc()
        self._log.info(
            "event=cert_issued identity=%s not_after=%s peer=%s",
            identity.spiffe_id(self._signer.trust_domain),
            issued.not_after.isoformat(),
            peer,
        )
        return None, "", issued.chain


VerifyNamespace = Callable[[Any], Awaitable["str | tuple[grpc.StatusCode, str]"]]


def xds_authorizer(authenticator: CallerAuthenticator, *, peer_cert: PeerCert, log: logging.Logger) -> Authorize:
    """For ADS on the secure port: the stream's identity (client cert or bearer token) must be in the
    namespace the node id claims; otherwise PERMISSION_DENIED (UNAUTHENTICATED without identity).
    Returns the verified identity (the ADS servicer serves secrets of that namespace only)."""

    async def authorize(context: Any, proxy: Proxy) -> Identity | tuple[grpc.StatusCode, str]:
        try:
            identity = await authenticator.authenticate(
                metadata=text_metadata(context), peer_cert_pem=peer_cert(context)
            )
        except AuthError as exc:
            return grpc.StatusCode[exc.code], str(exc)
        except Exception as exc:
            log.exception("event=xds_auth_error proxy=%s", quoted(proxy.node_id))
            return grpc.StatusCode.UNAUTHENTICATED, f"authentication failed: {type(exc).__name__}"
        if identity.namespace != proxy.namespace:
            return (
                grpc.StatusCode.PERMISSION_DENIED,
                f"identity in namespace {identity.namespace!r} may not connect as a proxy in namespace "
                f"{proxy.namespace!r} ({quoted(proxy.node_id)})",
            )
        return identity

    return authorize


def debug_verifier(authenticator: CallerAuthenticator, *, peer_cert: PeerCert, log: logging.Logger) -> VerifyNamespace:
    """For Istio's debug types on the secure port: the caller's verified namespace (client cert or bearer
    token), or why there is none."""

    async def verify(context: Any) -> str | tuple[grpc.StatusCode, str]:
        try:
            identity = await authenticator.authenticate(
                metadata=text_metadata(context), peer_cert_pem=peer_cert(context)
            )
        except AuthError as exc:
            return grpc.StatusCode[exc.code], str(exc)
        except Exception as exc:
            log.exception("event=xds_debug_auth_error")
            return grpc.StatusCode.UNAUTHENTICATED, f"authentication failed: {type(exc).__name__}"
        return identity.namespace

    return verify


def add_ca_service(server: grpc.aio.Server, service: IstioCertificateService) -> None:
    ca_pb2_grpc.add_IstioCertificateServiceServicer_to_server(service, server)
