"""meshd's two gRPC servers, each with its own ADS servicer on the one hub:

- plaintext xDS (15010): ADS, and the CA service refusing every CSR with UNAUTHENTICATED;
- the secure port (15012): a TLS front (client certificates optional, verified against the root)
  piping to a gRPC server on a loopback port: CreateCertificate, and ADS with identity checks.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import grpc

from meshd.ca.server import SERVER_OPTIONS, Authorize, CertificateService, add_ca_service, xds_authorizer
from meshd.ca.serving import secure_port_context, serving_sans
from meshd.ca.tls_front import TlsFront
from meshd.clock import Clock
from meshd.obs.metrics import Metrics
from meshd.settings import Settings
from meshd.wiring.authority import Authority
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
) -> AdsServicer:
    # The secure port's peers are all its TLS front on loopback: counted in all only.
    per_peer = settings.max_xds_streams_per_peer if authorize is None else None
    return AdsServicer(
        hub=hub,
        metrics=metrics,
        clock=clock,
        log=log,
        send_timeout_s=settings.send_timeout_s,
        limits=StreamLimits(max_streams=settings.max_xds_streams, max_per_peer=per_peer),
        authorize=authorize,
    )


def plaintext_server(
    *, host: str, port: int, ads: AdsServicer, metrics: Metrics, log: logging.Logger
) -> tuple[grpc.aio.Server, int]:
    """The plaintext xDS server (not started) and the port it bound."""
    server = grpc.aio.server(options=list(SERVER_OPTIONS))
    add_to_server(server, ads)
    add_ca_service(server, CertificateService(signer=None, authenticator=None, metrics=metrics.ca, log=log))
    return server, server.add_insecure_port(f"{host}:{port}")


@dataclass
class SecurePort:
    server: grpc.aio.Server
    front: TlsFront
    port: int
    authority: Authority

    @property
    def root_pem(self) -> str:
        return self.authority.root_pem

    async def stop(self) -> None:
        await self.front.stop()
        await self.server.stop(grace=1.0)


async def start_secure_port(
    *,
    settings: Settings,
    authority: Authority,
    hub: Hub,
    metrics: Metrics,
    clock: Clock,
    log: logging.Logger,
) -> SecurePort:
    """Build and start the secure server with meshd's serving certificate from `authority`."""
    sans = serving_sans(settings)
    context = secure_port_context(authority.signer, sans=sans, ttl_s=settings.ca_max_ttl_s)
    server = grpc.aio.server(options=list(SERVER_OPTIONS))
    backend_port = server.add_insecure_port("127.0.0.1:0")  # reachable only through the TLS front
    front = TlsFront(
        context=context, host=settings.secure_host, port=settings.secure_port, backend_port=backend_port, log=log
    )
    service = CertificateService(
        signer=authority.signer,
        authenticator=authority.authenticator,
        metrics=metrics.ca,
        log=log,
        peer_cert=front.peer_cert,
    )
    add_ca_service(server, service)
    authorize = xds_authorizer(authority.authenticator, peer_cert=front.peer_cert, log=log)
    add_to_server(
        server, ads_servicer(settings=settings, hub=hub, metrics=metrics, clock=clock, log=log, authorize=authorize)
    )
    await server.start()
    try:
        port = await front.start()
    except BaseException:
        await server.stop(None)
        raise
    log.info(
        "event=secure_server_started port=%d ca=%s root_expires=%s sans=%s",
        port,
        authority.origin,
        authority.root_expires.isoformat(),
        ",".join(sans),
    )
    return SecurePort(server=server, front=front, port=port, authority=authority)
