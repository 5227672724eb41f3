"""What a sidecar is actually doing: the weights of a service's route, read from Envoy's config_dump.

Istio names a subset's cluster `outbound|<port>|<subset>|<fqdn>`; a route to one cluster counts as
100% for its subset. Route configs are found wherever they are (RDS or inline in a listener).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

import aiohttp

from meshd.agent.envoy import EnvoyError


class Admin(Protocol):
    """Anything that reads an Envoy admin path (an EnvoyProcess, an agent-run sidecar)."""

    async def admin_get(self, path: str) -> str: ...


def _route_configs(node: Any) -> Iterator[dict[str, Any]]:
    if isinstance(node, dict):
        if isinstance(node.get("virtual_hosts"), list):
            yield node
        for value in node.values():
            yield from _route_configs(value)
    elif isinstance(node, list):
        for value in node:
            yield from _route_configs(value)


def _serves(virtual_host: dict[str, Any], *, service: str) -> bool:
    for domain in virtual_host.get("domains", []):
        host = str(domain).rsplit(":", 1)[0] if str(domain).count(":") == 1 else str(domain)
        if host == service or host.startswith(service + "."):
            return True
    return False


def _subset(cluster: str) -> str:
    parts = cluster.split("|")
    return parts[2] if len(parts) == 4 else cluster


def _percentages(weights: dict[str, int]) -> dict[str, int]:
    total = sum(weights.values())
    if total <= 0:
        return {}
    return {subset: round(weight * 100 / total) for subset, weight in weights.items() if weight > 0}


def route_weights(*, config_dump: Any, service: str) -> dict[str, int] | None:
    """Subset -> percent of the first route for `service`, or None if there is no such route yet."""
    for route_config in _route_configs(config_dump):
        for virtual_host in route_config["virtual_hosts"]:
            if not isinstance(virtual_host, dict) or not _serves(virtual_host, service=service):
                continue
            for route in virtual_host.get("routes", []):
                action = route.get("route") if isinstance(route, dict) else None
                if not isinstance(action, dict):
                    continue
                if "cluster" in action:
                    return {_subset(str(action["cluster"])): 100}
                clusters = (action.get("weighted_clusters") or {}).get("clusters", [])
                weights: dict[str, int] = {}
                for cluster in clusters:
                    subset = _subset(str(cluster.get("name", "")))
                    weights[subset] = weights.get(subset, 0) + int(cluster.get("weight", 0))
                return _percentages(weights)
    return None


@dataclass
class WeightsWatcher:
    """Polls one sidecar's config_dump and records every change of a service's route weights."""

    envoy: Admin
    service: str
    clock: Callable[[], float]
    interval_s: float = 0.2
    changes: list[tuple[float, dict[str, int] | None]] = field(default_factory=list)

    @property
    def current(self) -> dict[str, int] | None:
        return self.changes[-1][1] if self.changes else None

    def applied_at(self, *, weights: dict[str, int], since: float) -> float | None:
        """When the sidecar first had `weights` (percent) at or after `since`, if it has."""
        target = _percentages(weights)
        before = [observed for at, observed in self.changes if at <= since]
        if before and before[-1] == target:
            return since
        return next((at for at, observed in self.changes if at > since and observed == target), None)

    async def run(self) -> None:
        """Poll until cancelled; admin errors are treated as "unknown" (None)."""
        while True:
            try:
                dump = json.loads(await self.envoy.admin_get("/config_dump"))
                observed = route_weights(config_dump=dump, service=self.service)
            except (EnvoyError, aiohttp.ClientError, OSError, TimeoutError, ValueError):
                observed = None
            if not self.changes or self.changes[-1][1] != observed:
                self.changes.append((self.clock(), observed))
            await asyncio.sleep(self.interval_s)
