"""meshd's two gRPC servers, each with its own ADS servicer on the one hub:

- plaintext xDS (15010): ADS, and the CA service refusing every CSR with UNAUTHENTICATED;
- the secure port (15012): a TLS front (client certificates optional, verified against the root)
  piping to a gRPC server on a loopback port: CreateCertificate, and ADS with identity checks.
"""

from __future__ import annotations

import logging
import socket
import ssl
from collections.abc import Callable
from dataclasses import dataclass

import grpc

from meshd import __version__
from meshd.ca.auth import CallerAuthenticator
from meshd.ca.renewal import RenewedCertificate
from meshd.ca.server import (
    SERVER_OPTIONS,
    Authorize,
    CertificateService,
    IstioCertificateService,
    PeerCert,
    VerifyNamespace,
    add_ca_service,
    debug_verifier,
    xds_authorizer,
)
from meshd.ca.serving import issue_serving_cert, secure_port_context, serving_sans
from meshd.ca.tls_front import FrontLimits, TlsFront
from meshd.clock import Clock
from meshd.netlimits import ConnectionGate, GatedListener
from meshd.obs.metrics import Metrics
from meshd.settings import Settings
from meshd.wiring.authority import Authority
from meshd.xds.debug_stream import DebugTypes, Resources
from meshd.xds.debug_types import ControlPlane
from meshd.xds.hub import Hub
from meshd.xds.limits import StreamLimits
from meshd.xds.server import AdsServicer, add_to_server


def ads_servicer(
    *,
    settings: Settings,
    hub: Hub,
    metrics: Metrics,
    clock: Clock,
    log: logging.Logger,
    authorize: Authorize | None = None,
    verify_debug: VerifyNamespace | None = None,
    debug_resources: Resources | None = None,
) -> AdsServicer:
    # The secure port's peers are all its TLS front on loopback: counted in all only.
    per_peer = settings.max_xds_streams_per_peer if authorize is None else None
    debug = DebugTypes(
        hub=hub,
        control_plane=ControlPlane(
            identity=settings.leader_identity or socket.gethostname(),
            version=__version__,
            cluster_id=settings.cluster_id,
        ),
        log=log,
        system_namespace=settings.namespace,
        verify=verify_debug,
        resources=debug_resources,
    )
    return AdsServicer(
        hub=hub,
        metrics=metrics,
        clock=clock,
        log=log,
        send_timeout_s=settings.send_timeout_s,
        limits=StreamLimits(max_streams=settings.max_xds_streams, max_per_peer=per_peer),
        authorize=authorize,
        debug=debug,
    )


def plaintext_server(
    *,
    host: str,
    port: int,
    ads: AdsServicer,
    metrics: Metrics,
    log: logging.Logger,
    max_connections: int | None = None,
    reuse_port: bool = False,
) -> tuple[grpc.aio.Server, int]:
    """The plaintext xDS server (not started) and the port it bound. `max_connections`: gRPC closes
    connections over it at accept (gRPC core does not tell us when: no refusal metric on this port).
    `reuse_port`: bound with SO_REUSEPORT (the workers of `--workers N` share the port); else never."""
    cap = [("grpc.max_allowed_incoming_connections", max_connections)] if max_connections else []
    base = [o for o in SERVER_OPTIONS if o[0] != "grpc.so_reuseport"]
    server = grpc.aio.server(options=[*base, *cap, ("grpc.so_reuseport", 1 if reuse_port else 0)])
    add_to_server(server, ads)
    add_ca_service(server, CertificateService(signer=None, authenticator=None, metrics=metrics.ca, log=log))
    return server, server.add_insecure_port(f"{host}:{port}")


@dataclass
class SecurePort:
    server: grpc.aio.Server
    front: TlsFront
    port: int
    authority: Authority
    certificate: RenewedCertificate  # run() keeps it fresh

    @property
    def root_pem(self) -> str:
        return self.authority.root_pem

    async def stop(self) -> None:
        await self.front.stop()
        await self.server.stop(grace=1.0)


def serving_certificate(
    *, settings: Settings, authority: Authority, metrics: Metrics, clock: Clock, log: logging.Logger
) -> RenewedCertificate:
    """meshd's serving certificate for the secure port, issued by `authority`, in the TLS context the
    port's front uses; its run() renews it."""
    sans = serving_sans(settings)
    ttl_s = serving_ttl_s(settings)
    cert = issue_serving_cert(authority.signer, sans=sans, ttl_s=ttl_s)
    return RenewedCertificate(
        server="secure",
        context=secure_port_context(authority.signer, cert=cert),
        current=cert,
        issue=lambda: issue_serving_cert(authority.signer, sans=sans, ttl_s=ttl_s),
        clock=clock,
        wall=authority.wall,
        metrics=metrics.ca,
        log=log,
    )


async def start_secure_port(
    *,
    settings: Settings,
    authority: Authority,
    hub: Hub,
    metrics: Metrics,
    clock: Clock,
    log: logging.Logger,
    debug_resources: Resources | None = None,
) -> SecurePort:
    """Build and start the secure server with meshd's serving certificate from `authority`."""
    certificate = serving_certificate(settings=settings, authority=authority, metrics=metrics, clock=clock, log=log)
    server, front, port = await serve_secure(
        settings=settings,
        context=certificate.context,
        authenticator=authority.authenticator,
        ca_service=lambda peer_cert: CertificateService(
            signer=authority.signer,
            authenticator=authority.authenticator,
            metrics=metrics.ca,
            log=log,
            peer_cert=peer_cert,
        ),
        hub=hub,
        metrics=metrics,
        clock=clock,
        log=log,
        debug_resources=debug_resources,
    )
    log_secure_started(log, port=port, settings=settings, authority=authority)
    return SecurePort(server=server, front=front, port=port, authority=authority, certificate=certificate)


async def serve_secure(
    *,
    settings: Settings,
    context: ssl.SSLContext,
    authenticator: CallerAuthenticator,
    ca_service: Callable[[PeerCert], IstioCertificateService],
    hub: Hub,
    metrics: Metrics,
    clock: Clock,
    log: logging.Logger,
    debug_resources: Resources | None = None,
    reuse_port: bool = False,
    handed_over: bool = False,
) -> tuple[grpc.aio.Server, TlsFront, int]:
    """The secure port, started: the TLS front on `settings.secure_port` (`reuse_port`: bound with
    SO_REUSEPORT, as every worker of `--workers N` binds it with `--worker-placement kernel`;
    `handed_over`: not bound here, the main process accepts and passes the connections, `front.adopt`)
    piping to a gRPC server on loopback that serves the CA (`ca_service`, given the front's verified
    client certificates) and ADS, whose streams must authenticate (`authenticator`). Returns the server,
    the front and the port."""
    server = grpc.aio.server(options=list(SERVER_OPTIONS))
    backend_port = server.add_insecure_port("127.0.0.1:0")  # reachable only through the TLS front
    cap = settings.secure_max_connections
    front = TlsFront(
        context=context,
        listener=connection_gate("secure", cap, metrics=metrics)
        if handed_over
        else gated_listener(
            "secure", settings.secure_host, settings.secure_port, cap, metrics=metrics, log=log, reuse_port=reuse_port
        ),
        backend_port=backend_port,
        log=log,
        limits=FrontLimits(
            handshake_timeout_s=settings.tls_handshake_timeout_s,
            first_request_timeout_s=settings.first_request_timeout_s,
            on_handshake_failed=lambda: metrics.connections.handshake_failures.inc("secure"),
            on_idle_closed=lambda: metrics.connections.idle_closed.inc("secure"),
        ),
    )
    add_ca_service(server, ca_service(front.peer_cert))
    authorize = xds_authorizer(authenticator, peer_cert=front.peer_cert, log=log)
    verify_debug = debug_verifier(authenticator, peer_cert=front.peer_cert, log=log)
    servicer = ads_servicer(
        settings=settings,
        hub=hub,
        metrics=metrics,
        clock=clock,
        log=log,
        authorize=authorize,
        verify_debug=verify_debug,
        debug_resources=debug_resources,
    )
    add_to_server(server, servicer)
    await server.start()
    try:
        port = await front.start()
    except BaseException:
        await server.stop(None)
        raise
    return server, front, settings.secure_port if port is None else port


def log_secure_started(log: logging.Logger, *, port: int, settings: Settings, authority: Authority) -> None:
    """The secure port's start line (served by this process, or by `settings.workers` workers)."""
    log.info(
        "event=secure_server_started port=%d workers=%d ca=%s root_expires=%s sans=%s",
        port,
        settings.workers,
        authority.origin,
        authority.root_expires.isoformat(),
        ",".join(serving_sans(settings)),
    )


def gated_listener(
    name: str,
    host: str,
    port: int,
    max_connections: int,
    *,
    metrics: Metrics,
    log: logging.Logger,
    reuse_port: bool = False,
) -> GatedListener:
    """A listening socket with a connection cap, counted in `metrics` under `name`."""
    listener = GatedListener(
        reuse_port=reuse_port,
        name=name,
        host=host,
        port=port,
        max_connections=max_connections,
        on_refused=lambda: metrics.connections.refused.inc(name),
        on_exhausted=lambda: metrics.connections.exhausted.inc(name),
        log=log,
    )
    metrics.connections.open.labels(name).set_function(lambda: listener.open)
    return listener


def connection_gate(name: str, max_connections: int, *, metrics: Metrics) -> ConnectionGate:
    """A connection cap for connections handed over by another process, counted as `gated_listener`'s."""
    gate = ConnectionGate(
        name=name, max_connections=max_connections, on_refused=lambda: metrics.connections.refused.inc(name)
    )
    metrics.connections.open.labels(name).set_function(lambda: gate.open)
    return gate


def serving_ttl_s(settings: Settings) -> int:
    return settings.serving_cert_ttl_s or settings.ca_max_ttl_s
