"""Test helpers for the CA: CSRs of every kind, including ones `cryptography` refuses to make
(SHA-1 signatures, broken signatures), assembled by hand in DER."""

from __future__ import annotations

import base64

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

_ECDSA_WITH_SHA1 = bytes.fromhex("06072a8648ce3d0401")  # OID 1.2.840.10045.4.1


def _der_len(n: int) -> bytes:
    if n < 0x80:
        return bytes([n])
    body = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(body)]) + body


def _tlv(tag: int, body: bytes) -> bytes:
    return bytes([tag]) + _der_len(len(body)) + body


def _pem(der: bytes) -> str:
    b64 = base64.encodebytes(der).decode().replace("\n", "")
    lines = [b64[i : i + 64] for i in range(0, len(b64), 64)]
    return "-----BEGIN CERTIFICATE REQUEST-----\n" + "\n".join(lines) + "\n-----END CERTIFICATE REQUEST-----\n"


def csr_for(key: object, *, sans: tuple[str, ...] = (), algorithm: hashes.HashAlgorithm | None = None) -> str:
    builder = x509.CertificateSigningRequestBuilder().subject_name(x509.Name([]))
    if sans:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(s) for s in sans]), critical=False
        )
    csr = builder.sign(key, algorithm if algorithm is not None else hashes.SHA256())  # type: ignore[arg-type]
    return csr.public_bytes(serialization.Encoding.PEM).decode()


def ec_csr(curve: ec.EllipticCurve | None = None, *, sans: tuple[str, ...] = ()) -> str:
    return csr_for(ec.generate_private_key(curve or ec.SECP256R1()), sans=sans)


def rsa_csr(bits: int, *, exponent: int = 65537) -> str:
    return csr_for(rsa.generate_private_key(public_exponent=exponent, key_size=bits))


def sha1_csr() -> str:
    """An ECDSA P-256 CSR signed with ecdsa-with-SHA1 (valid signature, weak hash)."""
    key = ec.generate_private_key(ec.SECP256R1())
    tbs = x509.load_pem_x509_csr(csr_for(key).encode()).tbs_certrequest_bytes
    signature = key.sign(tbs, ec.ECDSA(hashes.SHA1()))
    algorithm = _tlv(0x30, _ECDSA_WITH_SHA1)
    return _pem(_tlv(0x30, tbs + algorithm + _tlv(0x03, b"\x00" + signature)))


def bad_signature_csr() -> str:
    """A well-formed CSR whose signature does not verify: signed by another key than the one it carries."""
    good = x509.load_pem_x509_csr(ec_csr().encode())
    other = ec.generate_private_key(ec.SECP256R1())
    signature = other.sign(good.tbs_certrequest_bytes, ec.ECDSA(hashes.SHA256()))
    algorithm = _tlv(0x30, bytes.fromhex("06082a8648ce3d040302"))  # ecdsa-with-SHA256
    return _pem(_tlv(0x30, good.tbs_certrequest_bytes + algorithm + _tlv(0x03, b"\x00" + signature)))
