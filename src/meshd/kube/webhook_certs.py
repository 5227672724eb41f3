"""The webhook's serving certificate from meshd's own CA (Kubernetes mode, no `--webhook-cert` files):
a fresh key, a certificate with the DNS names the API server dials (`<service>.<ns>.svc`, and
`meshd.<ns>.svc` / `istiod.<ns>.svc` as the secure port), chained to the root that meshd then writes
into the webhook configurations' `caBundle` (`kube/webhook_patcher.py`)."""

from __future__ import annotations

import ssl

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from meshd.ca.signer import Signer
from meshd.ca.tls_front import load_chain_pem
from meshd.settings import Settings


def webhook_sans(settings: Settings) -> list[str]:
    ns = settings.namespace
    names = [f"{settings.webhook_service}.{ns}.svc", f"meshd.{ns}.svc", f"istiod.{ns}.svc", *settings.secure_sans]
    return list(dict.fromkeys(names))


def webhook_ssl_context(signer: Signer, *, sans: list[str], ttl_s: int) -> ssl.SSLContext:
    """An HTTPS server context (TLS 1.2+, no client certificates) with a certificate issued by `signer`."""
    key = ec.generate_private_key(ec.SECP256R1())
    issued = signer.issue_for_key(public_key=key.public_key(), sans=sans, ttl_s=ttl_s)
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    chain_pem = "".join(issued.chain[:-1] if len(issued.chain) > 1 else issued.chain).encode()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    load_chain_pem(context, chain_pem=chain_pem, key_pem=key_pem)
    return context
