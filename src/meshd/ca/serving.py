"""meshd's own serving certificates, issued by its CA: a fresh ECDSA P-256 key each time, the chain
without the root. For the secure port (`secure_port_context`: client certificates optional, verified
against the root) and for the webhook server when no `--webhook-cert` files are given
(`webhook_ssl_context`: no client certificates; the root goes into the webhook configurations' caBundle).
Both are kept fresh by `ca/renewal.py`, which loads a new certificate into the same context."""

from __future__ import annotations

import datetime
import ipaddress
import ssl
from dataclasses import dataclass

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from meshd.ca.signer import Signer
from meshd.ca.tls_front import load_chain_pem, server_context
from meshd.settings import Settings


def serving_sans(settings: Settings) -> list[str]:
    """The names clients dial on the secure port."""
    ns = settings.namespace
    names = [f"meshd.{ns}.svc", f"istiod.{ns}.svc", *settings.secure_sans, *ip_san(settings.secure_host)]
    return list(dict.fromkeys(names))  # each SAN once, in order


def ip_san(host: str) -> list[str]:
    """The address a server listens on, as a SAN, when it is one IP (not a wildcard address or a name):
    clients dialling that IP then verify the certificate without `--secure-san`."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return []
    return [] if address.is_unspecified else [str(address)]


@dataclass(frozen=True)
class ServingCert:
    key_pem: bytes
    chain_pem: bytes  # without the root
    not_after: datetime.datetime


def issue_serving_cert(signer: Signer, *, sans: list[str], ttl_s: int) -> ServingCert:
    """A new key and its certificate chain (without the root) for `sans`."""
    key = ec.generate_private_key(ec.SECP256R1())
    issued = signer.issue_for_key(public_key=key.public_key(), sans=sans, ttl_s=ttl_s)
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    chain_pem = "".join(issued.chain[:-1] if len(issued.chain) > 1 else issued.chain).encode()
    return ServingCert(key_pem=key_pem, chain_pem=chain_pem, not_after=issued.not_after)


def secure_port_context(signer: Signer, *, cert: ServingCert) -> ssl.SSLContext:
    """TLS for the secure port: client certificates optional and verified against the root."""
    return server_context(key_pem=cert.key_pem, chain_pem=cert.chain_pem, client_roots_pem=signer.ca.root_pem())


def webhook_ssl_context(*, cert: ServingCert) -> ssl.SSLContext:
    """An HTTPS server context (TLS 1.2+, no client certificates) with `cert`."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    load_chain_pem(context, chain_pem=cert.chain_pem, key_pem=cert.key_pem)
    return context
