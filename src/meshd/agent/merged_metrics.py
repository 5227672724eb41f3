"""The agent's merged Prometheus endpoint (Istio's 15020 `/stats/prometheus`): Envoy's stats with Istio's
metric names, the agent's own metrics (`istio_agent_*`), and the application's metrics when the injector
moved its `prometheus.io/*` annotations to the agent; one scrape returns all three. A source that fails is
left out of that scrape and counted (`istio_agent_scrape_failures_total{source=...}`)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import aiohttp
from aiohttp import web

from meshd.agent.prometheus import STATS_PATH, prometheus_text

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


@dataclass
class ScrapeStats:
    scrapes: int = 0
    failures: dict[str, int] = field(default_factory=lambda: {"envoy": 0, "application": 0})


def agent_metrics(stats: ScrapeStats, *, cert_expiry_s: float | None, envoy_starts: int) -> str:
    """The agent's own metrics in Prometheus text format."""
    lines = [
        "# TYPE istio_agent_scrapes_total counter",
        f"istio_agent_scrapes_total {stats.scrapes}",
        "# TYPE istio_agent_scrape_failures_total counter",
        *(f'istio_agent_scrape_failures_total{{source="{s}"}} {n}' for s, n in sorted(stats.failures.items())),
        "# TYPE istio_agent_envoy_starts_total counter",
        f"istio_agent_envoy_starts_total {envoy_starts}",
    ]
    if cert_expiry_s is not None:
        lines.append("# TYPE istio_agent_cert_expiry_seconds gauge")
        lines.append(f"istio_agent_cert_expiry_seconds {cert_expiry_s:.0f}")
    return "\n".join(lines) + "\n"


def build_metrics_app(
    *,
    envoy_stats: Callable[[], Awaitable[str]],
    own: Callable[[ScrapeStats], str],
    app_url: str | None,
) -> web.Application:
    """`envoy_stats`: Envoy's admin /stats/prometheus text; `own`: the agent's metrics; `app_url`: the
    application's metrics URL (None: not merged)."""
    stats = ScrapeStats()
    timeout = aiohttp.ClientTimeout(total=5)

    async def merged(_: web.Request) -> web.Response:
        stats.scrapes += 1
        parts = []
        try:
            parts.append(prometheus_text(await envoy_stats()))
        except Exception:
            stats.failures["envoy"] += 1
        if app_url is not None:
            try:
                async with aiohttp.ClientSession(timeout=timeout) as session, session.get(app_url) as response:
                    if response.status != 200:
                        raise aiohttp.ClientError(f"status {response.status}")
                    parts.append(await response.text())
            except Exception:
                stats.failures["application"] += 1
        parts.append(own(stats))
        body = "".join(p if p.endswith("\n") else p + "\n" for p in parts)
        return web.Response(body=body.encode(), headers={"Content-Type": CONTENT_TYPE})

    app = web.Application()
    app.router.add_get(STATS_PATH, merged)
    return app


def build_envoy_stats_app(envoy_stats: Callable[[], Awaitable[str]]) -> web.Application:
    """What the 15090 listener forwards to (the agent's Unix socket): Envoy's stats alone, as Istio's
    (`prometheus_text`); 503 while Envoy does not answer."""

    async def stats(_: web.Request) -> web.Response:
        try:
            text = prometheus_text(await envoy_stats())
        except Exception as err:
            return web.Response(status=503, text=f"envoy stats: {err}\n")
        return web.Response(body=text.encode(), headers={"Content-Type": CONTENT_TYPE})

    app = web.Application()
    app.router.add_get(STATS_PATH, stats)
    return app
