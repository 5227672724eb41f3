"""Certificates from meshd's CA: a fresh ECDSA P-256 key and CSR each time, sent to
`IstioCertificateService/CreateCertificate` over TLS (verified with the configured root, meshd's name
checked) with `authorization: Bearer <token>`. The token file is re-read at every request (projected
tokens rotate); the root file is the trust anchor served as `ROOTCA`."""

from __future__ import annotations

import asyncio
import pathlib

from meshd.agent.ca_client import generate_csr, request_certificate
from meshd.agent.certificate import WorkloadCertificate
from meshd.settings import AgentSettings


def _read(path: pathlib.Path) -> bytes:
    return path.read_bytes()


class CaCertificateSource:
    def __init__(
        self,
        *,
        address: str,
        root_cert: pathlib.Path,
        token_file: pathlib.Path | None,
        ttl_s: int,
        server_name: str | None,
        identity: str,
    ) -> None:
        self._address = address
        self._root_cert = root_cert
        self._token_file = token_file
        self._ttl_s = ttl_s
        self._server_name = server_name
        self._identity = identity

    @classmethod
    def from_settings(cls, settings: AgentSettings) -> CaCertificateSource:
        if settings.root_cert is None:
            raise ValueError("meshd agent: --root-cert is required to reach the CA over TLS")
        workdir = settings.workdir
        return cls(
            address=settings.ca_address or settings.xds_address,
            root_cert=workdir / settings.root_cert,
            token_file=workdir / settings.token_file if settings.token_file else None,
            ttl_s=settings.cert_ttl_s,
            server_name=settings.xds_server_name,
            identity=f"spiffe://{settings.trust_domain}/ns/{settings.namespace}/sa/{settings.service_account}",
        )

    async def fetch(self) -> WorkloadCertificate:
        root = await asyncio.to_thread(_read, self._root_cert)
        token = None
        if self._token_file is not None:
            token = (await asyncio.to_thread(_read, self._token_file)).decode().strip()
        key_pem, csr_pem = await asyncio.to_thread(generate_csr, identity=self._identity)
        chain = await request_certificate(
            address=self._address,
            root_cert_pem=root,
            token=token,
            csr_pem=csr_pem,
            ttl_s=self._ttl_s,
            server_name=self._server_name,
        )
        if not chain:
            raise ValueError("CA returned an empty certificate chain")
        # leaf and intermediates; the root is served separately (ROOTCA) from the configured anchor
        served = chain[:-1] if len(chain) > 1 else chain
        return WorkloadCertificate.from_pem(
            private_key_pem=key_pem.encode(),
            chain_pem="".join(pem if pem.endswith("\n") else pem + "\n" for pem in served).encode(),
            root_pem=root,
        )
