"""The signing core: CSR + authenticated identity -> workload certificate chain. Pure (cryptography only).

Policy:
- the CSR's signature must verify, and it must not be signed with SHA-1 (or MD5);
- keys: RSA >= 2048 bits (<= 8192) with public exponent 65537, ECDSA P-256 or P-384; anything else is
  refused (a small exponent such as 3 invites the low-exponent attacks on RSA);
- the certificate's only SAN is the caller's SPIFFE id, whatever the CSR asks for; its subject is empty
  (so the SAN extension is critical, RFC 5280 4.2.1.6);
- TTL: 0 -> the default (24 h); above the maximum (90 d) -> refused, however large (istiod's TTLError,
  INVALID_ARGUMENT; it does not cap); a certificate never outlives
  the signing chain: its expiry is **clamped** to the earliest expiry of signer, intermediates and root,
  and the request is refused only when less than `min_ttl` (1 minute) would remain;
- leaf: CA:false, keyUsage digitalSignature + keyEncipherment, EKU serverAuth + clientAuth;
- the chain is leaf first, then the signer and any intermediates, root last.
"""

from __future__ import annotations

import datetime
import ipaddress
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID

from meshd.ca.identity import Identity
from meshd.ca.material import SigningCa

DEFAULT_TTL = datetime.timedelta(hours=24)
MAX_TTL = datetime.timedelta(days=90)
MIN_TTL = datetime.timedelta(minutes=1)
MAX_CSR_BYTES = 64 * 1024
_BACKDATE = datetime.timedelta(minutes=1)  # tolerate small clock skew between meshd and peers
_ALLOWED_CURVES = (ec.SECP256R1, ec.SECP384R1)
_RSA_EXPONENT = 65537
_ALLOWED_HASHES = (hashes.SHA256, hashes.SHA384, hashes.SHA512)

WallClock = Callable[[], datetime.datetime]


def utc_now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


class CsrRejected(ValueError):
    """The request is refused (INVALID_ARGUMENT): the message says why."""


class CsrParseError(CsrRejected):
    """The CSR is not a parsable PEM PKCS#10 request."""


class SignerUnavailable(RuntimeError):
    """The CA cannot issue now (its chain expires too soon): FAILED_PRECONDITION."""


@dataclass(frozen=True)
class Issued:
    chain: tuple[str, ...]  # PEM, leaf first, root last
    not_after: datetime.datetime


def _check_key(key: object) -> None:
    if isinstance(key, rsa.RSAPublicKey):
        if not 2048 <= key.key_size <= 8192:
            raise CsrRejected(f"RSA key of {key.key_size} bits refused: want 2048 to 8192 bits")
        if (exponent := key.public_numbers().e) != _RSA_EXPONENT:
            shown = exponent if exponent.bit_length() <= 64 else f"of {exponent.bit_length()} bits"
            raise CsrRejected(f"RSA public exponent {shown} refused: want {_RSA_EXPONENT}")
        return
    if isinstance(key, ec.EllipticCurvePublicKey):
        if not isinstance(key.curve, _ALLOWED_CURVES):
            raise CsrRejected(f"ECDSA curve {key.curve.name} refused: want P-256 or P-384")
        return
    raise CsrRejected(f"{type(key).__name__.lstrip('_')} keys are refused: want RSA >= 2048 or ECDSA P-256/P-384")


def parse_csr(csr_pem: str | bytes) -> x509.CertificateSigningRequest:
    """Parse and check a CSR: size, PEM, signature algorithm, signature, key type."""
    data = csr_pem.encode() if isinstance(csr_pem, str) else csr_pem
    if not data.strip():
        raise CsrParseError("csr is empty")
    if len(data) > MAX_CSR_BYTES:
        raise CsrParseError(f"csr of {len(data)} bytes refused: at most {MAX_CSR_BYTES}")
    try:
        csr = x509.load_pem_x509_csr(data)
    except ValueError as exc:
        raise CsrParseError(f"csr is not a PEM certificate request: {exc}") from None
    try:
        key = csr.public_key()
    except Exception as exc:
        raise CsrRejected(f"csr public key not supported: {exc}") from None
    _check_key(key)
    try:
        algorithm = csr.signature_hash_algorithm
    except Exception as exc:  # UnsupportedAlgorithm and friends
        raise CsrRejected(f"csr signature algorithm not supported: {exc}") from None
    if not isinstance(algorithm, _ALLOWED_HASHES):
        name = algorithm.name if algorithm is not None else "none"
        raise CsrRejected(f"csr signed with {name} refused: want SHA-256, SHA-384 or SHA-512")
    try:
        valid = csr.is_signature_valid
    except Exception:
        valid = False
    if not valid:
        raise CsrRejected("csr signature does not verify with its public key")
    return csr


def _general_names(names: Sequence[str]) -> list[x509.GeneralName]:
    out: list[x509.GeneralName] = []
    for name in names:
        try:
            out.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            out.append(x509.UniformResourceIdentifier(name) if "://" in name else x509.DNSName(name))
    return out


class Signer:
    """Issues leaf certificates from one SigningCa. Wall time is injected (`wall()` -> aware UTC)."""

    def __init__(
        self,
        *,
        ca: SigningCa,
        trust_domain: str,
        wall: WallClock = utc_now,
        default_ttl: datetime.timedelta = DEFAULT_TTL,
        max_ttl: datetime.timedelta = MAX_TTL,
        min_ttl: datetime.timedelta = MIN_TTL,
    ) -> None:
        self.ca = ca
        self.trust_domain = trust_domain
        self._wall = wall
        self._default_ttl = default_ttl
        self._max_ttl = max_ttl
        self._min_ttl = min_ttl

    def lifetime(self, ttl_s: int) -> tuple[datetime.datetime, datetime.datetime]:
        """(not_before, not_after) for a requested TTL in seconds, per the policy above."""
        if ttl_s < 0:
            raise CsrRejected(f"validity_duration {ttl_s}s refused: must not be negative")
        # Compared as seconds before any timedelta is made: a huge TTL (up to int64) does not fit in one.
        max_s = self._max_ttl.total_seconds()
        ttl = self._default_ttl if ttl_s == 0 else datetime.timedelta(seconds=min(ttl_s, max_s + 1))
        if ttl > self._max_ttl:
            raise CsrRejected(f"validity_duration {ttl_s}s refused: the maximum is {int(max_s)}s")
        now = self._wall()
        not_after = min(now + ttl, self.ca.not_after)
        if self.ca.not_after - now < self._min_ttl:  # the signer's remaining life, not the requested TTL
            raise SignerUnavailable(
                f"the CA chain expires at {self.ca.not_after.isoformat()}: too soon to issue a certificate"
            )
        return now - _BACKDATE, not_after

    def sign_csr(self, *, csr_pem: str | bytes, identity: Identity, ttl_s: int) -> Issued:
        """A workload certificate for `identity` over the CSR's key. Raises CsrRejected / SignerUnavailable."""
        csr = parse_csr(csr_pem)
        not_before, not_after = self.lifetime(ttl_s)
        san = [identity.spiffe_id(self.trust_domain)]
        return self._issue(csr.public_key(), sans=san, not_before=not_before, not_after=not_after)

    def issue_for_key(
        self, *, public_key: ec.EllipticCurvePublicKey | rsa.RSAPublicKey, sans: Sequence[str], ttl_s: int
    ) -> Issued:
        """A certificate for a key meshd holds itself (its serving certificate): DNS/IP/URI SANs as given."""
        _check_key(public_key)
        if not sans:
            raise CsrRejected("a certificate needs at least one SAN")
        not_before, not_after = self.lifetime(ttl_s)
        return self._issue(public_key, sans=sans, not_before=not_before, not_after=not_after)

    def _issue(
        self, public_key: object, *, sans: Sequence[str], not_before: datetime.datetime, not_after: datetime.datetime
    ) -> Issued:
        signer = self.ca.cert
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([]))
            .issuer_name(signer.subject)
            .public_key(public_key)  # type: ignore[arg-type]
            .serial_number(x509.random_serial_number())
            .not_valid_before(not_before)
            .not_valid_after(not_after)
            .add_extension(x509.SubjectAlternativeName(_general_names(sans)), critical=True)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=True,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=False,
                    crl_sign=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(
                x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                critical=False,
            )
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(signer.public_key()),  # type: ignore[arg-type]
                critical=False,
            )
        )
        leaf = builder.sign(self.ca.key, hashes.SHA256())
        chain = (leaf, *self.ca.chain_above_leaf)
        pems = tuple(c.public_bytes(serialization.Encoding.PEM).decode() for c in chain)
        return Issued(chain=pems, not_after=not_after)
