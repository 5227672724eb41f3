"""Prometheus metrics with Istio's names, registered on a registry passed in (never global).

Istio exposes its counters without the `_total` suffix (`pilot_xds_pushes{type="cds"}`), so
counters here are a small collector that writes exactly those names.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Gauge, Histogram
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector


class IstioCounter(Collector):
    """A labelled counter exposed under its bare name, as Istio's metrics are."""

    def __init__(self, name: str, documentation: str, label: str, registry: CollectorRegistry) -> None:
        self.name, self.documentation, self.label = name, documentation, label
        self.values: dict[str, float] = {}
        registry.register(self)

    def inc(self, value: str, amount: float = 1.0) -> None:
        self.values[value] = self.values.get(value, 0.0) + amount

    def get(self, value: str) -> float:
        return self.values.get(value, 0.0)

    def collect(self) -> Iterator[Metric]:
        # Exposed untyped: prometheus-client would rename a "counter" family to <name>_total.
        metric = Metric(self.name, self.documentation, "unknown")
        for value, count in sorted(self.values.items()):
            metric.add_sample(self.name, {self.label: value}, count)
        yield metric


_LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 3, 5, 10, 20, 30)


class Metrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.xds_connected = Gauge(
            "pilot_xds",
            "Number of endpoints connected to this pilot using XDS.",
            ["version"],
            registry=registry,
        )
        self.xds_pushes = IstioCounter(
            "pilot_xds_pushes", "Pilot build and send errors for lds, rds, cds and eds.", "type", registry
        )
        self.xds_rejects = IstioCounter(
            "pilot_total_xds_rejects",
            "Total number of XDS responses from pilot rejected by proxy.",
            "type",
            registry,
        )
        self.push_time = Histogram(
            "pilot_xds_push_time",
            "Total time in seconds Pilot takes to push lds, rds, cds and eds.",
            ["type"],
            buckets=_LATENCY_BUCKETS,
            registry=registry,
        )
        self.convergence = Histogram(
            "pilot_proxy_convergence_time",
            "Delay in seconds between config change and a proxy receiving all required configuration.",
            buckets=_LATENCY_BUCKETS,
            registry=registry,
        )
        self.config_errors = Gauge(
            "meshd_config_errors",
            "Resources currently rejected by validation or translation (warnings not counted).",
            registry=registry,
        )
        self.secret_refusals = IstioCounter(
            "meshd_xds_secret_refusals",
            "SDS requests for secrets refused (reason: unauthenticated on the plaintext port, or namespace).",
            "reason",
            registry,
        )
        self.xds_streams_refused = IstioCounter(
            "meshd_xds_streams_refused",
            "ADS streams refused with RESOURCE_EXHAUSTED (reason: max_streams, max_streams_per_peer).",
            "reason",
            registry,
        )
        self.build_failures = IstioCounter(
            "meshd_build_failures",
            "Config builds that raised (stage: generation, or one proxy's snapshot); the last good config is kept.",
            "stage",
            registry,
        )
        self.jwks_fetches = IstioCounter(
            "meshd_jwks_fetches",
            "Fetches of RequestAuthentication key sets (result: ok, failed, refused by the address policy).",
            "result",
            registry,
        )
        self.xds_bytes = IstioCounter("pilot_xds_send_bytes", "Bytes of xDS responses sent, by type.", "type", registry)
        self.ca = CaMetrics(registry)
        self.connections = ConnectionMetrics(registry)


class PlainCounter(Collector):
    """An unlabelled counter exposed under its bare name (Istio's `citadel_server_*` counters)."""

    def __init__(self, name: str, documentation: str, registry: CollectorRegistry) -> None:
        self.name, self.documentation, self.value = name, documentation, 0.0
        registry.register(self)

    def inc(self, amount: float = 1.0) -> None:
        self.value += amount

    def collect(self) -> Iterator[Metric]:
        metric = Metric(self.name, self.documentation, "unknown")
        metric.add_sample(self.name, {}, self.value)
        yield metric


class CaMetrics:
    """Istio's CA metrics (`citadel_server_*`); root expiry gauges are computed at scrape time."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.csr_count = PlainCounter(
            "citadel_server_csr_count", "The number of CSRs received by Citadel server.", registry
        )
        self.auth_failures = PlainCounter(
            "citadel_server_authentication_failure_count", "The number of authentication failures.", registry
        )
        self.csr_parsing_errors = PlainCounter(
            "citadel_server_csr_parsing_err_count", "The number of errors occurred when parsing the CSR.", registry
        )
        self.success = PlainCounter(
            "citadel_server_success_cert_issuance_count",
            "The number of certificates issuances that have succeeded.",
            registry,
        )
        self.sign_errors = IstioCounter(
            "citadel_server_csr_sign_err_count",
            "The number of errors occurred when signing the CSR.",
            "error",
            registry,
        )
        self.root_expiry_seconds = Gauge(
            "citadel_server_root_cert_expiry_seconds",
            "The time remaining, in seconds, before the root cert will expire.",
            registry=registry,
        )
        self.root_expiry_timestamp = Gauge(
            "citadel_server_root_cert_expiry_timestamp",
            "The unix timestamp, in seconds, when Citadel root cert will expire.",
            registry=registry,
        )
        self.serving_renewals = IstioCounter(
            "meshd_serving_cert_renewals",
            "meshd's own serving certificates re-issued and swapped in (server: secure, webhook).",
            "server",
            registry,
        )
        self.serving_renewal_failures = IstioCounter(
            "meshd_serving_cert_renewal_failures",
            "Failed renewals of meshd's serving certificates (retried while the current one serves).",
            "server",
            registry,
        )
        self.serving_expiry = Gauge(
            "meshd_serving_cert_expiry_timestamp",
            "The unix timestamp when the serving certificate in use expires.",
            ["server"],
            registry=registry,
        )


class ConnectionMetrics:
    """Connection hygiene on meshd's listeners (listener: secure, webhook, xds)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.refused = IstioCounter(
            "meshd_connections_refused",
            "Connections closed at accept because the listener's connection limit was reached.",
            "listener",
            registry,
        )
        self.exhausted = IstioCounter(
            "meshd_accept_descriptors_exhausted",
            "Accepts that failed for lack of file descriptors (the pending connection is shed).",
            "listener",
            registry,
        )
        self.handshake_failures = IstioCounter(
            "meshd_tls_handshake_failures",
            "TLS handshakes that failed or did not finish within the handshake timeout.",
            "listener",
            registry,
        )
        self.idle_closed = IstioCounter(
            "meshd_connections_closed_idle",
            "TLS connections closed because they sent no request within the first-request timeout.",
            "listener",
            registry,
        )
        self.open = Gauge("meshd_connections_open", "Open connections by listener.", ["listener"], registry=registry)
