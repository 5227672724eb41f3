"""Keeps the workload certificate fresh: fetch, serve, sleep until `grace_ratio` of its lifetime, repeat.

A failed fetch is retried with exponential backoff (capped); meanwhile the current certificate keeps
being served, so a CA outage shorter than the remaining lifetime costs nothing.
"""

from __future__ import annotations

import datetime
import logging
from collections.abc import Callable

from meshd.agent.certificate import CertificateSource, WorkloadCertificate
from meshd.agent.sds import SecretState
from meshd.agent.secrets import build_secrets
from meshd.clock import Clock

# Never ask again sooner than this, even for a certificate already past its refresh time.
_MIN_REFRESH_S = 0.2


def _utcnow() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


class CertificateRotator:
    def __init__(
        self,
        *,
        source: CertificateSource,
        state: SecretState,
        clock: Clock,
        log: logging.Logger,
        grace_ratio: float,
        retry_base_s: float,
        retry_max_s: float,
        wall_clock: Callable[[], datetime.datetime] = _utcnow,
    ) -> None:
        self._source = source
        self._state = state
        self._clock = clock
        self._log = log
        self._grace_ratio = grace_ratio
        self._retry_base_s = retry_base_s
        self._retry_max_s = retry_max_s
        self._wall_clock = wall_clock
        self.current: WorkloadCertificate | None = None
        self.issued = 0
        self.failures = 0

    async def _fetch_with_retry(self) -> WorkloadCertificate:
        delay = self._retry_base_s
        while True:
            try:
                return await self._source.fetch()
            except Exception as err:
                self.failures += 1
                serving = f"{self.current.serial:x}" if self.current else "none"
                self._log.warning(
                    "event=cert_fetch_failed error=%r retry_in_s=%.2f serving_serial=%s", err, delay, serving
                )
                await self._clock.sleep(delay)
                delay = min(delay * 2, self._retry_max_s)

    async def run(self) -> None:
        """Forever: obtain a certificate, publish it to SDS, sleep until its refresh time."""
        while True:
            cert = await self._fetch_with_retry()
            self.current = cert
            self.issued += 1
            await self._state.replace(build_secrets(cert))
            refresh = cert.refresh_at(grace_ratio=self._grace_ratio, received_at=self._wall_clock())
            wait_s = max(_MIN_REFRESH_S, (refresh - self._wall_clock()).total_seconds())
            self._log.info(
                "event=cert_issued serial=%x identity=%s not_after=%s refresh_in_s=%.2f",
                cert.serial,
                ",".join(cert.uris) or "-",
                cert.not_after.isoformat(),
                wait_s,
            )
            await self._clock.sleep(wait_s)
