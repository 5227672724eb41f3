"""A test CA issuing SPIFFE workload certificates with a chosen lifetime, as a CertificateSource."""

from __future__ import annotations

import datetime

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from meshd.agent.certificate import WorkloadCertificate


class WorkloadCa:
    def __init__(self) -> None:
        self._key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "meshd test workload CA")])
        now = datetime.datetime.now(datetime.UTC)
        self._name = name
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(self._key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=365))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
            .sign(self._key, hashes.SHA256())
        )
        self.root_pem = cert.public_bytes(serialization.Encoding.PEM)

    def issue(self, *, spiffe: str, ttl_s: float) -> WorkloadCertificate:
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC).replace(microsecond=0)
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([]))
            .issuer_name(self._name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now)
            .not_valid_after(now + datetime.timedelta(seconds=ttl_s))
            .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(spiffe)]), critical=True)
            .add_extension(
                x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                critical=False,
            )
            .sign(self._key, hashes.SHA256())
        )
        return WorkloadCertificate.from_pem(
            private_key_pem=key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            ),
            chain_pem=cert.public_bytes(serialization.Encoding.PEM),
            root_pem=self.root_pem,
        )


class LocalCaSource:
    """CertificateSource over a WorkloadCa; `fail_next` makes the next N fetches raise (CA outage)."""

    def __init__(self, ca: WorkloadCa, *, spiffe: str, ttl_s: float) -> None:
        self.ca, self.spiffe, self.ttl_s = ca, spiffe, ttl_s
        self.fail_next = 0
        self.calls = 0

    async def fetch(self) -> WorkloadCertificate:
        self.calls += 1
        if self.fail_next > 0:
            self.fail_next -= 1
            raise ConnectionError("test CA unreachable")
        return self.ca.issue(spiffe=self.spiffe, ttl_s=self.ttl_s)
