"""In-process cost of one push: World build, shared clusters/endpoints/routes, per-proxy snapshots."""

from __future__ import annotations

import time
from typing import Any

from benchmarks.synthetic import mesh
from meshd.generate.generator import ConfigGenerator
from meshd.generate.options import GenerateOptions
from meshd.model.world import build_world
from meshd.translate.proxy import parse_node_id


def run(*, services: int, namespaces: int, proxies: int) -> dict[str, Any]:
    resources = mesh(services=services, namespaces=namespaces)
    t0 = time.perf_counter()
    world = build_world(resources, domain_suffix="cluster.local")
    t1 = time.perf_counter()
    generator = ConfigGenerator(world, options=GenerateOptions(inbound_port=15006, sidecar_endpoint_port=15006))
    generator.precompute()
    t2 = time.perf_counter()
    snapshots = []
    for p in range(proxies):
        ns = f"ns-{p % namespaces}"
        proxy = parse_node_id(f"sidecar~10.200.{p >> 8 & 255}.{p & 255}~client-{p}.{ns}~{ns}.svc.cluster.local")
        snapshots.append(generator.snapshot(proxy))
    t3 = time.perf_counter()
    unique: dict[int, int] = {}
    for snap in snapshots:
        for by_name in snap.resources.values():
            for r in by_name.values():
                unique[id(r)] = len(r.body)
    per_proxy_bytes = sum(len(r.body) for by_name in snapshots[0].resources.values() for r in by_name.values())
    return {
        "services": services,
        "proxies": proxies,
        "world_ms": round((t1 - t0) * 1000, 1),
        "shared_ms": round((t2 - t1) * 1000, 1),
        "proxies_ms": round((t3 - t2) * 1000, 1),
        "total_ms": round((t3 - t0) * 1000, 1),
        "resources_per_proxy": sum(len(v) for v in snapshots[0].resources.values()),
        "bytes_per_proxy": per_proxy_bytes,
        "bytes_held_shared": sum(unique.values()),
        "bytes_if_unshared": per_proxy_bytes * proxies,
    }
