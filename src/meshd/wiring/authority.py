"""meshd's CA, built for `meshd serve`: load or create the root, then the signer and the caller
authenticator.

Standalone (`--config-dir`, no API client): the root is in `--ca-dir` (a plugged-in CA in
`<ca-dir>/cacerts/` wins); bearer tokens come from `--ca-token-file`. Agents trust
`<ca-dir>/root-cert.pem` (or `<ca-dir>/cacerts/root-cert.pem` with a plugged-in CA): `Authority.root_cert_path`.
Kubernetes mode (the shared API client): Secret `cacerts`, else `istio-ca-secret` (create-or-adopt), in
meshd's namespace; bearer tokens are checked with TokenReview.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import pathlib
from dataclasses import dataclass

from kubernetes_asyncio.client import ApiClient

from meshd.ca import file_store
from meshd.ca.auth import (
    CallerAuthenticator,
    PeerCertVerifier,
    TokenAuthenticator,
    TokenFileAuthenticator,
    TokenReviewAuthenticator,
)
from meshd.ca.material import CaMaterial, SigningCa, generate_root, load
from meshd.ca.secret_store import SecretStore
from meshd.ca.signer import Signer, WallClock
from meshd.obs.metrics import Metrics
from meshd.settings import Settings


@dataclass(frozen=True)
class Authority:
    signer: Signer
    authenticator: CallerAuthenticator
    root_pem: str
    origin: str  # where the root came from: a directory or a Secret
    root_expires: datetime.datetime
    root_cert_path: pathlib.Path | None  # standalone: the file agents trust
    wall: WallClock  # the time certificates are issued against


async def _load_material(
    settings: Settings, *, api: ApiClient | None, wall: WallClock, log: logging.Logger
) -> tuple[CaMaterial, str]:
    """(material, where it came from)."""

    def generate() -> CaMaterial:
        return generate_root(now=wall(), trust_domain=settings.trust_domain)

    if api is None:
        plugged = await asyncio.to_thread(file_store.load_plugged, settings.ca_dir)
        if plugged is not None:
            return plugged, str(settings.ca_dir / file_store.PLUGGED_DIR)
        material, created = await asyncio.to_thread(file_store.load_or_create, settings.ca_dir, generate=generate)
        log.info("event=ca_root source=file dir=%s created=%s", settings.ca_dir, created)
        return material, str(settings.ca_dir)
    store = SecretStore(api=api, namespace=settings.namespace)
    plugged = await store.load_plugged()
    if plugged is not None:
        return plugged, f"Secret {settings.namespace}/cacerts"
    material, created = await store.load_or_create(generate=generate)
    log.info("event=ca_root source=secret namespace=%s created=%s", settings.namespace, created)
    return material, f"Secret {settings.namespace}/istio-ca-secret"


def _token_authenticator(settings: Settings, api: ApiClient | None) -> TokenAuthenticator | None:
    if api is not None:
        return TokenReviewAuthenticator(api=api)
    if settings.ca_token_file is not None:
        return TokenFileAuthenticator.from_file(settings.ca_token_file)
    return None


def _watch_root_expiry(metrics: Metrics, ca: SigningCa, wall: WallClock) -> None:
    expiry = ca.root.not_valid_after_utc
    metrics.ca.root_expiry_timestamp.set(expiry.timestamp())
    metrics.ca.root_expiry_seconds.set_function(lambda: (expiry - wall()).total_seconds())


async def load_authority(
    *, settings: Settings, api: ApiClient | None, metrics: Metrics, wall: WallClock, log: logging.Logger
) -> Authority:
    """`api`: Kubernetes mode (Secrets, TokenReview); None: standalone (files). Raises on an unusable CA."""
    material, origin = await _load_material(settings, api=api, wall=wall, log=log)
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
        peer=PeerCertVerifier(issuer=ca.cert, trust_domain=settings.trust_domain, wall=wall),
        cluster_id=settings.cluster_id,
    )
    _watch_root_expiry(metrics, ca, wall)
    return Authority(
        signer=signer,
        authenticator=authenticator,
        root_pem=ca.root_pem(),
        origin=origin,
        root_expires=ca.root.not_valid_after_utc,
        root_cert_path=pathlib.Path(origin) / "root-cert.pem" if api is None else None,
        wall=wall,
    )
