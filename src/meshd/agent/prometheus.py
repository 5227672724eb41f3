"""The scrape endpoints of a sidecar, as Istio's: Envoy's `/stats/prometheus` on 15090 (a listener in the
bootstrap, in front of Envoy's admin) and the agent's merged endpoint on 15020 (`/stats/prometheus`: Envoy's
stats, the agent's own, and the application's when the injector moved its `prometheus.io/*` annotations to
the agent), plus what Envoy needs for them: `stats_config` and the identity environment variables its
metrics configuration reads (`translate/metrics.py`).

Envoy names every stat in its Prometheus output `envoy_<name>`; Istio's metrics (Envoy stats `istio.<name>`)
are exposed as `istio_<name>`: renamed by a Lua filter on 15090 and by `istio_names` on 15020.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

from meshd.settings import AgentSettings
from meshd.translate.metrics import BYTES_BUCKETS, IDENTITY_ENV, STAT_PREFIX, identity_values

STATS_PATH = "/stats/prometheus"
ADMIN_CLUSTER = "prometheus_stats"
_HCM = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
_HCM_NAME = "envoy.filters.network.http_connection_manager"
_LUA = "type.googleapis.com/envoy.extensions.filters.http.lua.v3.Lua"
_ROUTER = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
_BUFFER = 64 * 1024 * 1024  # a large mesh's stats page, buffered whole by the rename
_ENVOY_PREFIX = f"envoy_{STAT_PREFIX}_"

# Lua: the body once complete, every line naming an `envoy_istio_*` family renamed to `istio_*`
_RENAME_LUA = f"""
function envoy_on_response(handle)
  local body = handle:body()
  if body == nil then return end
  local text = body:getBytes(0, body:length())
  text = string.gsub(text, "\\n{_ENVOY_PREFIX}", "\\n{STAT_PREFIX}_")
  text = string.gsub(text, "# TYPE {_ENVOY_PREFIX}", "# TYPE {STAT_PREFIX}_")
  body:setBytes(text)
end
"""
_RENAME = re.compile(rf"^(# (?:TYPE|HELP) )?{_ENVOY_PREFIX}", re.MULTILINE)


def istio_names(text: str) -> str:
    """Envoy's Prometheus text with Istio's metrics under their own names (`istio_requests_total`...)."""
    return _RENAME.sub(lambda m: f"{m.group(1) or ''}{STAT_PREFIX}_", text)


def identity_env(settings: AgentSettings) -> dict[str, str]:
    """The environment variables Envoy's metrics read its own identity from (`translate/metrics.py`):
    workload name, namespace, `app`/`version` labels (Istio's canonical labels as fallbacks; `unknown`
    without), cluster id."""
    from meshd.agent.metadata import workload_name

    values = identity_values(
        settings.labels, workload=workload_name(settings), namespace=settings.namespace, cluster=settings.cluster_id
    )
    return {var: values[key] for key, var in IDENTITY_ENV}


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
    Envoy's admin through the `prometheus_stats` cluster with Istio's metric names."""
    lua = {"inline_string": _RENAME_LUA}
    hcm = {
        "@type": _HCM,
        "stat_prefix": "stats",
        "route_config": {
            "virtual_hosts": [
                {
                    "name": "backend",
                    "domains": ["*"],
                    "routes": [{"match": {"prefix": STATS_PATH}, "route": {"cluster": ADMIN_CLUSTER}}],
                }
            ]
        },
        "http_filters": [
            {"name": "envoy.filters.http.lua", "typed_config": {"@type": _LUA, "default_source_code": lua}},
            {"name": "envoy.filters.http.router", "typed_config": {"@type": _ROUTER}},
        ],
    }
    return {
        "name": f"{host}_{port}_prometheus",
        "address": {"socket_address": {"address": host, "port_value": port}},
        "per_connection_buffer_limit_bytes": _BUFFER,
        "filter_chains": [{"filters": [{"name": _HCM_NAME, "typed_config": hcm}]}],
    }


def admin_cluster(*, host: str, port: int) -> dict[str, Any]:
    return {
        "name": ADMIN_CLUSTER,
        "type": "STATIC",
        "connect_timeout": "1s",
        "per_connection_buffer_limit_bytes": _BUFFER,
        "load_assignment": {
            "cluster_name": ADMIN_CLUSTER,
            "endpoints": [
                {"lb_endpoints": [{"endpoint": {"address": {"socket_address": {"address": host, "port_value": port}}}}]}
            ],
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
