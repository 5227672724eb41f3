"""Issue 20, items 2 and 3 against the real `meshd serve` process: a WorkloadEntry with `ports: {http: -1}`
while proxies are connected, and a `kind: [Service]` document present at start, do not stop meshd;
the proxies that do not see the bad input keep being updated, and meshd starts again with it present."""

from __future__ import annotations

import asyncio
import pathlib
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from envoy.config.core.v3 import base_pb2
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2

from meshd.xds.resource import CLUSTER
from tests.e2e.harness import Meshd, eventually

pytestmark = pytest.mark.e2e

BAD_KIND = "apiVersion: v1\nkind: [Service]\nmetadata: {name: confused, namespace: default}\n"
WEB = """\
apiVersion: v1
kind: Service
metadata: {name: web, namespace: default}
spec: {ports: [{name: http, port: 80}]}
---
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {name: default, namespace: other}
spec: {egress: [{hosts: ["./*"]}]}
"""
API = (
    "apiVersion: v1\nkind: Service\nmetadata: {name: api, namespace: other}\nspec: {ports: [{name: http, port: 80}]}\n"
)


def _vm(port: int) -> str:
    return f"""\
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: vm, namespace: default}}
spec:
  hosts: [vm.example.com]
  ports: [{{number: 80, name: http, protocol: HTTP}}]
  resolution: STATIC
  workloadSelector: {{labels: {{app: vm}}}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: vm-1, namespace: default}}
spec: {{address: 10.9.9.9, labels: {{app: vm}}, ports: {{http: {port}}}}}
"""


class Ads:
    """A plaintext SotW ADS client asking for every cluster."""

    def __init__(self, meshd: Meshd, namespace: str) -> None:
        self.channel = grpc.aio.insecure_channel(f"127.0.0.1:{meshd.xds_port}")
        self.call: Any = ads_pb2_grpc.AggregatedDiscoveryServiceStub(self.channel).StreamAggregatedResources()
        self.node = base_pb2.Node(id=f"sidecar~10.8.0.1~p.{namespace}~{namespace}.svc.cluster.local")

    async def start(self) -> None:
        await self.call.write(discovery_pb2.DiscoveryRequest(node=self.node, type_url=CLUSTER))

    async def clusters_until(self, wanted: str) -> set[str]:
        async def read() -> set[str] | None:
            response = await asyncio.wait_for(self.call.read(), 20)
            await self.call.write(
                discovery_pb2.DiscoveryRequest(
                    node=self.node, type_url=CLUSTER, version_info=response.version_info, response_nonce=response.nonce
                )
            )
            names = {r.value.decode(errors="replace") for r in response.resources}
            if not wanted or any(wanted in n for n in names):
                return names or {"<no clusters>"}  # (a falsy value would mean "not yet")
            return None

        return await eventually(read, timeout=30, interval=0.01, what=f"a CDS response with {wanted}")  # type: ignore[no-any-return]

    async def close(self) -> None:
        self.call.cancel()
        await self.channel.close()


@pytest.fixture
async def meshd(tmp_path: pathlib.Path) -> AsyncIterator[Meshd]:
    config = tmp_path / "config"
    config.mkdir()
    (config / "bad-kind.yaml").write_text(BAD_KIND)
    (config / "web.yaml").write_text(WEB)
    server = Meshd(config_dir=config, log_path=tmp_path / "meshd.log")
    try:
        yield server
    finally:
        await server.close()


async def test_bad_inputs_never_stop_meshd_and_other_proxies_are_updated(meshd: Meshd) -> None:
    await meshd.start()  # with `kind: [Service]` in the directory
    errors = await meshd.get_json("/debug/config_errors")
    assert any(e["field"].endswith("kind") and "['Service']" in e["message"] for e in errors), errors
    assert meshd.config_dir is not None
    shop, other = Ads(meshd, "default"), Ads(meshd, "other")
    try:
        for client in (shop, other):
            await client.start()
        await shop.clusters_until("web.default")
        await other.clusters_until("")  # its first response

        (meshd.config_dir / "vm.yaml").write_text(_vm(-1))  # once made meshd exit with code 1
        (meshd.config_dir / "api.yaml").write_text(API)
        await other.clusters_until("api.other")  # the proxy that does not see vm-1 is still updated

        async def reported() -> bool:
            found = await meshd.get_json("/debug/config_errors")
            return any("vm-1" in str(e) or "p.default" in str(e) for e in found)

        await eventually(reported, what="the bad WorkloadEntry (or the proxy it broke) to be reported")
        assert meshd.process is not None and meshd.process.returncode is None
        assert await meshd.ready()

        (meshd.config_dir / "vm.yaml").write_text(_vm(8080))  # fixed: the default proxy converges
        await shop.clusters_until("vm.example.com")
    finally:
        await shop.close()
        await other.close()

    # meshd starts again with both bad inputs present, and serves the proxies they do not concern.
    (meshd.config_dir / "vm.yaml").write_text(_vm(99999999999))
    await meshd.stop()
    await meshd.start()
    again = Ads(meshd, "other")
    try:
        await again.start()
        await again.clusters_until("api.other")
    finally:
        await again.close()
    assert meshd.process is not None and meshd.process.returncode is None
