"""PEM checks for TLS material meshd hands to Envoy: certificates, private keys and CRLs must parse,
and a certificate's key must be one Envoy loads, so a bad Secret is refused here instead of being
NACKed by Envoy."""

from __future__ import annotations

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat, load_pem_private_key

# What Envoy loads as a certificate's key (checked against `envoy --mode validate`): RSA of at
# least 2048 bits, ECDSA on these curves, Ed25519. Anything else fails the cluster's TLS context.
MIN_RSA_BITS = 2048
EC_CURVES = ("secp256r1", "secp384r1", "secp521r1")


def _public_bytes(key: object) -> bytes:
    return key.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)  # type: ignore[attr-defined, no-any-return]


def _check_key_type(key: object, what: str) -> None:
    if isinstance(key, rsa.RSAPublicKey | rsa.RSAPrivateKey):
        if key.key_size < MIN_RSA_BITS:
            raise ValueError(f"{what}: RSA keys need at least 2048 bits (Envoy's minimum), got {key.key_size}")
    elif isinstance(key, ec.EllipticCurvePublicKey | ec.EllipticCurvePrivateKey):
        if key.curve.name not in EC_CURVES:
            raise ValueError(f"{what}: ECDSA keys must use P-256, P-384 or P-521, got {key.curve.name}")
    elif not isinstance(key, ed25519.Ed25519PublicKey | ed25519.Ed25519PrivateKey):
        raise ValueError(f"{what}: Envoy supports RSA, ECDSA and Ed25519 keys, got {type(key).__name__}")


def certificates(data: bytes, *, what: str) -> list[x509.Certificate]:
    """Every certificate of a PEM bundle (at least one)."""
    try:
        certs = x509.load_pem_x509_certificates(data)
    except ValueError:
        raise ValueError(f"{what}: not a PEM certificate (expected -----BEGIN CERTIFICATE-----)") from None
    return certs


def check_key_pair(cert_pem: bytes, key_pem: bytes, *, cert_field: str, key_field: str) -> None:
    """A certificate chain and its private key, as Envoy loads them for a TLS certificate."""
    leaf = certificates(cert_pem, what=cert_field)[0]
    try:
        key = load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError):
        raise ValueError(f"{key_field}: not an unencrypted PEM private key") from None
    _check_key_type(key, key_field)
    public = leaf.public_key()
    _check_key_type(public, cert_field)
    if _public_bytes(public) != _public_bytes(key.public_key()):
        raise ValueError(f"{key_field}: the private key does not match the certificate in {cert_field}")


def check_crl(data: bytes, *, what: str) -> None:
    blocks = data.split(b"-----END X509 CRL-----")
    found = 0
    for block in blocks[:-1]:
        try:
            x509.load_pem_x509_crl(block + b"-----END X509 CRL-----\n")
        except ValueError:
            raise ValueError(f"{what}: not a PEM certificate revocation list") from None
        found += 1
    if not found:
        raise ValueError(f"{what}: not a PEM certificate revocation list (expected -----BEGIN X509 CRL-----)")
