"""Certificates from meshd's CA (IstioCertificateService/CreateCertificate over TLS, bearer token)."""

from __future__ import annotations

from meshd.agent.certificate import WorkloadCertificate
from meshd.settings import AgentSettings


class CaCertificateSource:
    def __init__(self, settings: AgentSettings) -> None:
        self._settings = settings

    @classmethod
    def from_settings(cls, settings: AgentSettings) -> CaCertificateSource:
        return cls(settings)

    async def fetch(self) -> WorkloadCertificate:
        raise NotImplementedError("the CA client arrives with the CA branch")
