"""The security scenario: what meshd's CA and its secure port (15012) cost.

meshd runs as its own process (standalone, CA on, a token file); this process is the client.
- CSR signing: sequential latency over one TLS channel, then throughput with 16 in flight, and
  meshd's CPU per certificate (CSRs and keys are made before the clock starts).
- xDS over the secure port: the same full-mesh CDS+EDS fetched by proxies with workload
  certificates over mTLS on 15012 (through meshd's TLS front), and over plaintext 15010; meshd's CPU
  per MB sent on each, and their ratio.
"""

from __future__ import annotations

import asyncio
import pathlib
import statistics
import time
from typing import Any

import grpc
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import base_pb2
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2

from benchmarks.meshdir import MeshDir, MeshSpec
from benchmarks.procs import MeshdProcess, free_port
from meshd._gen.istio.v1.auth import ca_pb2, ca_pb2_grpc
from meshd.agent.ca_client import generate_csr, secure_channel

CDS = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
EDS = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"
TOKEN = "bench-token"


async def _sign(stub: Any, csr: str) -> list[str]:
    request = ca_pb2.IstioCertificateRequest(csr=csr, validity_duration=3600)
    response = await stub.CreateCertificate(request, metadata=(("authorization", f"Bearer {TOKEN}"),), timeout=30)
    return list(response.cert_chain)


async def _fetch(channel: grpc.aio.Channel, node_id: str) -> int:
    """One proxy's CDS, then the EDS of every cluster; returns the bytes received."""
    stub = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel)
    node = base_pb2.Node(id=node_id, cluster="bench")
    requests: asyncio.Queue[discovery_pb2.DiscoveryRequest | None] = asyncio.Queue()
    await requests.put(discovery_pb2.DiscoveryRequest(node=node, type_url=CDS))

    async def feed() -> Any:
        while (item := await requests.get()) is not None:
            yield item

    call = stub.StreamAggregatedResources(feed())
    received = 0
    async for response in call:
        received += response.ByteSize()
        if response.type_url == CDS:
            await requests.put(
                discovery_pb2.DiscoveryRequest(
                    type_url=CDS, version_info=response.version_info, response_nonce=response.nonce
                )
            )
            names = []
            for resource in response.resources:
                cluster = cluster_pb2.Cluster()
                resource.Unpack(cluster)
                if cluster.type == cluster_pb2.Cluster.EDS:
                    names.append(cluster.name)
            await requests.put(discovery_pb2.DiscoveryRequest(type_url=EDS, resource_names=names))
        else:
            break
    await requests.put(None)
    call.cancel()
    return received


async def run(
    *, work: pathlib.Path, services: int, proxies: int, csrs: int, workers: tuple[int, ...] = (1, 2)
) -> dict[str, Any]:
    mesh = MeshDir(MeshSpec(services=services, namespaces=1, sidecar=False), work / "config")
    mesh.write_all()
    ca_dir, tokens = work / "ca", work / "tokens.yaml"
    tokens.write_text(f"{TOKEN}: {{namespace: ns-0, serviceAccount: bench}}\n")
    rows: list[dict[str, Any]] = []
    for count in workers:
        rows += await _one_meshd(
            work=work, mesh=mesh, ca_dir=ca_dir, tokens=tokens, proxies=proxies, csrs=csrs, workers=count
        )
    return {"rows": rows}


async def _one_meshd(
    *,
    work: pathlib.Path,
    mesh: MeshDir,
    ca_dir: pathlib.Path,
    tokens: pathlib.Path,
    proxies: int,
    csrs: int,
    workers: int,
) -> list[dict[str, Any]]:
    """The figures of one meshd with `workers` processes serving the xDS ports (1: the main process).
    With workers, each CSR goes through the worker that holds the connection to the main process."""
    suffix = f" [--workers {workers}]" if workers > 1 else ""
    secure_port = free_port()
    meshd = MeshdProcess(
        config_dir=mesh.dir,
        log_path=work / f"meshd-security-{workers}.log",
        poll_interval=0.5,
        extra_args=("--ca-dir", str(ca_dir), "--ca-token-file", str(tokens), "--secure-host", "127.0.0.1",
                    "--secure-port", str(secure_port), "--workers", str(workers)),
    )  # fmt: skip
    await meshd.start(timeout=60)
    rows: list[dict[str, Any]] = []
    try:
        root = (ca_dir / "root-cert.pem").read_text()
        address = f"127.0.0.1:{secure_port}"
        pairs = [generate_csr() for _ in range(csrs)]
        async with secure_channel(address=address, root_cert_pem=root) as channel:
            stub = ca_pb2_grpc.IstioCertificateServiceStub(channel)
            await _sign(stub, pairs[0][1])  # warm the channel
            latencies = []
            for _, csr in pairs[: csrs // 2]:
                t0 = time.perf_counter()
                await _sign(stub, csr)
                latencies.append((time.perf_counter() - t0) * 1000)
            cpu0, t0 = meshd.cpu(), time.perf_counter()
            limit = asyncio.Semaphore(16)

            async def one(csr: str) -> list[str]:
                async with limit:
                    return await _sign(stub, csr)

            chains = await asyncio.gather(*(one(csr) for _, csr in pairs[csrs // 2 :]))
            elapsed, cpu = time.perf_counter() - t0, meshd.cpu() - cpu0
        signed = len(chains)
        latencies.sort()
        p50, p99 = statistics.median(latencies), latencies[int(len(latencies) * 0.99) - 1]
        rows.append({"figure": f"CSR latency p50 / p99 (sequential){suffix}", "value": f"{p50:.1f} / {p99:.1f} ms"})
        rows.append({"figure": f"CSRs signed per second (16 in flight){suffix}", "value": f"{signed / elapsed:.0f}"})
        rows.append({"figure": f"meshd CPU per certificate{suffix}", "value": f"{cpu / signed * 1000:.2f} ms"})

        key, chain = pairs[csrs // 2][0], chains[0]  # chains[0] was signed for the first concurrent CSR
        node_ids = [mesh.node_id(ip=f"127.0.250.{i + 1}", pod=f"bench-{i}", namespace="ns-0") for i in range(proxies)]

        def mtls() -> grpc.aio.Channel:
            return secure_channel(address=address, root_cert_pem=root, client_cert=("".join(chain), key))

        if workers == 1:  # one connection for all: what a byte costs on each port
            per_port: dict[str, float] = {}
            for label, make in (
                ("plaintext 15010", lambda: grpc.aio.insecure_channel(meshd.target)),
                ("mTLS 15012 (TLS front)", mtls),
            ):
                async with make() as channel:
                    await _fetch(channel, node_ids[0])  # warm: config built, channel up
                    cpu0, t0 = meshd.cpu(), time.perf_counter()
                    sizes = await asyncio.gather(*(_fetch(channel, node) for node in node_ids))
                    elapsed, cpu = time.perf_counter() - t0, meshd.cpu() - cpu0
                megabytes = sum(sizes) / 1e6
                per_port[label] = cpu / megabytes
                figure = f"xDS {label}: {proxies} proxies, {megabytes:.1f} MB"
                rows.append(
                    {"figure": figure, "value": f"{elapsed:.2f} s, meshd CPU {cpu / megabytes * 1000:.1f} ms/MB"}
                )
            ratio = per_port["mTLS 15012 (TLS front)"] / per_port["plaintext 15010"]
            rows.append({"figure": "meshd CPU per MB, secure / plaintext", "value": f"{ratio:.2f}x"})
        # a connection per proxy, as Envoys have: the kernel spreads them over the workers
        channels = [mtls() for _ in node_ids]
        try:
            await asyncio.gather(*(channel.channel_ready() for channel in channels))
            cpu0, t0 = meshd.cpu(), time.perf_counter()
            sizes = await asyncio.gather(*(_fetch(c, node) for c, node in zip(channels, node_ids, strict=True)))
            elapsed, cpu = time.perf_counter() - t0, meshd.cpu() - cpu0
        finally:
            await asyncio.gather(*(channel.close() for channel in channels))
        figure = f"xDS mTLS 15012, {proxies} proxies each on its own connection, {sum(sizes) / 1e6:.1f} MB{suffix}"
        rows.append({"figure": figure, "value": f"{elapsed:.2f} s, meshd CPU {cpu:.2f} s (all processes)"})
    finally:
        await meshd.stop()
    return rows
