"""The scrape endpoints of a sidecar, as Istio's: Envoy's `/stats/prometheus` on 15090 (a listener in the
bootstrap) and the agent's merged endpoint on 15020 (`/stats/prometheus`: Envoy's stats, the agent's own, and
the application's when the injector moved its `prometheus.io/*` annotations to the agent), plus what Envoy
needs for them: `stats_config` and the identity environment variable its metrics configuration reads
(`translate/metrics.py`).

Envoy names every stat in its Prometheus output `envoy_<name>`, and Istio's metrics carry compact tags
(`translate/metric_labels.py`). Both endpoints show `prometheus_text`: Istio's metrics as `istio_<name>` with
Istio's labels. The 15090 listener's route goes to the agent over a Unix socket (`stats_cluster`), which
reads Envoy's admin and answers with that text.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

from meshd.settings import AgentSettings
from meshd.translate.metric_labels import expand_text
from meshd.translate.metrics import BYTES_BUCKETS, IDENTITY_ENV, STAT_PREFIX, identity_id, identity_values

STATS_PATH = "/stats/prometheus"
STATS_CLUSTER = "prometheus_stats"
_HCM = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
_HCM_NAME = "envoy.filters.network.http_connection_manager"
_ROUTER = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
_ENVOY_PREFIX = f"envoy_{STAT_PREFIX}_"
_RENAME = re.compile(rf"^(# (?:TYPE|HELP) )?{_ENVOY_PREFIX}", re.MULTILINE)


def istio_names(text: str) -> str:
    """Envoy's Prometheus text with Istio's metrics under their own names (`istio_requests_total`...)."""
    return _RENAME.sub(lambda m: f"{m.group(1) or ''}{STAT_PREFIX}_", text)


def prometheus_text(envoy_text: str) -> str:
    """Envoy's Prometheus text as Istio's scrape endpoints show it: Istio's names and labels."""
    return expand_text(istio_names(envoy_text))


def identity_env(settings: AgentSettings) -> dict[str, str]:
    """The environment variable Envoy's metrics and peer exchange read its own identity from
    (`translate/metrics.py`): workload name, namespace, `app`/`version` labels (Istio's canonical labels as
    fallbacks; `unknown` without), cluster id, packed in one value."""
    from meshd.agent.metadata import workload_name

    values = identity_values(
        settings.labels, workload=workload_name(settings), namespace=settings.namespace, cluster=settings.cluster_id
    )
    return {IDENTITY_ENV: identity_id(values)}


def stats_config() -> dict[str, Any]:
    """Istio's byte-size buckets for the size histograms (Envoy's defaults suit the durations)."""
    return {
        "histogram_bucket_settings": [
            {"match": {"prefix": f"{STAT_PREFIX}.{name}"}, "buckets": list(BYTES_BUCKETS)}
            for name in ("request_bytes", "response_bytes")
        ],
    }


def stats_listener(*, host: str, port: int) -> dict[str, Any]:
    """Istio's `0.0.0.0:15090` listener (here on the proxy's address): GET /stats/prometheus, answered by
    the agent through the `prometheus_stats` cluster (`prometheus_text` of Envoy's admin)."""
    hcm = {
        "@type": _HCM,
        "stat_prefix": "stats",
        "route_config": {
            "virtual_hosts": [
                {
                    "name": "backend",
                    "domains": ["*"],
                    "routes": [{"match": {"prefix": STATS_PATH}, "route": {"cluster": STATS_CLUSTER}}],
                }
            ]
        },
        "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {"@type": _ROUTER}}],
    }
    return {
        "name": f"{host}_{port}_prometheus",
        "address": {"socket_address": {"address": host, "port_value": port}},
        "filter_chains": [{"filters": [{"name": _HCM_NAME, "typed_config": hcm}]}],
    }


def stats_cluster(*, socket_path: str) -> dict[str, Any]:
    """The agent's Envoy-stats endpoint on its Unix socket (`agent/merged_metrics.py`)."""
    return {
        "name": STATS_CLUSTER,
        "type": "STATIC",
        "connect_timeout": "1s",
        "load_assignment": {
            "cluster_name": STATS_CLUSTER,
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {"pipe": {"path": socket_path}}}}]}],
        },
    }


def app_scrape(env: Mapping[str, str]) -> tuple[int, str] | None:
    """The application's metrics (port, path) the injector moved into `ISTIO_PROMETHEUS_ANNOTATIONS`
    (`{"scrape": "true", "port": "8080", "path": "/metrics"}`); None without, or when not scraped.
    ValueError names a bad value."""
    raw = env.get("ISTIO_PROMETHEUS_ANNOTATIONS")
    if not raw:
        return None
    try:
        annotations = json.loads(raw)
    except json.JSONDecodeError as err:
        raise ValueError(f"ISTIO_PROMETHEUS_ANNOTATIONS is not JSON: {err}") from None
    if not isinstance(annotations, dict) or str(annotations.get("scrape", "")).lower() != "true":
        return None
    port = str(annotations.get("port", ""))
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"ISTIO_PROMETHEUS_ANNOTATIONS: port {port!r} is not a port")
    path = str(annotations.get("path") or "/metrics")
    return int(port), path if path.startswith("/") else f"/{path}"
