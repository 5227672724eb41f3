"""Measurements shared by the scenarios: the reconnect storm, one timed change, a series of changes.

Times are wall-clock (time.time()) in both the driver and the load client, on the same machine:
an event is the moment the driver has replaced a file (or told the reference server to push), and a
proxy has it when the load client has received the response carrying it.
"""

from __future__ import annotations

import asyncio
import inspect
import math
import time
from collections.abc import Callable
from typing import Any

from benchmarks.procs import JsonLinesProcess

POLL_S = 0.05


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    k = max(0, math.ceil(q / 100 * len(ordered)) - 1)
    return ordered[k]


def ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 1)


async def cold_storm(client: JsonLinesProcess, target: str, *, timeout: float) -> dict[str, Any]:
    """Open every stream at once; wait until every proxy holds CDS, LDS and the EDS/RDS they name."""
    t0 = (await client.request("connect", target=target))["t0"]
    deadline = t0 + timeout
    while True:
        state = await client.request("cold")
        if state["converged"] == state["proxies"] or time.time() > deadline:
            break
        if state["gave_up"] >= state["proxies"]:
            break
        await asyncio.sleep(POLL_S)
    last = state["last"]
    complete = state["converged"] == state["proxies"]
    return {
        "proxies": state["proxies"],
        "converged": state["converged"],
        "cold_s": round(last - t0, 3) if complete and last else None,
        "first_s": round(state["first"] - t0, 3) if state["first"] else None,
        "timed_out": not complete,
        "stream_errors": state["stream_errors"],
        "reconnects": state["reconnects"],
        "last_error": state["last_error"],
        "missing": state["missing"],
    }


async def timed_change(
    client: JsonLinesProcess,
    *,
    expect: dict[str, Any],
    act: Callable[[], Any],
    timeout: float,
    quiet: float = 0.3,
) -> dict[str, Any]:
    """Mark, do the change (`act` returns the event time, or an awaitable of it), then wait until
    every proxy that held a resource matching `expect` has received a new version of it, and `quiet`
    seconds pass with no response (to count pushes nobody needed).
    Convergence = the last such proxy's receive time - the event time."""
    mark = (await client.request("mark"))["mark"]
    t_event = act()
    if inspect.isawaitable(t_event):
        t_event = await t_event
    deadline = t_event + timeout
    while True:
        await asyncio.sleep(POLL_S)
        stats = await client.request("stats", mark=mark, expect=expect)
        now = time.time()
        done = stats["done"] == stats["expected"]
        if done and now - max(stats["last_rx"], t_event) >= quiet:
            break
        if now > deadline:
            break
    last = stats["last_done"]
    complete = stats["done"] == stats["expected"] and stats["expected"] > 0
    return {
        "mark": mark,
        "conv_s": last - t_event if complete and last else None,
        "expected": stats["expected"],
        "done": stats["done"],
        "changed_proxies": stats["changed_proxies"],
        "unneeded_proxies": stats["unneeded_proxies"],
        "unneeded_responses": stats["unneeded_responses"],
        "responses": stats["responses"],
        "bytes": stats["bytes"],
    }


def summarise(kind: str, runs: list[dict[str, Any]]) -> dict[str, Any]:
    conv = [r["conv_s"] for r in runs if r["conv_s"] is not None]
    return {
        f"{kind}_changes": len(runs),
        f"{kind}_incomplete": sum(1 for r in runs if r["conv_s"] is None),
        f"{kind}_p50_ms": ms(percentile(conv, 50)),
        f"{kind}_p99_ms": ms(percentile(conv, 99)),
        f"{kind}_max_ms": ms(max(conv) if conv else None),
        f"{kind}_needed_proxies": max((r["expected"] for r in runs), default=0),
        f"{kind}_unneeded_proxies_max": max((r["unneeded_proxies"] for r in runs), default=0),
        f"{kind}_unneeded_proxies_total": sum(r["unneeded_proxies"] for r in runs),
        f"{kind}_bytes_per_change": round(sum(r["bytes"] for r in runs) / len(runs)) if runs else 0,
        f"{kind}_each": [
            {
                "ms": ms(r["conv_s"]),
                "needed": r["expected"],
                "done": r["done"],
                "unneeded": r["unneeded_proxies"],
                "responses": r["responses"],
                "bytes": r["bytes"],
            }
            for r in runs
        ],
    }


async def change_series(
    client: JsonLinesProcess,
    *,
    count: int,
    budget_s: float,
    make: Callable[[int], tuple[dict[str, Any], Callable[[], Any]]],
    timeout: float,
    on_first: Callable[[int], Any] | None = None,
) -> list[dict[str, Any]]:
    """Up to `count` timed changes (make(k) -> (expect, act)), stopping early when the budget is spent."""
    runs: list[dict[str, Any]] = []
    start = time.time()
    for k in range(count):
        if k and time.time() - start > budget_s:
            break
        expect, act = make(k)
        run = await timed_change(client, expect=expect, act=act, timeout=timeout)
        runs.append(run)
        if k == 0 and on_first is not None:
            await on_first(run["mark"])
    return runs
