"""The demo's live view: a table redrawn in place on a terminal, one line per refresh otherwise."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TextIO

from meshd.demo.metrics import HopCounts, metric_lines, metric_summary
from meshd.demo.traffic import Tally

_BAR_WIDTH = 30


@dataclass(frozen=True)
class View:
    """Everything one refresh shows."""

    phase: int
    phases: int
    title: str
    elapsed_s: float
    duration_s: float
    versions: list[str]
    file_weights: str
    envoy_weights: str
    last_second: Tally
    this_phase: Tally
    hops: tuple[str, ...] = ()  # the chain's apps, traffic source first: hops[i] called hops[i + 1]
    metrics: HopCounts | None = None  # istio_requests_total per hop and reporter, from the proxies' endpoints


def short_identity(identity: str | None) -> str:
    """`spiffe://<td>/ns/<ns>/sa/<sa>` as `<ns>/<sa>` for the table; plaintext as such."""
    if identity is None:
        return "plaintext (no peer certificate)"
    _, _, path = identity.partition("/ns/")
    namespace, _, account = path.partition("/sa/")
    return f"{namespace}/{account}" if namespace and account else identity


def peer_hops(*, view: View) -> list[tuple[str, str | None]]:
    """Per hop ("caller -> callee"), the caller identity the callee's app saw over mTLS (the most
    common combination in this phase)."""
    if not view.this_phase.peers or len(view.hops) < 2:
        return []
    peers, _ = view.this_phase.peers.most_common(1)[0]
    return [(f"{view.hops[i]} -> {view.hops[i + 1]}", peer) for i, peer in enumerate(peers[: len(view.hops) - 1])]


def peer_lines(*, view: View) -> list[str]:
    hops = peer_hops(view=view)
    if not hops:
        return []
    lines = ["  peer identity (mTLS, from x-forwarded-client-cert seen by the callee):"]
    lines += [f"    {hop:22} {short_identity(peer):20} {peer or ''}" for hop, peer in hops]
    return lines


def _bar(share: float) -> str:
    return "#" * round(share * _BAR_WIDTH)


def render_table(*, view: View) -> list[str]:
    """The multi-line table shown on a terminal."""
    lines = [
        f"phase {view.phase}/{view.phases}: {view.title}   "
        f"{view.elapsed_s:4.0f}s of {view.duration_s:.0f}s   {view.last_second.total:3d} req/s",
        f"  weights in the VirtualService file: {view.file_weights}",
        f"  weights in the frontend sidecar:    {view.envoy_weights}",
        f"  {'':8} {'last second':>16}   {'this phase':>16}",
    ]
    for version in view.versions:
        last, phase = view.last_second, view.this_phase
        lines.append(
            f"  {version:8} {last.by_version[version]:6d} {last.share(version):7.1%}   "
            f"{phase.by_version[version]:6d} {phase.share(version):7.1%}   {_bar(phase.share(version))}"
        )
    lines.append(f"  {'errors':8} {view.last_second.failed:6d} {'':7}   {view.this_phase.failed:6d}")
    return lines + peer_lines(view=view) + metric_lines(counts=view.metrics or HopCounts(), chain=view.hops)


def render_line(*, view: View) -> str:
    """One self-contained line, for logs and pipes."""

    def shares(tally: Tally) -> str:
        return " ".join(f"{version} {tally.share(version):.0%}" for version in view.versions)

    return (
        f"phase {view.phase}/{view.phases} t={view.elapsed_s:.0f}s {view.last_second.total} req/s"
        f" | last 1s: {shares(view.last_second)} err {view.last_second.failed}"
        f" | phase n={view.this_phase.total}: {shares(view.this_phase)} err {view.this_phase.failed}"
        f" | weights file {view.file_weights}; sidecar {view.envoy_weights}"
        + "".join(f" | {hop}: {short_identity(peer)}" for hop, peer in peer_hops(view=view))
        + (f" | {summary}" if (summary := metric_summary(counts=view.metrics or HopCounts(), chain=view.hops)) else "")
    )


class LiveDisplay:
    """Redraws the table in place when `stream` is a terminal; prints one line per update otherwise."""

    def __init__(self, *, stream: TextIO) -> None:
        self._stream = stream
        self._tty = stream.isatty()
        self._drawn = 0

    def update(self, view: View) -> None:
        if not self._tty:
            self._stream.write(render_line(view=view) + "\n")
        else:
            lines = render_table(view=view)
            if self._drawn:
                self._stream.write(f"\x1b[{self._drawn}F\x1b[J")
            self._stream.write("\n".join(lines) + "\n")
            self._drawn = len(lines)
        self._stream.flush()

    def message(self, text: str) -> None:
        """A line that stays (the table continues below it)."""
        self._drawn = 0
        self._stream.write(text + "\n")
        self._stream.flush()
