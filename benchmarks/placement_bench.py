"""`--scenarios placement`: which worker serves a secure-port connection, by namespace or by the kernel.

meshd runs standalone with the CA and `--workers 2`, once with `--worker-placement namespace` (the
default) and once with `--worker-placement kernel`, in alternating rounds. The mesh has a Sidecar per
namespace. Each proxy opens its own TLS connection to 15012, authenticated by its namespace's token, and
asks for CDS and LDS. Its scope is built by the worker that serves it.

The main process places a caller by the address it connects from. A proxy here connects from one of its
namespace's pod addresses: a TCP relay per namespace, in this process, binds that address (any
127.0.0.0/8 address is local). meshd sees the same connection a sidecar in that pod would open.

Figures per round:
- the storm's duration, until every proxy has both responses;
- the CPU meshd's processes used in it;
- the sum of their RSS after it;
- how many namespaces each worker holds proxies of, i.e. how many scopes it built.
"""

from __future__ import annotations

import asyncio
import pathlib
import time
from typing import Any

import grpc
from envoy.config.core.v3 import base_pb2
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2

from benchmarks.meshdir import MeshDir, MeshSpec
from benchmarks.procs import MeshdProcess, free_port

CDS = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
LDS = "type.googleapis.com/envoy.config.listener.v3.Listener"


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(1 << 16):
            writer.write(data)
            await writer.drain()
    except (OSError, asyncio.IncompleteReadError):
        pass
    finally:
        writer.close()


async def _relay(target_port: int, source: str) -> tuple[asyncio.Server, int]:
    """A TCP relay on loopback to meshd's secure port, connecting from `source`; its port."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", target_port, local_addr=(source, 0))
        except OSError:
            writer.close()
            return
        await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, int(server.sockets[0].getsockname()[1])


async def _storm(
    mesh: MeshDir, proxies: list[int], ports: dict[str, int], root: bytes, meshd: MeshdProcess
) -> tuple[float, list[dict[str, Any]]]:
    """Every proxy (service i's pod 0) on its own connection through its namespace's relay: CDS and LDS.
    Returns the storm's seconds and meshd's /debug/syncz rows, read while every stream is still open."""
    credentials = grpc.ssl_channel_credentials(root)
    channels: list[grpc.aio.Channel] = []
    calls: list[Any] = []

    async def one(i: int) -> None:
        namespace = mesh.namespace(i)
        channel = grpc.aio.secure_channel(
            f"127.0.0.1:{ports[namespace]}", credentials, options=[("grpc.use_local_subchannel_pool", 1)]
        )
        channels.append(channel)
        call = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel).StreamAggregatedResources(
            metadata=(("authorization", f"Bearer tok-{namespace}"),)
        )
        calls.append(call)
        await call.write(discovery_pb2.DiscoveryRequest(node=base_pb2.Node(id=mesh.pod_node_id(i, 0)), type_url=CDS))
        await call.write(discovery_pb2.DiscoveryRequest(type_url=LDS))
        seen: set[str] = set()
        while len(seen) < 2:
            response = await asyncio.wait_for(call.read(), 60)
            seen.add(response.type_url)

    t0 = time.perf_counter()
    try:
        await asyncio.gather(*(one(i) for i in proxies))
        storm_s = time.perf_counter() - t0
        return storm_s, await meshd.get_json("/debug/syncz")
    finally:
        for call in calls:
            call.cancel()
        for channel in channels:
            await channel.close()


async def _one(work: pathlib.Path, mesh: MeshDir, placement: str, proxies: list[int]) -> dict[str, Any]:
    secure_port = free_port()
    ca_dir, tokens = work / "ca", work / "tokens.yaml"
    meshd = MeshdProcess(
        config_dir=mesh.dir,
        log_path=work / f"meshd-placement-{placement}.log",
        poll_interval=0.5,
        extra_args=("--ca-dir", str(ca_dir), "--ca-token-file", str(tokens), "--secure-host", "127.0.0.1",
                    "--secure-port", str(secure_port), "--workers", "2", "--worker-placement", placement),
    )  # fmt: skip
    await meshd.start(timeout=120)
    relays: list[asyncio.Server] = []
    try:
        ports: dict[str, int] = {}
        for n in range(mesh.spec.namespaces):  # service n is in namespace n: its pod 0's address
            server, port = await _relay(secure_port, mesh.pod_ip(n, 0))
            relays.append(server)
            ports[mesh.namespace(n)] = port
        cpu0 = meshd.cpu()
        storm_s, rows = await _storm(mesh, proxies, ports, (ca_dir / "root-cert.pem").read_bytes(), meshd)
        cpu_s = meshd.cpu() - cpu0
        rss = meshd.memory()["rss_mb"]
        held: dict[int, set[str]] = {}
        for row in rows:
            held.setdefault(int(row["worker"]), set()).add(row["proxy"].split("~")[2].split(".")[1])
        return {
            "placement": placement,
            "storm_s": round(storm_s, 2),
            "cpu_s": round(cpu_s, 2),
            "rss_mb": round(rss),
            "namespaces_per_worker": "/".join(str(len(held.get(w, ()))) for w in (0, 1)),
        }
    finally:
        for server in relays:
            server.close()
        await meshd.stop()


async def run(*, work: pathlib.Path, services: int, namespaces: int, per_namespace: int, rounds: int) -> dict[str, Any]:
    mesh = MeshDir(MeshSpec(services=services, namespaces=namespaces, sidecar=True), work / "placement-config")
    mesh.write_all()
    (work / "tokens.yaml").write_text(
        "".join(f"tok-{mesh.namespace(n)}: {{namespace: {mesh.namespace(n)}, serviceAccount: default}}\n"
                for n in range(namespaces))
    )  # fmt: skip
    proxies = list(range(namespaces * per_namespace))  # service i is in namespace i % namespaces
    rows = []
    for k in range(rounds):
        for placement in ("namespace", "kernel") if k % 2 == 0 else ("kernel", "namespace"):
            rows.append(await _one(work, mesh, placement, proxies))
    return {"services": services, "namespaces": namespaces, "proxies": len(proxies), "rows": rows}
