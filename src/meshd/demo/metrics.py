"""Istio's standard metrics as the demo shows them: every proxy's own scrape endpoint (the merged 15020
`/stats/prometheus` its `meshd agent` serves: Envoy's stats with Istio's names) read once a second, and
`istio_requests_total` summed per hop (source workload -> destination workload and version), reporter
(`source`: the caller's proxy, `destination`: the callee's sidecar) and response code.

`hop_check` compares those counters with what the load generator saw: every request answered 200 went
gateway -> frontend -> catalog (one version) -> backend, each hop answering 200, so each hop's 200 count on
both reporters must equal the number of such requests (per catalog version where the hop involves it).
"""

from __future__ import annotations

import asyncio
import collections
import itertools
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from meshd.agent.envoy import EnvoyError

REQUESTS_TOTAL = "istio_requests_total"
REPORTERS = ("source", "destination")


class Scrapable(Protocol):
    """A proxy whose merged Prometheus endpoint can be read (an agent-run sidecar or gateway)."""

    async def scrape_metrics(self) -> str: ...


@dataclass(frozen=True, order=True)
class Hop:
    """One edge of the call graph as Istio's labels name it."""

    source: str  # source_workload
    destination: str  # destination_workload
    version: str  # destination_version
    code: str  # response_code

    def title(self) -> str:
        return f"{self.source} -> {self.destination} {self.version}"


# (hop, reporter) -> requests counted
HopCounts = collections.Counter[tuple[Hop, str]]


def requests_by_hop(*, texts: Iterable[str]) -> HopCounts:
    """`istio_requests_total` of every scraped text, summed per hop and reporter."""
    counts: HopCounts = collections.Counter()
    for text in texts:
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name != REQUESTS_TOTAL:
                    continue
                labels = sample.labels
                hop = Hop(
                    source=labels.get("source_workload", "?"),
                    destination=labels.get("destination_workload", "?"),
                    version=labels.get("destination_version", "?"),
                    code=labels.get("response_code", "?"),
                )
                counts[(hop, labels.get("reporter", "?"))] += int(sample.value)
    return counts


def ordered_hops(*, counts: HopCounts, chain: Sequence[str]) -> list[Hop]:
    """The hops in the order of the call chain (the traffic's entry first), then version and code."""
    position = {app: index for index, app in enumerate(chain)}
    hops = {hop for hop, _ in counts}
    return sorted(hops, key=lambda hop: (position.get(hop.source, len(chain)), hop.destination, hop.version, hop.code))


def metric_lines(*, counts: HopCounts, chain: Sequence[str]) -> list[str]:
    """The table's rows: per hop and code, the count on each reporter."""
    if not counts:
        return []
    lines = [
        "  istio_requests_total, read from each proxy's own 15020 /stats/prometheus (reporter source / destination):"
    ]
    for hop in ordered_hops(counts=counts, chain=chain):
        lines.append(
            f"    {hop.title():34} {hop.code:>3} {counts[(hop, 'source')]:7d} / {counts[(hop, 'destination')]:<7d}"
        )
    return lines


def metric_summary(*, counts: HopCounts, chain: Sequence[str]) -> str:
    """One line: the 200 counts per hop, for logs and pipes."""
    parts = [
        f"{hop.title()} {counts[(hop, 'source')]}/{counts[(hop, 'destination')]}"
        for hop in ordered_hops(counts=counts, chain=chain)
        if hop.code == "200"
    ]
    return "istio_requests_total 200 (source/destination): " + ", ".join(parts) if parts else ""


@dataclass(frozen=True)
class HopCheck:
    """One hop's expected 200 count (from the load generator) and what each reporter counted."""

    hop: Hop
    expected: int
    source: int
    destination: int

    @property
    def matched(self) -> bool:
        return self.source == self.expected == self.destination


def hop_check(
    *,
    counts: HopCounts,
    chain: Sequence[str],
    canary: str,
    versions: Mapping[str, Sequence[str]],
    by_version: Mapping[str, int],
) -> list[HopCheck]:
    """Per hop of the chain and version of its callee (`versions`: app -> its versions), the 200s both
    reporters counted against the successful requests the load generator saw (`by_version`: per canary
    version; every other callee served them all)."""
    ok = sum(by_version.values())
    checks: list[HopCheck] = []
    for caller, callee in itertools.pairwise(chain):
        for version in versions.get(callee, ()):
            hop = Hop(source=caller, destination=callee, version=version, code="200")
            expected = by_version.get(version, 0) if callee == canary else ok
            checks.append(
                HopCheck(
                    hop=hop, expected=expected, source=counts[(hop, "source")], destination=counts[(hop, "destination")]
                )
            )
    return checks


@dataclass
class MetricsWatcher:
    """Scrapes every proxy's endpoint once per `interval_s`; `latest` is the last complete reading."""

    proxies: Sequence[Scrapable]
    clock: Callable[[], float]
    interval_s: float = 1.0
    latest: HopCounts = field(default_factory=collections.Counter)
    read_at: float | None = None
    errors: int = 0

    async def read(self) -> HopCounts | None:
        """One reading of every proxy; None if one of them could not be read."""
        try:
            texts = await asyncio.gather(*(proxy.scrape_metrics() for proxy in self.proxies))
        except (EnvoyError, aiohttp.ClientError, OSError, TimeoutError, ValueError):
            self.errors += 1
            return None
        counts = requests_by_hop(texts=texts)
        self.latest, self.read_at = counts, self.clock()
        return counts

    async def run(self) -> None:
        """Read until cancelled."""
        while True:
            await self.read()
            await asyncio.sleep(self.interval_s)
