"""Figures of the side-by-side benchmark: per control plane, its rounds folded into one value per
figure (scalars: mean over rounds; edit latencies: p50/p99 over the edits of all rounds), the ratio
meshd / istiod per figure (below 1: meshd better, every figure is lower-is-better), and the tables."""

from __future__ import annotations

from typing import Any

from benchmarks.phases import percentile
from benchmarks.report import table

# figure key, label; all lower-is-better
FIGURES = (
    ("ready_s", "start -> /ready s"),
    ("cold_s", "cold convergence s"),
    ("vs_p50_ms", "VirtualService edit -> last proxy p50 ms"),
    ("vs_p99_ms", "VirtualService edit -> last proxy p99 ms"),
    ("ep_p50_ms", "endpoint edit -> last proxy p50 ms"),
    ("ep_p99_ms", "endpoint edit -> last proxy p99 ms"),
    ("peak_rss_mb", "peak RSS MB"),
    ("cpu_s", "CPU s (start-up, storm, edits)"),
    ("cold_cpu_s", "CPU s during the cold storm"),
    ("cold_mb", "MB sent in the cold storm"),
    ("vs_kb", "kB sent per VirtualService edit"),
    ("ep_kb", "kB sent per endpoint edit"),
    ("client_cold_cpu_s", "load client CPU s in the cold storm"),  # the same client: what it was given to chew
)
RATIO_COLUMNS = ("cold_s", "vs_p99_ms", "ep_p99_ms", "peak_rss_mb", "cpu_s", "cold_mb")


def _mean(values: list[float | None]) -> float | None:
    """Mean over rounds; None if any round has no value (a timeout must not look like a fast round)."""
    if not values or any(v is None for v in values):
        return None
    return sum(v for v in values if v is not None) / len(values)


def _round(value: float | None, digits: int = 2) -> float | None:
    return None if value is None else round(value, digits)


def aggregate(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """One control plane's rounds -> {figure: value}, plus the counts that qualify them."""
    out: dict[str, Any] = {"rounds": len(rounds)}
    out["ready_s"] = _round(_mean([r["ready_s"] for r in rounds]))
    out["cold_s"] = _round(_mean([r["cold_s"] for r in rounds]), 3)
    out["cold_cpu_s"] = _round(_mean([r["cold_cpu_s"] for r in rounds]))
    out["cold_mb"] = _round(_mean([r["cold_bytes"] / 1e6 for r in rounds]))
    out["peak_rss_mb"] = _round(_mean([r["memory"]["peak_rss_mb"] for r in rounds]), 1)
    out["cpu_s"] = _round(_mean([r["cpu_s"] for r in rounds]))
    out["client_cold_cpu_s"] = _round(_mean([r["client_cold_cpu_s"] for r in rounds]))
    out["cold_converged"] = min(r["cold"]["converged"] for r in rounds)
    out["stream_errors"] = sum(r["cold"]["stream_errors"] for r in rounds)
    for kind in ("vs", "ep"):
        done = [r[kind] for r in rounds if kind in r]
        each = [e for d in done for e in d[f"{kind}_each"]]
        times = [e["ms"] for e in each if e["ms"] is not None]
        out[f"{kind}_edits"] = len(each)
        out[f"{kind}_incomplete"] = sum(1 for e in each if e["ms"] is None)
        complete = bool(each) and len(done) == len(rounds)
        out[f"{kind}_p50_ms"] = percentile(times, 50) if complete else None
        out[f"{kind}_p99_ms"] = percentile(times, 99) if complete else None
        out[f"{kind}_kb"] = _round(_mean([d[f"{kind}_bytes_per_change"] / 1e3 for d in done]), 1) if done else None
        out[f"{kind}_needed"] = max((e["needed"] for e in each), default=0)
    return out


def ratios(mine: dict[str, Any], peer: dict[str, Any]) -> dict[str, float | None]:
    """meshd / istiod per figure (None where either is missing or the peer's is 0)."""
    out: dict[str, float | None] = {}
    for key, _ in FIGURES:
        a, b = mine.get(key), peer.get(key)
        out[key] = round(a / b, 2) if a is not None and b else None
    return out


def cell_table(cell: dict[str, Any]) -> str:
    servers = cell["servers"]
    figures = cell["figures"]
    headers = ["figure", *servers] + (["meshd/istiod"] if "ratios" in cell else [])
    rows = []
    for key, label in FIGURES:
        row = [label, *(str(figures[s].get(key)) for s in servers)]
        if "ratios" in cell:
            row.append(str(cell["ratios"][key]))
        rows.append(row)
    edits = [
        "edits (incomplete) VS / endpoint",
        *(f"{figures[s]['vs_edits']} ({figures[s]['vs_incomplete']}) / "
          f"{figures[s]['ep_edits']} ({figures[s]['ep_incomplete']})" for s in servers),
    ]  # fmt: skip
    needed = ["proxies that needed an edit VS / endpoint",
              *(f"{figures[s]['vs_needed']} / {figures[s]['ep_needed']}" for s in servers)]  # fmt: skip
    storm = [f"cold storm: fewest converged / stream errors (of {cell['proxies']})",
             *(f"{figures[s]['cold_converged']} / {figures[s]['stream_errors']}" for s in servers)]  # fmt: skip
    extra = [""] if "ratios" in cell else []
    return table([*rows, [*edits, *extra], [*needed, *extra], [*storm, *extra]], headers)  # type: ignore[arg-type]


def matrix_rows(cells: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per cell: the ratio meshd / istiod of the headline figures."""
    rows = []
    for cell in cells:
        if "ratios" not in cell:
            continue
        row: dict[str, Any] = {"cell": cell["cell"]}
        for key in RATIO_COLUMNS:
            row[key] = cell["ratios"][key]
        rows.append(row)
    return rows


def print_peer(result: dict[str, Any]) -> None:
    if "skipped" in result:
        print(f"\n== peer: SKIPPED: {result['skipped']} ==", flush=True)
        return
    for cell in result["cells"]:
        if "error" in cell:
            print(f"\n== peer {cell['cell']}: FAILED: {cell['error']} ==")
            continue
        print(f"\n== peer: {cell['cell']} ({cell['xds']}, {result['rounds']} rounds each, alternating; "
              f"{cell['elapsed_s']} s) ==")  # fmt: skip
        print(cell_table(cell))
        refused = sorted({e for r in cell.get("rounds", []) for e in r.get("config_errors", [])})
        if refused:
            print(f"meshd refused {len(refused)} of the objects (its figures are not of the whole mesh):")
            print("\n".join(f"  {e}" for e in refused[:10]))
    rows = matrix_rows(result["cells"])
    if rows:
        print("\n== meshd / istiod (below 1: meshd better) ==")
        print(table(rows))
    print(flush=True)
