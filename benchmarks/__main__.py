"""`make bench [BENCH_ARGS=--quick]`: translation cost per push at several mesh sizes, and push ->
ACK latency against real Envoy (SotW and delta). Prints tables; writes benchmarks/results/latest.json."""

from __future__ import annotations

import argparse
import asyncio
import json
import pathlib
from typing import Any

from benchmarks import envoy_bench, translate_bench


def _table(rows: list[dict[str, Any]]) -> str:
    keys = list(rows[0])
    widths = {k: max(len(k), *(len(str(r[k])) for r in rows)) for k in keys}
    lines = ["  ".join(k.rjust(widths[k]) for k in keys)]
    lines += ["  ".join(str(r[k]).rjust(widths[k]) for k in keys) for r in rows]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks")
    parser.add_argument("--quick", action="store_true", help="small sizes, about a minute")
    parser.add_argument("--out", default="benchmarks/results/latest.json")
    args = parser.parse_args()

    sizes = (
        [(100, 10, 100), (1000, 100, 200)]
        if args.quick
        else [(100, 10, 100), (1000, 100, 500), (5000, 100, 1000)]
    )
    translate = []
    for services, namespaces, proxies in sizes:
        translate.append(translate_bench.run(services=services, namespaces=namespaces, proxies=proxies))
        print(f"translate {services} services done", flush=True)
    print("\n== translation per push (in process, one core) ==")
    print(_table(translate))

    changes = 10 if args.quick else 40
    services = 50 if args.quick else 500
    envoy = [asyncio.run(envoy_bench.run(services=services, changes=changes, delta=d)) for d in (False, True)]
    print("\n== push -> ACK against a real Envoy (file poll 100 ms + debounce 100 ms included end to end) ==")
    print(_table(envoy))

    out = pathlib.Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"translate": translate, "envoy": envoy}, indent=2))
    big, sotw, delta = translate[-1], envoy[0], envoy[1]
    print(
        f"\nsummary: {big['services']} services/{big['proxies']} proxies push {big['total_ms']} ms;"
        f" envoy file->route p50 sotw {sotw['file_to_envoy_p50_ms']} ms delta {delta['file_to_envoy_p50_ms']} ms;"
        f" change->ACK mean sotw {sotw['change_to_ack_mean_ms']} ms delta {delta['change_to_ack_mean_ms']} ms"
    )


if __name__ == "__main__":
    main()
