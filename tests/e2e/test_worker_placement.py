"""`meshd serve --workers 2` with the CA: which worker serves a connection to the secure port.

meshd runs as a real process with two workers. Real gRPC ADS clients each open their own TLS
connection, authenticated by a bearer token. `/debug/syncz` then says which worker holds each stream.
Every client here connects from 127.0.0.1, so that address decides:
- the address of a Pod: every stream in that pod's namespace's worker (`--worker-placement namespace`,
  the default);
- an unknown address: spread over both, as the kernel spreads them with `--worker-placement kernel`.
"""

from __future__ import annotations

import asyncio
import pathlib
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from envoy.config.core.v3 import base_pb2
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2

from tests.ca_fixture import TOKEN_FILE
from tests.e2e.harness import Meshd

CLUSTER_TYPE = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
SERVICE = """\
apiVersion: v1
kind: Service
metadata: {name: web, namespace: default}
spec:
  selector: {app: web}
  ports: [{name: http, port: 9080, targetPort: 8080}]
"""
POD_AT_LOOPBACK = """\
---
apiVersion: v1
kind: Pod
metadata: {name: web-0, namespace: default, labels: {app: web}}
spec: {serviceAccountName: web}
status: {podIP: 127.0.0.1}
"""
STREAMS = 16  # spread at random, all 16 on one worker 1 time in 32768
pytestmark = pytest.mark.e2e


async def _meshd(tmp_path: pathlib.Path, *, config: str, placement: str) -> Meshd:
    directory = tmp_path / "config"
    directory.mkdir()
    (directory / "mesh.yaml").write_text(config)
    tokens = tmp_path / "tokens.yaml"
    tokens.write_text(TOKEN_FILE)
    args = ("--ca-token-file", str(tokens), "--workers", "2", "--worker-placement", placement)
    server = Meshd(config_dir=directory, log_path=tmp_path / "meshd.log", extra_args=args)
    await server.start()
    return server


async def _streams(meshd: Meshd, count: int) -> AsyncIterator[list[str]]:
    """`count` ADS streams in namespace default, each on its own TLS connection, each answered; their node ids."""
    root = (meshd.ca_dir / "root-cert.pem").read_bytes()
    options = [("grpc.use_local_subchannel_pool", 1)]  # a connection per channel
    channels = [
        grpc.aio.secure_channel(f"127.0.0.1:{meshd.secure_port}", grpc.ssl_channel_credentials(root), options=options)
        for _ in range(count)
    ]
    calls: list[Any] = []
    nodes = [f"sidecar~127.0.0.1~web-{i}.default~default.svc.cluster.local" for i in range(count)]
    try:
        for channel, node in zip(channels, nodes, strict=True):
            call = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel).StreamAggregatedResources(
                metadata=(("authorization", "Bearer tok-web"),)
            )
            await call.write(discovery_pb2.DiscoveryRequest(node=base_pb2.Node(id=node), type_url=CLUSTER_TYPE))
            calls.append(call)
        for call in calls:
            response = await asyncio.wait_for(call.read(), 20)
            assert isinstance(response, discovery_pb2.DiscoveryResponse) and response.resources
        yield nodes
    finally:
        for call in calls:
            call.cancel()
        for channel in channels:
            await channel.close()


async def _workers_of(meshd: Meshd, nodes: list[str]) -> dict[str, int]:
    rows = await meshd.get_json("/debug/syncz")
    held = {row["proxy"]: row["worker"] for row in rows}
    assert set(nodes) <= set(held), sorted(set(nodes) - set(held))
    return {node: held[node] for node in nodes}


async def test_callers_at_a_pods_address_meet_in_its_namespaces_worker(tmp_path: pathlib.Path) -> None:
    meshd = await _meshd(tmp_path, config=SERVICE + POD_AT_LOOPBACK, placement="namespace")
    try:
        async for nodes in _streams(meshd, STREAMS):
            placed = await _workers_of(meshd, nodes)
            assert len(set(placed.values())) == 1, placed
        assert "secure_handed_over=True" in meshd.log_path.read_text()
    finally:
        await meshd.close()


@pytest.mark.parametrize("placement", ["namespace", "kernel"])
async def test_callers_at_an_unknown_address_are_spread(tmp_path: pathlib.Path, placement: str) -> None:
    meshd = await _meshd(tmp_path, config=SERVICE, placement=placement)
    try:
        async for nodes in _streams(meshd, STREAMS):
            placed = await _workers_of(meshd, nodes)
            assert set(placed.values()) == {0, 1}, placed
        handed = "secure_handed_over=True" in meshd.log_path.read_text()
        assert handed == (placement == "namespace")
    finally:
        await meshd.close()
