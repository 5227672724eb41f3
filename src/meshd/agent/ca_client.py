"""A small async client of meshd's CA (what the node agent uses): make a key and CSR, send it over TLS
with a bearer token (or a client certificate), get the chain back.

    key_pem, csr_pem = generate_csr()
    chain = await request_certificate(address="127.0.0.1:15012", root_cert_pem=root, token=tok,
                                      csr_pem=csr_pem, ttl_s=3600)
    # chain[0] is the leaf, chain[-1] the root
"""

from __future__ import annotations

from typing import Literal

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from meshd._gen.istio.v1.auth import ca_pb2, ca_pb2_grpc

KeyType = Literal["ec", "rsa"]


def generate_csr(*, key_type: KeyType = "ec", identity: str | None = None) -> tuple[str, str]:
    """(private key PEM, CSR PEM). ECDSA P-256 by default, or RSA 2048. `identity` (a SPIFFE id) is put
    in the CSR's SAN as Istio's agent does; meshd ignores it and uses the caller's identity."""
    key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
    if key_type == "ec":
        key = ec.generate_private_key(ec.SECP256R1())
    elif key_type == "rsa":
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    else:
        raise ValueError(f"key_type {key_type!r}: want 'ec' or 'rsa'")
    builder = x509.CertificateSigningRequestBuilder().subject_name(x509.Name([]))
    if identity:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(identity)]), critical=True
        )
    csr = builder.sign(key, hashes.SHA256())
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return key_pem.decode(), csr.public_bytes(serialization.Encoding.PEM).decode()


def secure_channel(
    *,
    address: str,
    root_cert_pem: str | bytes,
    client_cert: tuple[str | bytes, str | bytes] | None = None,
    server_name: str | None = None,
) -> grpc.aio.Channel:
    """A TLS channel to meshd's secure port. `client_cert` is (chain PEM, key PEM) for mTLS;
    `server_name` overrides the name checked against meshd's certificate (default: the host dialled)."""

    def as_bytes(value: str | bytes) -> bytes:
        return value.encode() if isinstance(value, str) else value

    credentials = grpc.ssl_channel_credentials(
        root_certificates=as_bytes(root_cert_pem),
        private_key=as_bytes(client_cert[1]) if client_cert else None,
        certificate_chain=as_bytes(client_cert[0]) if client_cert else None,
    )
    options = [("grpc.ssl_target_name_override", server_name)] if server_name else []
    return grpc.aio.secure_channel(address, credentials, options=options)


async def request_certificate(
    *,
    address: str,
    root_cert_pem: str | bytes,
    token: str | None,
    csr_pem: str,
    ttl_s: int,
    client_cert: tuple[str | bytes, str | bytes] | None = None,
    server_name: str | None = None,
    timeout_s: float = 10.0,
) -> list[str]:
    """The signed chain (PEM, leaf first, root last). Raises grpc.aio.AioRpcError on refusal."""
    metadata = (("authorization", f"Bearer {token}"),) if token else ()
    async with secure_channel(
        address=address, root_cert_pem=root_cert_pem, client_cert=client_cert, server_name=server_name
    ) as channel:
        stub = ca_pb2_grpc.IstioCertificateServiceStub(channel)
        request = ca_pb2.IstioCertificateRequest(csr=csr_pem, validity_duration=ttl_s)
        response = await stub.CreateCertificate(request, metadata=metadata, timeout=timeout_s)
        return list(response.cert_chain)
