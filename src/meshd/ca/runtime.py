"""Wiring of the CA into `meshd serve`: load or create the root, build the signer and the caller
authenticator, issue meshd's serving certificate, and run the TLS gRPC server on the secure port
(CreateCertificate + ADS with identity checks). The plaintext xDS server gets a CA service that
refuses every CSR.

Standalone (`--config-dir`): the root is in `--ca-dir` (a plugged-in CA in `<ca-dir>/cacerts/` wins);
bearer tokens come from `--ca-token-file`. Agents trust `<ca-dir>/root-cert.pem` (or
`<ca-dir>/cacerts/root-cert.pem` with a plugged-in CA): `Security.root_cert_path`.
Kubernetes mode: Secret `cacerts`, else `istio-ca-secret` (create-or-adopt), in meshd's namespace;
bearer tokens are checked with TokenReview.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import pathlib
import ssl
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import grpc
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from meshd.ca import file_store
from meshd.ca.auth import CallerAuthenticator, PeerCertVerifier, TokenAuthenticator, TokenFileAuthenticator
from meshd.ca.material import CaMaterial, SigningCa, generate_root, load
from meshd.ca.publisher import RootCertPublisher
from meshd.ca.server import SERVER_OPTIONS, CertificateService, add_ca_service, xds_authorizer
from meshd.ca.signer import Signer, WallClock, utc_now
from meshd.ca.tls_front import TlsFront, server_context
from meshd.clock import Clock
from meshd.obs.metrics import Metrics
from meshd.settings import Settings
from meshd.xds.hub import Hub
from meshd.xds.server import AdsServicer, add_to_server


@dataclass
class Security:
    signer: Signer
    authenticator: CallerAuthenticator
    server: grpc.aio.Server
    front: TlsFront
    port: int
    root_pem: str
    root_cert_path: pathlib.Path | None  # standalone: the file agents trust
    api: Any = None  # the Kubernetes ApiClient, when one was opened

    def root_publisher(
        self, *, namespaces: Callable[[], Iterable[str]], is_leader: Callable[[], bool], log: logging.Logger
    ) -> RootCertPublisher:
        """Kubernetes mode: the `istio-ca-root-cert` publisher over this CA's root (run it with `.run(clock=...)`
        and `.trigger()` it when a namespace appears or leadership is gained)."""
        if self.api is None:
            raise RuntimeError("the root ConfigMaps are published in Kubernetes mode only")
        return RootCertPublisher(
            api=self.api, root_pem=self.root_pem, namespaces=namespaces, is_leader=is_leader, log=log
        )

    async def stop(self) -> None:
        await self.front.stop()
        await self.server.stop(grace=1.0)
        if self.api is not None:
            await self.api.close()


def serving_sans(settings: Settings) -> list[str]:
    ns = settings.namespace
    return [f"meshd.{ns}.svc", f"istiod.{ns}.svc", *settings.secure_sans]


def register_plaintext(server: grpc.aio.Server, *, metrics: Metrics, log: logging.Logger) -> None:
    """The CA service on the plaintext port: present, refusing every CSR with UNAUTHENTICATED."""
    add_ca_service(server, CertificateService(signer=None, authenticator=None, metrics=metrics.ca, log=log))


async def _load_material(settings: Settings, *, wall: WallClock, log: logging.Logger) -> tuple[CaMaterial, str, Any]:
    """(material, where it came from, api client or None)."""

    def generate() -> CaMaterial:
        return generate_root(now=wall(), trust_domain=settings.trust_domain)

    if settings.config_dir is not None:
        plugged = await asyncio.to_thread(file_store.load_plugged, settings.ca_dir)
        if plugged is not None:
            return plugged, str(settings.ca_dir / file_store.PLUGGED_DIR), None
        material, created = await asyncio.to_thread(file_store.load_or_create, settings.ca_dir, generate=generate)
        log.info("event=ca_root source=file dir=%s created=%s", settings.ca_dir, created)
        return material, str(settings.ca_dir), None
    from meshd.ca.secret_store import SecretStore
    from meshd.kube.client import new_api_client

    api = await new_api_client(settings.kubeconfig)
    try:
        store = SecretStore(api=api, namespace=settings.namespace)
        plugged = await store.load_plugged()
        if plugged is not None:
            return plugged, f"Secret {settings.namespace}/cacerts", api
        material, created = await store.load_or_create(generate=generate)
        log.info("event=ca_root source=secret namespace=%s created=%s", settings.namespace, created)
        return material, f"Secret {settings.namespace}/istio-ca-secret", api
    except BaseException:
        await api.close()
        raise


def _token_authenticator(settings: Settings, api: Any) -> TokenAuthenticator | None:
    if api is not None:
        from meshd.ca.auth import TokenReviewAuthenticator

        return TokenReviewAuthenticator(api=api)
    if settings.ca_token_file is not None:
        return TokenFileAuthenticator.from_file(settings.ca_token_file)
    return None


def _watch_root_expiry(metrics: Metrics, ca: SigningCa, wall: WallClock) -> None:
    expiry = ca.root.not_valid_after_utc
    metrics.ca.root_expiry_timestamp.set(expiry.timestamp())
    metrics.ca.root_expiry_seconds.set_function(lambda: (expiry - wall()).total_seconds())


def serving_context(signer: Signer, *, sans: list[str], ttl_s: int) -> ssl.SSLContext:
    """TLS for the secure port: meshd's own certificate (a fresh key, issued by its CA), client
    certificates optional and verified against the root."""
    key = ec.generate_private_key(ec.SECP256R1())
    issued = signer.issue_for_key(public_key=key.public_key(), sans=sans, ttl_s=ttl_s)
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    chain_pem = "".join(issued.chain[:-1] if len(issued.chain) > 1 else issued.chain).encode()
    return server_context(key_pem=key_pem, chain_pem=chain_pem, client_roots_pem=signer.ca.root_pem())


async def start_security(
    *,
    settings: Settings,
    hub: Hub,
    metrics: Metrics,
    clock: Clock,
    log: logging.Logger,
    wall: WallClock = utc_now,
) -> Security:
    """Build and start the secure server. Raises on an unusable CA (meshd must not run half-secured)."""
    material, origin, api = await _load_material(settings, wall=wall, log=log)
    try:
        ca = load(material, now=wall())
        signer = Signer(
            ca=ca,
            trust_domain=settings.trust_domain,
            wall=wall,
            default_ttl=datetime.timedelta(seconds=settings.ca_default_ttl_s),
            max_ttl=datetime.timedelta(seconds=settings.ca_max_ttl_s),
        )
        authenticator = CallerAuthenticator(
            tokens=_token_authenticator(settings, api),
            peer=PeerCertVerifier(ca=ca, trust_domain=settings.trust_domain, wall=wall),
            cluster_id=settings.cluster_id,
        )
        _watch_root_expiry(metrics, ca, wall)
        context = serving_context(signer, sans=serving_sans(settings), ttl_s=settings.ca_max_ttl_s)
        server = grpc.aio.server(options=list(SERVER_OPTIONS))
        backend_port = server.add_insecure_port("127.0.0.1:0")  # reachable only through the TLS front
        front = TlsFront(
            context=context, host=settings.secure_host, port=settings.secure_port, backend_port=backend_port, log=log
        )
        service = CertificateService(
            signer=signer, authenticator=authenticator, metrics=metrics.ca, log=log, peer_cert=front.peer_cert
        )
        add_ca_service(server, service)
        ads = AdsServicer(
            hub=hub,
            metrics=metrics,
            clock=clock,
            log=log,
            send_timeout_s=settings.send_timeout_s,
            max_concurrent_pushes=settings.max_concurrent_pushes,
            authorize=xds_authorizer(authenticator, peer_cert=front.peer_cert, log=log),
        )
        add_to_server(server, ads)
        await server.start()
        try:
            port = await front.start()
        except BaseException:
            await server.stop(None)
            raise
    except BaseException:
        if api is not None:
            await api.close()
        raise
    root_path = None
    if settings.config_dir is not None:
        root_path = pathlib.Path(origin) / "root-cert.pem"
    log.info(
        "event=secure_server_started port=%d ca=%s root_expires=%s sans=%s",
        port,
        origin,
        ca.root.not_valid_after_utc.isoformat(),
        ",".join(serving_sans(settings)),
    )
    return Security(
        signer=signer,
        authenticator=authenticator,
        server=server,
        front=front,
        port=port,
        root_pem=ca.root_pem(),
        root_cert_path=root_path,
        api=api,
    )
