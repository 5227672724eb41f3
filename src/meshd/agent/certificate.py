"""A workload certificate (key, chain, root) and where it comes from.

`CertificateSource` is the one thing the agent needs from a CA: "give me a fresh certificate".
The production source asks meshd's CA with a CSR (`ca_source.py`); tests may plug in any other.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from typing import Protocol

from cryptography import x509


@dataclass(frozen=True)
class WorkloadCertificate:
    """PEM bytes as served over SDS, plus the leaf's facts the agent schedules and reports on."""

    private_key_pem: bytes
    chain_pem: bytes  # leaf first
    root_pem: bytes
    serial: int
    not_before: datetime.datetime
    not_after: datetime.datetime
    uris: tuple[str, ...]

    @classmethod
    def from_pem(cls, *, private_key_pem: bytes, chain_pem: bytes, root_pem: bytes) -> WorkloadCertificate:
        """Parse the leaf (first certificate of `chain_pem`); ValueError if there is none."""
        chain = x509.load_pem_x509_certificates(chain_pem)
        if not chain:
            raise ValueError("certificate chain is empty")
        x509.load_pem_x509_certificates(root_pem)  # raises on garbage
        leaf = chain[0]
        try:
            san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
            uris = tuple(san.get_values_for_type(x509.UniformResourceIdentifier))
        except x509.ExtensionNotFound:
            uris = ()
        return cls(
            private_key_pem=private_key_pem,
            chain_pem=chain_pem,
            root_pem=root_pem,
            serial=leaf.serial_number,
            not_before=leaf.not_valid_before_utc,
            not_after=leaf.not_valid_after_utc,
            uris=uris,
        )

    def refresh_at(self, *, grace_ratio: float, received_at: datetime.datetime) -> datetime.datetime:
        """When to ask for the next certificate: `grace_ratio` of the way through its useful life, which
        starts when it was received if the CA backdated `not_before` (clock-skew tolerance)."""
        start = max(self.not_before, min(received_at, self.not_after))
        return start + (self.not_after - start) * grace_ratio


class CertificateSource(Protocol):
    """Obtains a new certificate (new key each time); raises on any failure (the caller retries)."""

    async def fetch(self) -> WorkloadCertificate: ...
