"""Tables, targets and the one-line summary from the scenario results (plain dicts, as in latest.json)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

Row = tuple[str, Any, str, str]  # figure, value, target, met/MISSED/""


def mb(n: float) -> str:
    return f"{n / 1e6:.2f} MB" if n >= 1e5 else f"{n / 1e3:.1f} kB"


def _check(value: Any, ok: Callable[[Any], bool]) -> str:
    if value is None:
        return "MISSED"
    return "met" if ok(value) else "MISSED"


def table(rows: list[dict[str, Any]] | list[Row], headers: list[str] | None = None) -> str:
    if rows and isinstance(rows[0], dict):
        keys = list(rows[0])  # type: ignore[arg-type]
        data = [[str(r.get(k)) for k in keys] for r in rows]  # type: ignore[union-attr]
        headers = keys
    else:
        data = [[str(c) for c in r] for r in rows]
    assert headers is not None
    widths = [max(len(h), *(len(r[i]) for r in data)) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in data]
    return "\n".join(lines)


def _changes(r: dict[str, Any], kind: str, label: str, p99_target: float | None) -> list[Row]:
    c = r[kind]
    p99 = c[f"{kind}_p99_ms"]
    rows: list[Row] = [
        (
            f"{label} change p50 / p99 (n={c[f'{kind}_changes']}, incomplete {c[f'{kind}_incomplete']})",
            f"{c[f'{kind}_p50_ms']} / {p99} ms",
            f"p99 < {p99_target:g} ms" if p99_target else "",
            _check(p99, lambda v: v < p99_target) if p99_target else "",
        ),
        (f"{label} change: proxies that needed it / got an unneeded push (max)",
         f"{c[f'{kind}_needed_proxies']} / {c[f'{kind}_unneeded_proxies_max']}", "", ""),
        (f"{label} change: bytes sent / meshd CPU per change",
         f"{mb(c[f'{kind}_bytes_per_change'])} / {c['meshd_cpu_ms_per_change']} ms", "", ""),
    ]  # fmt: skip
    ref = r.get("reference", {}).get(kind)
    if ref:
        rows.append(
            (f"{label} change on the reference server p50 / p99, overhead ratio (p50)",
             f"{ref[f'{kind}_p50_ms']} / {ref[f'{kind}_p99_ms']} ms, {r.get(f'overhead_{kind}')}x", "", "")
        )  # fmt: skip
    return rows


def mesh_rows(r: dict[str, Any], targets: dict[str, float]) -> list[Row]:
    cold = r["cold"]
    rows: list[Row] = [
        ("meshd start-up (files loaded, /ready)", f"{r['startup_s']} s", "", ""),
        (
            f"cold storm: all {r['proxies']} proxies converged (CDS+EDS+LDS+RDS)",
            f"{cold['cold_s']} s" if cold["cold_s"] is not None else f"TIMEOUT {cold['converged']}/{cold['proxies']}",
            f"< {targets['cold_s']:g} s" if "cold_s" in targets else "",
            _check(cold["cold_s"], lambda v: v < targets["cold_s"]) if "cold_s" in targets else "",
        ),
        ("cold storm: first proxy / stream resets+reconnects", f"{cold['first_s']} s / {cold['reconnects']}", "", ""),
        ("cold storm: meshd CPU / load client CPU / bytes",
         f"{cold['meshd_cpu_s']} s / {cold['client_cpu_s']} s / {mb(cold['bytes'])}", "", ""),
    ]  # fmt: skip
    ref = r.get("reference")
    if ref:
        target = targets.get("overhead")
        rows.append(
            (
                "cold storm on the reference server / overhead ratio",
                f"{ref['cold']['cold_s']} s / {r.get('overhead_cold')}x",
                f"<= {target:g}x" if target else "",
                _check(r.get("overhead_cold"), lambda v: v <= target) if target else "",
            )
        )
    rows += _changes(r, "vs", "VirtualService", targets.get("vs_p99_ms"))
    rows += _changes(r, "ep", "endpoint", targets.get("ep_p99_ms"))
    mem = r["meshd_memory"]
    rows += [
        ("meshd CPU total (start-up, storm, changes, idle polling)", f"{r['meshd_cpu_s']} s", "", ""),
        (
            "meshd peak RSS (VmHWM) / RSS now",
            f"{mem['peak_rss_mb']} / {mem['rss_mb']} MB",
            f"peak < {targets['rss_mb']:g} MB" if "rss_mb" in targets else "",
            _check(mem["peak_rss_mb"], lambda v: v < targets["rss_mb"]) if "rss_mb" in targets else "",
        ),
        (
            "bytes sent, all responses (cds/eds/lds/rds)",
            f"{mb(r['bytes_total'])} ({'/'.join(mb(v) for v in r['bytes_by_type'].values())})",
            "",
            "",
        ),
    ]
    env = r.get("envoy")
    if env and env.get("envoys"):
        ok = env["live"] == env["envoys"] and env["acked"] == env["envoys"] and not env["nacks"]
        rows.append(
            (
                f"real Envoys: LIVE / all types acked / NACKs (of {env['envoys']})",
                f"{env['live']} / {env['acked']} / {len(env['nacks'])}",
                "all acked, no NACK",
                "met" if ok else "MISSED",
            )
        )
        same = env["clusters"] == env["served"] and len(env["clusters"]) == env["envoys"]
        rows.append(("real Envoys: clusters held / served by meshd", f"{env['clusters']} / {env['served']}",
                     "equal", "met" if same else "MISSED"))  # fmt: skip
    return rows


def churn_rows(r: dict[str, Any]) -> list[Row]:
    return [
        (f"{r['services_per_round']} services' endpoints changed per second, for", f"{r['rounds']} s", "", ""),
        ("meshd RSS after warm-up -> end (max)",
         f"{r['rss_first_mb']} -> {r['rss_last_mb']} ({r['rss_max_mb']}) MB", "", ""),
        ("meshd RSS growth", f"{r['rss_growth_pct']} %", "< 10 %", _check(r["rss_growth_pct"], lambda v: v < 10)),
        ("most rounds any proxy was behind", r["max_rounds_behind"], "<= 1",
         _check(r["max_rounds_behind"], lambda v: v <= 1)),
        ("rounds not at every proxy before the next round / never",
         f"{r['rounds_late']} / {r['rounds_never']}", "", ""),
        ("round convergence p50 / p99 (proxies needing a round)",
         f"{r['round_p50_ms']} / {r['round_p99_ms']} ms ({r['needed_proxies_per_round']})", "", ""),
        ("after settling: proxies holding final endpoints / holding the clusters",
         f"{r['final_good']} / {r['final_holders']}", "all",
         "met" if r["final_good"] == r["final_holders"] else "MISSED"),
        ("meshd CPU / load client CPU during churn", f"{r['meshd_cpu_s']} s / {r.get('client_cpu_s')} s", "", ""),
    ]  # fmt: skip


def growth_rows(r: dict[str, Any]) -> list[dict[str, Any]]:
    keys = ("services", "proxies", "startup_s", "idle_cpu_pct", "cold_s", "ep_p50_ms", "ep_p99_ms",
            "ep_needed_proxies", "meshd_cpu_ms_per_change", "ep_bytes_per_change")  # fmt: skip
    return [{k: s.get(k) for k in keys} | {"peak_rss_mb": s["meshd_memory"]["peak_rss_mb"]} for s in r["sizes"]]


TARGETS = {
    "isolated": {"cold_s": 5.0, "vs_p99_ms": 300.0, "ep_p99_ms": 200.0, "rss_mb": 400.0},
    "full-mesh": {"overhead": 1.5},
}


def statuses(results: dict[str, Any]) -> list[tuple[str, str]]:
    """(target, met/MISSED) for every target in the issue."""
    out = []
    for name in ("isolated", "full-mesh"):
        r = results.get(name)
        if r and "error" not in r:
            out += [(f"{name}: {_label(row)}", row[3]) for row in mesh_rows(r, TARGETS[name]) if row[2]]
    r = results.get("churn")
    if r and "error" not in r:
        out += [(f"churn: {_label(row)}", row[3]) for row in churn_rows(r) if row[2]]
    r = results.get("growth")
    if r and "error" not in r:
        label = f"growth: time per endpoint change {r['ratio_of']} = {r['ratio']}x, target < 2x"
        out.append((label, _check(r["ratio"], lambda v: v < 2)))
    r = results.get("slowclients")
    if r and "error" not in r:
        label = f"slowclients: change p99 under attack / quiet = {r['ratio']}x, target <= 2x"
        out.append((label, _check(r["ratio"], lambda v: v <= 2)))
    return out


def _label(row: Row) -> str:
    return f"{row[0].split(' (')[0]} = {row[1]}, target {row[2]}"


def summary(results: dict[str, Any]) -> str:
    parts = []
    iso = results.get("isolated")
    if iso and "error" not in iso:
        parts.append(
            f"isolated {iso['services']}svc/{iso['proxies']}px: cold {iso['cold']['cold_s']}s,"
            f" VS p99 {iso['vs']['vs_p99_ms']}ms, EP p99 {iso['ep']['ep_p99_ms']}ms,"
            f" peak {iso['meshd_memory']['peak_rss_mb']}MB"
        )
    full = results.get("full-mesh")
    if full and "error" not in full:
        parts.append(f"full-mesh cold {full['cold']['cold_s']}s overhead {full.get('overhead_cold')}x")
    churn = results.get("churn")
    if churn and "error" not in churn:
        parts.append(f"churn RSS {churn['rss_growth_pct']:+}% behind<={churn['max_rounds_behind']}")
    growth = results.get("growth")
    if growth and "error" not in growth:
        parts.append(f"growth {growth['ratio_of']} {growth['ratio']}x")
    errors = [k for k, v in results.items() if isinstance(v, dict) and "error" in v]
    st = statuses(results)
    met = sum(1 for _, s in st if s == "met")
    tail = f"targets met {met}/{len(st)}" + (f"; FAILED: {','.join(errors)}" if errors else "")
    return "summary: " + "; ".join([*parts, tail])
