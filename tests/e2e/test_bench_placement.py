"""The placement benchmark's harness (benchmarks/placement_bench.py, `make bench BENCH_ARGS=--scenarios=placement`)
at a tiny size: meshd with 2 workers and the CA, proxies on 15012 through relays bound to their pods'
addresses. With namespace placement each namespace's proxies are on one worker; with the kernel's spread
they are not."""

from __future__ import annotations

import pathlib

import pytest

from benchmarks import placement_bench

pytestmark = [pytest.mark.e2e]


async def test_namespace_placement_puts_each_namespace_on_one_worker(tmp_path: pathlib.Path) -> None:
    result = await placement_bench.run(work=tmp_path, services=40, namespaces=4, per_namespace=4, rounds=1)
    rows = {row["placement"]: row for row in result["rows"]}
    assert set(rows) == {"namespace", "kernel"} and result["proxies"] == 16
    for row in rows.values():
        assert row["storm_s"] > 0 and row["cpu_s"] > 0 and row["rss_mb"] > 0, row
    placed = [int(n) for n in rows["namespace"]["namespaces_per_worker"].split("/")]
    assert sum(placed) == 4, rows  # every namespace on exactly one worker
    spread = [int(n) for n in rows["kernel"]["namespaces_per_worker"].split("/")]
    # the kernel's spread: a namespace's 4 proxies all on one worker 1 time in 8, so all 4 namespaces 1 in 4096
    assert sum(spread) > 4, rows
