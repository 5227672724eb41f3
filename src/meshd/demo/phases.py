"""One phase of the demo: set the canary weights, show live traffic, then judge what was measured.

A phase is judged on the requests sent after the frontend sidecar had the phase's weights (seen in
its config_dump), so the measurement is not blurred by the propagation delay it also reports.
"""

from __future__ import annotations

import asyncio
import collections
import math
import pathlib
from dataclasses import dataclass
from typing import TextIO

from meshd.demo import mesh
from meshd.demo.display import LiveDisplay, View
from meshd.demo.mesh import format_weights, read_weights
from meshd.demo.metrics import HopCheck, MetricsWatcher
from meshd.demo.observe import WeightsWatcher
from meshd.demo.traffic import LoadGenerator, Tally, tally

MIN_SAMPLES = 40
SIGMAS = 4.0
TOLERANCE_FLOOR = 0.03
MAX_ERROR_RATE = 0.05
SETTLE_S = 0.3


@dataclass(frozen=True)
class Phase:
    """A named set of canary weights (subset -> percent)."""

    title: str
    weights: dict[str, int]


@dataclass(frozen=True)
class PhaseResult:
    """What happened during one phase."""

    title: str
    weights: dict[str, int]
    started_at: float
    rewritten: bool
    applied_at: float | None
    measured: Tally
    everything: Tally
    matched: bool


def tolerance(*, expected: float, samples: int) -> float:
    """How far a measured share may stray from `expected`: SIGMAS binomial standard deviations."""
    if samples <= 0:
        return 0.0
    return max(TOLERANCE_FLOOR, SIGMAS * math.sqrt(expected * (1 - expected) / samples))


def matches(*, measured: Tally, weights: dict[str, int], versions: list[str]) -> bool:
    """Enough requests, and every version's share within tolerance of its weight."""
    if measured.ok < MIN_SAMPLES:
        return False
    total = sum(weights.values())
    for version in versions:
        expected = weights.get(version, 0) / total
        if abs(measured.share(version) - expected) > tolerance(expected=expected, samples=measured.ok):
            return False
    return True


async def run_phase(
    *,
    number: int,
    phases: int,
    phase: Phase,
    duration_s: float,
    vs_path: pathlib.Path,
    work: pathlib.Path,
    generator: LoadGenerator,
    watcher: WeightsWatcher,
    metrics: MetricsWatcher,
    display: LiveDisplay,
    versions: list[str],
) -> PhaseResult:
    """Run one phase for `duration_s`, refreshing the display every second."""
    weights = phase.weights
    title = f"{phase.title}: " + " / ".join(f"{weight}% {subset}" for subset, weight in weights.items())
    loop = asyncio.get_running_loop()
    started_at = loop.time()
    rewritten = read_weights(path=vs_path) != weights
    if rewritten:
        mesh.write_weights(path=vs_path, weights=weights, scratch_dir=work)
        display.message(f"rewrote {mesh.VIRTUAL_SERVICE_FILE}: {format_weights(weights=weights, versions=versions)}")
    for tick in range(1, math.ceil(duration_s) + 1):
        await asyncio.sleep(max(0.0, started_at + min(tick, duration_s) - loop.time()))
        now = loop.time()
        display.update(
            View(
                phase=number,
                phases=phases,
                title=title,
                elapsed_s=now - started_at,
                duration_s=duration_s,
                versions=versions,
                file_weights=format_weights(weights=read_weights(path=vs_path), versions=versions),
                envoy_weights=format_weights(weights=watcher.current, versions=versions),
                last_second=tally(samples=generator.samples, since=now - 1.0, until=now),
                this_phase=tally(samples=generator.samples, since=started_at, until=now),
                hops=mesh.call_chain(),
                metrics=metrics.latest,
            )
        )
    ended_at = loop.time()
    applied_at = watcher.applied_at(weights=weights, since=started_at)
    if not rewritten:  # the weights the sidecars started with
        measure_from = started_at
    elif applied_at is None:  # weights not readable from the sidecar: skip the usual propagation delay
        measure_from = started_at + min(2.0, duration_s / 3)
    else:  # let requests routed under the old weights finish
        measure_from = applied_at + SETTLE_S
    measured = tally(samples=generator.samples, since=measure_from, until=ended_at)
    return PhaseResult(
        title=title,
        weights=weights,
        started_at=started_at,
        rewritten=rewritten,
        applied_at=applied_at,
        measured=measured,
        everything=tally(samples=generator.samples, since=started_at, until=ended_at),
        matched=matches(measured=measured, weights=weights, versions=versions),
    )


def summarize(
    *, out: TextIO, results: list[PhaseResult], startup: str, versions: list[str], metrics: list[HopCheck]
) -> bool:
    """Print the summary; True if traffic flowed, errors were rare, every phase matched its weights and
    Istio's metrics on every hop counted the requests answered 200."""
    out.write("\nsummary\n" + startup + "\n")
    requests = sum(result.everything.total for result in results)
    errors = sum(result.everything.failed for result in results)
    for number, result in enumerate(results, start=1):
        shares = " ".join(f"{v} {result.measured.share(v):.1%}" for v in versions)
        expected = format_weights(weights=result.weights, versions=versions)
        verdict = "ok" if result.matched else "MISMATCH"
        if not result.rewritten:
            applied = "weights as configured at start-up"
        elif result.applied_at is None:
            applied = "new weights not seen in the frontend sidecar"
        else:
            delay = result.applied_at - result.started_at
            applied = f"new weights reached the frontend sidecar {delay:.2f}s after the file was rewritten"
        out.write(
            f"  phase {number} {result.title}: {result.everything.total} requests,"
            f" {result.everything.failed} errors; {applied}\n"
            f"      measured {shares} over {result.measured.ok} requests;"
            f" expected {expected} (+-{SIGMAS:.0f} sigma) -> {verdict}\n"
        )
        for error, count in result.everything.errors.most_common(3):
            out.write(f"      {count} x {error}\n")
    peers = sum((result.everything.peers for result in results), start=collections.Counter())
    if peers:
        chain = mesh.call_chain()
        seen, count = peers.most_common(1)[0]
        out.write(f"  peer identities seen by the apps ({count} of {sum(peers.values())} requests):\n")
        for i, peer in enumerate(seen[: len(chain) - 1]):
            out.write(f"      {chain[i]} -> {chain[i + 1]}: {peer or 'plaintext (no peer certificate)'}\n")
    out.write('  istio_requests_total{response_code="200"} per hop, from the proxies\' own endpoints (15020):\n')
    for check in metrics:
        verdict = "ok" if check.matched else "MISMATCH"
        out.write(
            f"      {check.hop.title()}: {check.expected} answered 200 to the load generator;"
            f" reporter source {check.source}, reporter destination {check.destination} -> {verdict}\n"
        )
    counted = bool(metrics) and all(check.matched for check in metrics)
    error_rate = errors / requests if requests else 1.0
    ok = requests > 0 and error_rate <= MAX_ERROR_RATE and all(result.matched for result in results) and counted
    outcome = "traffic flowed and every shift was observed" if ok else "FAILED"
    out.write(f"  {requests} requests, {errors} errors ({error_rate:.1%}); {outcome}\n")
    return ok
