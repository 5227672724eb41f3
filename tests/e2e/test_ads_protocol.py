"""The ADS server over real gRPC (grpcio client): a malformed node id closes only that stream
with INVALID_ARGUMENT; a well-formed one is answered, also when it reconnects to a restarted meshd with
the old nonce; no config before the source is loaded."""

from __future__ import annotations

import asyncio
import pathlib
import re
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from envoy.config.core.v3 import base_pb2
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2

from meshd.xds.resource import CLUSTER
from tests.e2e.harness import Meshd, eventually

pytestmark = pytest.mark.e2e
GOOD_ID = "sidecar~127.0.0.77~probe.default~default.svc.cluster.local"


@pytest.fixture
async def meshd(tmp_path: pathlib.Path) -> AsyncIterator[Meshd]:
    config = tmp_path / "config"
    config.mkdir()
    (config / "svc.yaml").write_text(
        "apiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: default}\n"
        "spec:\n  ports: [{name: http, port: 9080}]\n"
    )
    server = Meshd(config_dir=config, log_path=tmp_path / "meshd.log")
    await server.start()
    try:
        yield server
    finally:
        await server.close()


async def _first_response(channel: grpc.aio.Channel, node_id: str) -> discovery_pb2.DiscoveryResponse:
    stub = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel)
    call = stub.StreamAggregatedResources()
    await call.write(discovery_pb2.DiscoveryRequest(node=base_pb2.Node(id=node_id), type_url=CLUSTER))
    response = await call.read()
    call.cancel()
    return response


@pytest.mark.parametrize(
    ("node_id", "reason"),
    [
        ("garbage", "must have 4"),
        ("sidecar~not-an-ip~probe.default~default.svc.cluster.local", "is not an IP address"),
        ("gateway~127.0.0.1~probe.default~default.svc.cluster.local", "is not one of sidecar, router"),
        ("sidecar~127.0.0.1~probe~default.svc.cluster.local", "must be <pod>.<namespace>"),
    ],
)
async def test_malformed_node_id_is_refused_and_nothing_else_is_touched(
    meshd: Meshd, node_id: str, reason: str
) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{meshd.xds_port}") as channel:
        stub = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel)
        call = stub.StreamAggregatedResources()
        await call.write(discovery_pb2.DiscoveryRequest(node=base_pb2.Node(id=node_id), type_url=CLUSTER))
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await call.read()
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert reason in (err.value.details() or "")

        # The server is healthy and a correct proxy on the same channel is served.
        response = await _first_response(channel, GOOD_ID)
    names = {any_.type_url for any_ in response.resources}
    assert response.type_url == CLUSTER and names == {CLUSTER}
    assert await meshd.ready()
    # Only well-formed proxies are ever registered (the good stream may still be closing).
    assert all(c["proxy"] == GOOD_ID for c in await meshd.get_json("/debug/syncz"))
    assert "event=rejected_stream" in meshd.log()


async def test_a_proxy_reconnecting_to_a_restarted_meshd_with_its_old_nonce_and_version_is_answered(
    meshd: Meshd,
) -> None:
    # Envoy's first request after a reconnect carries the version it holds and the previous server's
    # nonce (issue 20, low: it used to get no response at all).
    node = base_pb2.Node(id=GOOD_ID)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{meshd.xds_port}") as channel:
        held = await _first_response(channel, GOOD_ID)
        await meshd.stop()
        await meshd.start()
        call = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel).StreamAggregatedResources()
        await call.write(
            discovery_pb2.DiscoveryRequest(
                node=node, type_url=CLUSTER, version_info=held.version_info, response_nonce=held.nonce
            )
        )
        response = await asyncio.wait_for(call.read(), 20)
        call.cancel()
    assert response.type_url == CLUSTER
    assert response.version_info == held.version_info  # same config: answered all the same
    assert response.nonce != held.nonce
    assert len(response.resources) == len(held.resources)


def _deep(request: Any, depth: int) -> Any:
    """The request with node metadata nested `depth` levels (built in place: copying it would parse it)."""
    request.node.id = GOOD_ID
    value: dict[str, object] = {"INTERCEPTION_MODE": "REDIRECT"}
    for _ in range(depth - 1):
        value = {"x": value}
    request.node.metadata.update(value)
    return request


@pytest.mark.parametrize(
    ("delta", "depth", "reason"),
    [
        pytest.param(False, 25, "nested deeper than 20", id="sotw-25-levels-parsed-then-refused"),
        pytest.param(False, 40, "cannot be parsed", id="sotw-40-levels-beyond-protobuf"),
        pytest.param(True, 40, "cannot be parsed", id="delta-40-levels-beyond-protobuf"),
    ],
)
async def test_deeply_nested_node_metadata_ends_the_stream_with_invalid_argument(
    meshd: Meshd, delta: bool, depth: int, reason: str
) -> None:
    # Issue 20, low: metadata nested 40 levels closed the stream silently with status OK.
    async with grpc.aio.insecure_channel(f"127.0.0.1:{meshd.xds_port}") as channel:
        stub = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel)
        if delta:
            call: Any = stub.DeltaAggregatedResources()
            await call.write(_deep(discovery_pb2.DeltaDiscoveryRequest(type_url=CLUSTER), depth))
        else:
            call = stub.StreamAggregatedResources()
            await call.write(_deep(discovery_pb2.DiscoveryRequest(type_url=CLUSTER), depth))
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await asyncio.wait_for(call.read(), 20)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, err.value.details()
        assert reason in (err.value.details() or "")
        response = await _first_response(channel, GOOD_ID)  # the server is fine
    assert response.type_url == CLUSTER and response.resources


async def test_an_unparsable_request_later_on_a_stream_ends_it_with_invalid_argument(meshd: Meshd) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{meshd.xds_port}") as channel:
        call = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel).StreamAggregatedResources()
        await call.write(discovery_pb2.DiscoveryRequest(node=base_pb2.Node(id=GOOD_ID), type_url=CLUSTER))
        first = await asyncio.wait_for(call.read(), 20)
        await call.write(_deep(discovery_pb2.DiscoveryRequest(type_url=CLUSTER, response_nonce=first.nonce), 40))
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await asyncio.wait_for(call.read(), 20)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, err.value.details()
    assert "cannot be parsed" in (err.value.details() or "")


async def test_the_config_directory_is_watched_by_file_events(meshd: Meshd) -> None:
    # Events cost nothing while idle; polling is only the fallback (--file-watch poll).
    assert "event=watching" in meshd.log() and "mode=events" in meshd.log()


async def test_config_dump_debug_endpoint_shows_the_proxy_config(meshd: Meshd) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{meshd.xds_port}") as channel:
        stub = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel)
        call = stub.StreamAggregatedResources()
        await call.write(discovery_pb2.DiscoveryRequest(node=base_pb2.Node(id=GOOD_ID), type_url=CLUSTER))
        response = await call.read()
        assert response.version_info
        dump = await meshd.get_json("/debug/config_dump?proxyID=probe.default")
        call.cancel()
    assert [c["name"] for c in dump["cds"]] == ["outbound|9080||web.default.svc.cluster.local"]
    assert [listener["name"] for listener in dump["lds"]] == ["127.0.0.77_9080"]
    missing = await meshd.get_json("/debug/config_dump?proxyID=nobody.default")
    assert "not connected" in missing["error"]


async def test_a_stuck_proxy_is_disconnected_and_never_delays_the_others(tmp_path: pathlib.Path) -> None:
    config = tmp_path / "config"
    config.mkdir()
    # Enough services that one CDS response overflows a small HTTP/2 flow-control window.
    (config / "many.yaml").write_text(
        "---\n".join(
            f"apiVersion: v1\nkind: Service\nmetadata: {{name: svc-{i}, namespace: default}}\n"
            "spec:\n  ports: [{name: http, port: 9080}]\n"
            for i in range(300)
        )
    )
    server = Meshd(config_dir=config, log_path=tmp_path / "meshd.log", extra_args=("--send-timeout", "1"))
    await server.start()
    tiny_window = [("grpc.http2.lookahead_bytes", 1024), ("grpc.http2.bdp_probe", 0)]
    try:
        async with (
            grpc.aio.insecure_channel(f"127.0.0.1:{server.xds_port}", options=tiny_window) as stuck_channel,
            grpc.aio.insecure_channel(f"127.0.0.1:{server.xds_port}") as channel,
        ):
            stuck = ads_pb2_grpc.AggregatedDiscoveryServiceStub(stuck_channel).StreamAggregatedResources()
            stuck_id = "sidecar~127.0.0.78~stuck.default~default.svc.cluster.local"
            await stuck.write(discovery_pb2.DiscoveryRequest(node=base_pb2.Node(id=stuck_id), type_url=CLUSTER))
            # ...and never reads. Other proxies are served meanwhile.
            for n in range(3):
                response = await _first_response(
                    channel, f"sidecar~127.0.0.{80 + n}~ok{n}.default~default.svc.cluster.local"
                )
                assert len(response.resources) == 300

            async def dropped() -> bool:
                status = await server.get_json("/debug/syncz")
                return "event=stuck_proxy" in server.log() and all(c["proxy"] != stuck_id for c in status)

            await eventually(dropped, timeout=10, what="the stuck proxy to be disconnected")
            stuck.cancel()
            # A push is counted when it is handed to the stream, before the write completes: the
            # counter never lags what a proxy already holds (and the stuck proxy's push counts too).
            pushed = re.search(r'^pilot_xds_pushes\{type="cds"\} ([\d.]+)$', await server.metrics(), re.M)
            assert pushed is not None and float(pushed[1]) == 4
    finally:
        await server.close()
