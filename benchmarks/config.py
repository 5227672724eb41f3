"""Sizes and time budgets of every scenario: defaults (`make bench`, under 10 minutes on 2 cores)
and --quick (about a minute). Each can be overridden from the command line."""

from __future__ import annotations

import pathlib
from dataclasses import dataclass, field


@dataclass
class Options:
    work: pathlib.Path
    quick: bool = False
    delta: bool = False
    poll_interval: float = 0.02
    meshd_workers: int = 1  # `meshd serve --workers` (CPU and memory are summed over its processes)
    # ADS streams per TCP connection of the load client (None: its default, 100); an Envoy has one
    # connection per proxy, and SO_REUSEPORT spreads connections, not streams, over meshd's workers
    client_per_channel: int | None = None
    # isolated: services, namespaces, proxies (2 pods per service), one Sidecar per namespace
    isolated: tuple[int, int, int] = (1000, 100, 2000)
    full_mesh: tuple[int, int, int] = (300, 30, 300)
    churn: tuple[int, int, int] = (1000, 100, 2000)
    churn_seconds: int = 60
    churn_fraction: float = 0.10
    growth_sizes: tuple[int, ...] = (100, 1000, 5000)
    growth_proxies: int = 50
    changes: int = 20  # per change kind and scenario (fewer if the budget runs out)
    change_budget_s: float = 45.0
    growth_changes: int = 10
    envoys: int = 3
    reference: tuple[str, ...] = ("isolated", "full-mesh")
    cold_timeout_s: float = 120.0
    change_timeout_s: float = 20.0
    translate_sizes: list[tuple[int, int, int]] = field(
        default_factory=lambda: [(100, 10, 100), (1000, 100, 500), (5000, 100, 1000)]
    )
    envoy_ack_services: int = 200
    envoy_ack_changes: int = 20
    security_services: int = 300  # full mesh: each proxy's CDS+EDS is the whole mesh
    security_proxies: int = 100
    security_csrs: int = 400
    # placement (opt-in, `--scenarios placement`): services, namespaces, proxies per namespace, rounds
    placement: tuple[int, int, int, int] = (5000, 100, 4, 2)
    # slowclients: full mesh (services, namespaces, healthy proxies) and never-reading attacker streams
    slow_mesh: tuple[int, int, int] = (300, 30, 50)
    slow_streams: int = 100
    # metrics: seconds of wrk load per configuration and round, rounds (without / with metrics alternating)
    metrics_seconds: int = 10
    metrics_rounds: int = 3
    scenarios: tuple[str, ...] = (
        "isolated", "full-mesh", "churn", "growth", "translate", "envoy-ack", "security", "slowclients", "metrics",
    )  # fmt: skip


def quick(options: Options) -> Options:
    options.quick = True
    options.isolated = (200, 20, 400)
    options.full_mesh = (100, 10, 100)
    options.churn = (200, 20, 400)
    options.churn_seconds = 15
    options.growth_sizes = (100, 500, 1000)
    options.growth_proxies = 20
    options.changes = 8
    options.change_budget_s = 8.0
    options.growth_changes = 5
    options.cold_timeout_s = 60.0
    options.translate_sizes = [(100, 10, 100), (500, 50, 200)]
    options.envoy_ack_services = 50
    options.envoy_ack_changes = 5
    options.security_services, options.security_proxies, options.security_csrs = 100, 30, 100
    options.placement = (500, 20, 4, 1)
    options.slow_mesh = (300, 30, 20)
    options.metrics_seconds, options.metrics_rounds = 3, 1
    return options
