"""The SDS resources a node agent serves, named as Istio's: `default` (the workload's certificate chain
and private key) and `ROOTCA` (the root it trusts). Pure: certificate in, Secret protos out."""

from __future__ import annotations

import hashlib

from envoy.config.core.v3 import base_pb2
from envoy.extensions.transport_sockets.tls.v3 import common_pb2, secret_pb2

from meshd.agent.certificate import WorkloadCertificate

DEFAULT = "default"
ROOTCA = "ROOTCA"
SECRET_TYPE = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"


def build_secrets(cert: WorkloadCertificate) -> dict[str, secret_pb2.Secret]:
    """`default` and `ROOTCA` for one certificate, inline bytes (nothing touches the disk)."""
    default = secret_pb2.Secret(
        name=DEFAULT,
        tls_certificate=common_pb2.TlsCertificate(
            certificate_chain=base_pb2.DataSource(inline_bytes=cert.chain_pem),
            private_key=base_pb2.DataSource(inline_bytes=cert.private_key_pem),
        ),
    )
    root = secret_pb2.Secret(
        name=ROOTCA,
        validation_context=common_pb2.CertificateValidationContext(
            trusted_ca=base_pb2.DataSource(inline_bytes=cert.root_pem)
        ),
    )
    return {DEFAULT: default, ROOTCA: root}


def secret_version(secret: secret_pb2.Secret) -> str:
    """A content hash: the same secret always has the same version (delta SDS per-resource versions)."""
    return hashlib.sha256(secret.SerializeToString(deterministic=True)).hexdigest()[:16]
