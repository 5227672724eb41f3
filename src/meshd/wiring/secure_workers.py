"""`meshd serve --workers N` with the CA: the secure port (15012) is served by the worker processes too.

Sidecars installed by the chart (and `istioctl`, and `meshd agent`) dial the secure port, so the workers
serve it as they serve the plaintext one: each binds it with SO_REUSEPORT (the main process reserves the
port), terminates TLS with meshd's serving certificate (issued by the main process, which sends each
renewal) and serves ADS there with the main process's identity rules:

- a client certificate is verified in the worker, against the CA certificate the main process sends;
- a bearer token, and every CSR, is answered by the main process, asked over the control channel: it
  alone holds the CA key, the TokenReview client and the token file. A CSR is counted, logged and
  refused or signed there exactly as one made to the main process (`CertificateService.serve`).
"""

from __future__ import annotations

import logging
import socket
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from meshd._gen.istio.v1.auth import ca_pb2
from meshd.ca.auth import AuthError, CallerAuthenticator, PeerCertVerifier
from meshd.ca.identity import Identity
from meshd.ca.renewal import RenewedCertificate
from meshd.ca.server import CertificateService, IstioCertificateService, PeerCert, peer_of, text_metadata
from meshd.ca.serving import ServingCert
from meshd.ca.signer import utc_now
from meshd.ca.tls_front import TlsFront, load_chain_pem, server_context
from meshd.clock import Clock
from meshd.obs.metrics import Metrics
from meshd.settings import Settings
from meshd.wiring.authority import Authority
from meshd.wiring.grpc_servers import gated_listener, log_secure_started, serve_secure, serving_certificate
from meshd.wiring.secure_handover import receive_connections
from meshd.xds.debug_stream import Resources
from meshd.xds.hub import Hub

if TYPE_CHECKING:
    from meshd.wiring.workers import WorkerPool

Ask = Callable[[str, Any], Awaitable[Any]]  # a question to the main process
CA_QUESTIONS = frozenset({"csr", "token"})


@dataclass(frozen=True)
class SecureMaterial:
    """What a worker needs to serve the secure port (sent over the control channel, mode 0700)."""

    chain_pem: bytes  # meshd's serving certificate chain, without the root
    key_pem: bytes
    root_pem: str  # client certificates are verified against it in the handshake
    issuer_pem: bytes  # the CA certificate that issues workload certificates


def secure_material(authority: Authority, cert: ServingCert) -> SecureMaterial:
    issuer = authority.authenticator.peer.issuer.public_bytes(serialization.Encoding.PEM)
    return SecureMaterial(
        chain_pem=cert.chain_pem, key_pem=cert.key_pem, root_pem=authority.root_pem, issuer_pem=issuer
    )


# --- the main process's side ------------------------------------------------------------------------


def ca_answers(service: CertificateService, authenticator: CallerAuthenticator) -> Ask:
    """How the main process answers a worker's CSR (`("csr", (request bytes, metadata, client
    certificate, peer))` -> (status code name or None, message, chain)) and bearer token (`("token",
    token)` -> ("ok", Identity) or ("error", code, message))."""

    async def answer(name: str, arg: Any) -> Any:
        if name == "csr":
            request_bytes, metadata, peer_cert, peer = arg
            request = ca_pb2.IstioCertificateRequest.FromString(request_bytes)
            code, message, chain = await service.serve(
                request, metadata=list(metadata), peer_cert=lambda: peer_cert, peer=f"{peer} (a worker's)"
            )
            return (code.name if code is not None else None, message, list(chain))
        if name == "token":
            try:
                return ("ok", await authenticator.authenticate_token(arg))
            except AuthError as exc:
                return ("error", exc.code, str(exc))
        raise ValueError(f"unknown question {name!r}")

    return answer


def serve_secure_from_workers(
    pool: WorkerPool, *, settings: Settings, authority: Authority, metrics: Metrics, clock: Clock, log: logging.Logger
) -> RenewedCertificate:
    """Have `pool`'s workers serve the secure port: its material now and after each renewal, and the
    answers to their CSRs and tokens. Returns the serving certificate, whose run() renews it."""
    certificate = serving_certificate(settings=settings, authority=authority, metrics=metrics, clock=clock, log=log)
    service = CertificateService(
        signer=authority.signer, authenticator=authority.authenticator, metrics=metrics.ca, log=log
    )
    if pool.answer is None:
        raise RuntimeError("the worker pool answers no questions")
    pool.answer = with_ca_answers(pool.answer, ca_answers(service, authority.authenticator))
    pool.serve_secure(secure_material(authority, certificate.current))
    certificate.on_renewed.append(lambda cert: pool.serve_secure(secure_material(authority, cert)))
    if pool.hands_over:  # this process accepts the port and hands each connection to a worker
        cap = settings.secure_max_connections
        listener = gated_listener(
            "secure", settings.secure_host, pool.secure_port or 0, cap, metrics=metrics, log=log, reuse_port=True
        )
        pool.hand_over_from(listener, on_dropped=lambda: metrics.connections.refused.inc("secure"))
    log_secure_started(log, port=pool.secure_port or 0, settings=settings, authority=authority)
    return certificate


def with_ca_answers(answer: Ask, ca: Ask) -> Ask:
    """`answer`, with the CA's questions answered by `ca`."""

    async def combined(name: str, arg: Any) -> Any:
        return await (ca if name in CA_QUESTIONS else answer)(name, arg)

    return combined


# --- a worker's side ---------------------------------------------------------------------------------


class RemoteTokens:
    """A worker's TokenAuthenticator: the main process reviews the token."""

    def __init__(self, ask: Ask) -> None:
        self._ask = ask

    async def authenticate(self, token: str) -> Identity:
        reply = await self._ask("token", token)
        if reply[0] == "ok":
            identity: Identity = reply[1]
            return identity
        raise AuthError(reply[1], reply[2])


class RemoteCertificateService(IstioCertificateService):
    """A worker's CreateCertificate: the main process authenticates the caller and signs."""

    def __init__(self, *, ask: Ask, peer_cert: PeerCert) -> None:
        self._ask = ask
        self._peer_cert = peer_cert

    async def CreateCertificate(self, request: Any, context: Any) -> Any:
        try:
            peer_cert = self._peer_cert(context)
        except AuthError as exc:  # a connection that did not come through the TLS front
            await context.abort(grpc.StatusCode[exc.code], str(exc))
        asked = (request.SerializeToString(), text_metadata(context), peer_cert, peer_of(context))
        try:
            code, message, chain = await self._ask("csr", asked)
        except (TimeoutError, RuntimeError, ConnectionError) as exc:  # the main process away or failing
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"the CA did not answer: {type(exc).__name__}")
        if code is not None:
            await context.abort(grpc.StatusCode[code], message)
        return ca_pb2.IstioCertificateResponse(cert_chain=list(chain))


def worker_authenticator(settings: Settings, material: SecureMaterial, ask: Ask) -> CallerAuthenticator:
    issuer = x509.load_pem_x509_certificate(material.issuer_pem)
    return CallerAuthenticator(
        tokens=RemoteTokens(ask),
        peer=PeerCertVerifier(issuer=issuer, trust_domain=settings.trust_domain, wall=utc_now),
        cluster_id=settings.cluster_id,
    )


@dataclass
class WorkerSecurePort:
    server: grpc.aio.Server
    front: TlsFront
    context: ssl.SSLContext
    stop_receiving: Callable[[], None] = lambda: None  # connections handed over by the main process

    def renewed(self, material: SecureMaterial) -> None:
        """The main process renewed meshd's serving certificate: new handshakes get it."""
        load_chain_pem(self.context, chain_pem=material.chain_pem, key_pem=material.key_pem)

    async def stop(self) -> None:
        self.stop_receiving()
        await self.front.stop()
        await self.server.stop(grace=1.0)


async def start_worker_secure_port(
    *,
    settings: Settings,
    material: SecureMaterial,
    hub: Hub,
    metrics: Metrics,
    clock: Clock,
    log: logging.Logger,
    ask: Ask,
    debug_resources: Resources,
    dispatch: socket.socket | None = None,
) -> WorkerSecurePort:
    """The worker's secure port: bound here with SO_REUSEPORT, or (`dispatch`: its end of the pair the
    main process hands connections over, `secure_handover.py`) served from what the main process accepts."""
    context = server_context(key_pem=material.key_pem, chain_pem=material.chain_pem, client_roots_pem=material.root_pem)
    server, front, port = await serve_secure(
        settings=settings,
        context=context,
        authenticator=worker_authenticator(settings, material, ask),
        ca_service=lambda peer_cert: RemoteCertificateService(ask=ask, peer_cert=peer_cert),
        hub=hub,
        metrics=metrics,
        clock=clock,
        log=log,
        debug_resources=debug_resources,
        reuse_port=True,
        handed_over=dispatch is not None,
    )
    if port != settings.secure_port:
        await WorkerSecurePort(server=server, front=front, context=context).stop()
        raise RuntimeError(f"could not bind the secure port {settings.secure_port} (got {port})")
    if dispatch is None:
        return WorkerSecurePort(server=server, front=front, context=context)
    stop = receive_connections(dispatch, front.adopt, log)
    return WorkerSecurePort(server=server, front=front, context=context, stop_receiving=stop)
