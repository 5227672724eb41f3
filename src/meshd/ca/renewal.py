"""A serving certificate that renews itself: re-issued by meshd's CA at half its life and loaded into
the same `ssl.SSLContext` the listener uses (OpenSSL copies a context's certificate into each new
connection, so new handshakes get the new certificate; open connections keep theirs). Driven by the
injected Clock; each renewal is logged and counted (`meshd_serving_cert_renewals{server}`), the current
expiry exported (`meshd_serving_cert_expiry_timestamp{server}`). A failed renewal is retried after a
tenth of the remaining life (at least one second) while the current certificate still serves.
"""

from __future__ import annotations

import datetime
import logging
import ssl
from collections.abc import Callable

from meshd.ca.serving import ServingCert
from meshd.ca.signer import CsrRejected, SignerUnavailable, WallClock
from meshd.ca.tls_front import load_chain_pem
from meshd.clock import Clock
from meshd.obs.metrics import CaMetrics

_MIN_WAIT_S = 1.0


class RenewedCertificate:
    def __init__(
        self,
        *,
        server: str,
        context: ssl.SSLContext,
        current: ServingCert,
        issue: Callable[[], ServingCert],
        clock: Clock,
        wall: WallClock,
        metrics: CaMetrics,
        log: logging.Logger,
    ) -> None:
        self.server = server
        self.context = context
        self.current = current
        # called with each renewed certificate (`--workers N`: the workers' secure ports load it too)
        self.on_renewed: list[Callable[[ServingCert], None]] = []
        self._issue = issue
        self._clock, self._wall = clock, wall
        self._metrics, self._log = metrics, log
        self._issued_at = wall()
        metrics.serving_expiry.labels(server).set(current.not_after.timestamp())

    def _remaining(self) -> datetime.timedelta:
        return self.current.not_after - self._wall()

    def next_renewal_in_s(self) -> float:
        """Seconds until half the current certificate's life has passed."""
        life = (self.current.not_after - self._issued_at).total_seconds()
        elapsed = (self._wall() - self._issued_at).total_seconds()
        return max(_MIN_WAIT_S, life / 2 - elapsed)

    def renew(self) -> None:
        """Issue a new certificate and load it; new handshakes use it. Raises on failure."""
        cert = self._issue()
        load_chain_pem(self.context, chain_pem=cert.chain_pem, key_pem=cert.key_pem)
        self.current, self._issued_at = cert, self._wall()
        self._metrics.serving_renewals.inc(self.server)
        self._metrics.serving_expiry.labels(self.server).set(cert.not_after.timestamp())
        self._log.info("event=serving_cert_renewed server=%s expires=%s", self.server, cert.not_after.isoformat())
        for listener in self.on_renewed:
            listener(cert)

    async def run(self) -> None:
        """Until cancelled."""
        wait = self.next_renewal_in_s()
        while True:
            await self._clock.sleep(wait)
            try:
                self.renew()
                wait = self.next_renewal_in_s()
            except (CsrRejected, SignerUnavailable, ssl.SSLError, OSError, ValueError) as exc:
                self._metrics.serving_renewal_failures.inc(self.server)
                wait = max(_MIN_WAIT_S, self._remaining().total_seconds() / 10)
                self._log.error(
                    "event=serving_cert_renewal_failed server=%s error=%r retry_in_s=%.1f expires=%s",
                    self.server,
                    str(exc)[:300],
                    wait,
                    self.current.not_after.isoformat(),
                )
