"""Istio's metrics merging at injection (pure): Prometheus is pointed at the agent's merged endpoint (15020
`/stats/prometheus`: Envoy's, the agent's and the application's metrics), and the application's own
`prometheus.io/*` annotations move to the agent in `ISTIO_PROMETHEUS_ANNOTATIONS`. A pod that says
`prometheus.io/scrape: "false"` or `prometheus.istio.io/merge-metrics: "false"` is left as it is."""

from __future__ import annotations

import json
from collections.abc import Mapping

MERGE = "prometheus.istio.io/merge-metrics"
SCRAPE = "prometheus.io/scrape"
PORT = "prometheus.io/port"
PATH = "prometheus.io/path"
MERGED_PORT = 15020
MERGED_PATH = "/stats/prometheus"
APP_ENV = "ISTIO_PROMETHEUS_ANNOTATIONS"


class BadMetricsAnnotation(ValueError):
    pass


def metrics_merge(annotations: Mapping[str, str]) -> tuple[dict[str, str], str | None]:
    """The annotations to set, and the value of `ISTIO_PROMETHEUS_ANNOTATIONS` for the agent (None: the
    application's metrics are not scraped). Raises BadMetricsAnnotation naming a port that is none."""
    if annotations.get(MERGE, "true").strip().lower() == "false":
        return {}, None
    scrape = annotations.get(SCRAPE, "").strip().lower()
    if scrape == "false":
        return {}, None
    app = None
    if scrape == "true":
        port = annotations.get(PORT, "").strip()
        if not port.isdigit() or not 0 < int(port) < 65536:
            raise BadMetricsAnnotation(f"metadata.annotations[{PORT}]: {port!r} is not a port (1-65535)")
        path = annotations.get(PATH, "").strip() or "/metrics"
        app = json.dumps({"scrape": "true", "path": path, "port": port}, separators=(",", ":"))
    return {SCRAPE: "true", PORT: str(MERGED_PORT), PATH: MERGED_PATH}, app
