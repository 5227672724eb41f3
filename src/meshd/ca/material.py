"""CA key material: the signing certificate and key, the chain above it, the root.

Istio's file layout, used by the file store, the `istio-ca-secret` / `cacerts` Secrets and plugged-in
CAs alike:

    ca-cert.pem     the certificate that signs workload certificates (the root itself, or an intermediate)
    ca-key.pem      its private key
    cert-chain.pem  ca-cert first, then any intermediates, root last (empty for a self-signed root)
    root-cert.pem   the root every workload trusts

Pure: no I/O. Wall time is passed in.
"""

from __future__ import annotations

import datetime
import itertools
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

FILES = ("ca-cert.pem", "ca-key.pem", "cert-chain.pem", "root-cert.pem")
ROOT_TTL = datetime.timedelta(days=3650)

CaKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey


class InvalidCaMaterial(ValueError):
    """The CA files are unusable; the message names the file and the reason."""


@dataclass(frozen=True)
class CaMaterial:
    """The four PEM files, as stored."""

    ca_cert: bytes
    ca_key: bytes
    cert_chain: bytes
    root_cert: bytes

    def as_files(self) -> dict[str, bytes]:
        return dict(zip(FILES, (self.ca_cert, self.ca_key, self.cert_chain, self.root_cert), strict=True))

    @classmethod
    def from_files(cls, files: dict[str, bytes]) -> CaMaterial:
        missing = [name for name in ("ca-cert.pem", "ca-key.pem") if not files.get(name)]
        if missing:
            raise InvalidCaMaterial(f"missing {', '.join(missing)}")
        ca_cert = files["ca-cert.pem"]
        return cls(
            ca_cert=ca_cert,
            ca_key=files["ca-key.pem"],
            cert_chain=files.get("cert-chain.pem", b""),
            root_cert=files.get("root-cert.pem") or ca_cert,
        )


@dataclass(frozen=True)
class SigningCa:
    """Parsed, checked material: what the signer uses."""

    cert: x509.Certificate
    key: CaKey
    intermediates: tuple[x509.Certificate, ...]  # above `cert`, below the root
    root: x509.Certificate

    @property
    def chain_above_leaf(self) -> tuple[x509.Certificate, ...]:
        """What follows a leaf in its chain: the signer, intermediates, root (no duplicate root)."""
        if self.cert == self.root:
            return (self.root,)
        return (self.cert, *self.intermediates, self.root)

    @property
    def not_after(self) -> datetime.datetime:
        """The earliest expiry along the signing chain: no leaf may outlive it."""
        return min(c.not_valid_after_utc for c in (self.cert, *self.intermediates, self.root))

    def root_pem(self) -> str:
        return self.root.public_bytes(serialization.Encoding.PEM).decode()


def _certs(pem: bytes, name: str) -> list[x509.Certificate]:
    if not pem.strip():
        return []
    try:
        return x509.load_pem_x509_certificates(pem)
    except ValueError as exc:
        raise InvalidCaMaterial(f"{name}: not PEM certificates ({exc})") from None


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        return bool(cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
    except x509.ExtensionNotFound:
        return False


def _signed_by(child: x509.Certificate, parent: x509.Certificate) -> bool:
    try:
        child.verify_directly_issued_by(parent)
    except (InvalidSignature, ValueError, TypeError):
        return False
    return True


def load(material: CaMaterial, *, now: datetime.datetime) -> SigningCa:
    """Parse and check: the key matches ca-cert, every certificate is a CA, each one is signed by the
    next up to a self-signed root, and none has expired."""
    signer_list = _certs(material.ca_cert, "ca-cert.pem")
    if not signer_list:
        raise InvalidCaMaterial("ca-cert.pem: no certificate")
    cert = signer_list[0]
    try:
        key = serialization.load_pem_private_key(material.ca_key, password=None)
    except (ValueError, TypeError) as exc:
        raise InvalidCaMaterial(f"ca-key.pem: not an unencrypted PEM private key ({exc})") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
        raise InvalidCaMaterial("ca-key.pem: only RSA and ECDSA CA keys are supported")
    if key.public_key().public_numbers() != cert.public_key().public_numbers():  # type: ignore[union-attr]
        raise InvalidCaMaterial("ca-key.pem does not match ca-cert.pem")
    roots = _certs(material.root_cert, "root-cert.pem")
    root = roots[0] if roots else cert
    chain = [c for c in _certs(material.cert_chain, "cert-chain.pem") if c not in (cert, root)]
    path = [cert, *chain, root] if cert != root else [cert]
    for c in path:
        if not _is_ca(c):
            raise InvalidCaMaterial(f"{c.subject.rfc4514_string()!r} is not a CA certificate (basicConstraints)")
        if c.not_valid_after_utc <= now:
            raise InvalidCaMaterial(f"{c.subject.rfc4514_string()!r} expired at {c.not_valid_after_utc.isoformat()}")
    for child, parent in itertools.pairwise(path):
        if not _signed_by(child, parent):
            raise InvalidCaMaterial(
                f"cert-chain.pem: {child.subject.rfc4514_string()!r} "
                f"is not signed by {parent.subject.rfc4514_string()!r}"
            )
    if not _signed_by(root, root):
        raise InvalidCaMaterial("root-cert.pem: the root is not self-signed")
    return SigningCa(cert=cert, key=key, intermediates=tuple(chain), root=root)


def generate_root(*, now: datetime.datetime, trust_domain: str, ttl: datetime.timedelta = ROOT_TTL) -> CaMaterial:
    """A new self-signed root (ECDSA P-256), Istio's shape: O=<trust domain>, CA:true, keyCertSign+cRLSign."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, trust_domain)])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + ttl)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_pem = cert.public_bytes(serialization.Encoding.PEM)
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return CaMaterial(ca_cert=cert_pem, ca_key=key_pem, cert_chain=b"", root_cert=cert_pem)
