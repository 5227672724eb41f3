"""xDS on the secure port (15012): `meshd serve` as a real process; real gRPC ADS clients over TLS and a
real Envoy whose xds cluster uses mTLS with a certificate from meshd's CA. A proxy may only claim a
node in its own identity's namespace. Each test runs with meshd serving the port itself and with two
worker processes serving it."""

from __future__ import annotations

import asyncio
import json
import pathlib
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from envoy.config.core.v3 import base_pb2
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2

from meshd.agent.bootstrap import XDS_CLUSTER, build_bootstrap
from meshd.agent.ca_client import generate_csr, request_certificate, secure_channel
from meshd.agent.envoy import EnvoyProcess
from tests.ca_fixture import TOKEN_FILE
from tests.e2e.harness import Meshd, eventually, mtls_xds_transport, next_subnet

CLUSTER_TYPE = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
CONFIG = """\
apiVersion: v1
kind: Service
metadata: {name: web, namespace: default}
spec:
  selector: {app: web}
  ports: [{name: http, port: 9080, targetPort: 8080}]
"""
pytestmark = pytest.mark.e2e


def _node(namespace: str, ip: str = "127.0.0.9") -> str:
    return f"sidecar~{ip}~pod-1.{namespace}~{namespace}.svc.cluster.local"


@pytest.fixture(params=["1", "2"], ids=["main", "workers"])
async def meshd(request: pytest.FixtureRequest, tmp_path: pathlib.Path) -> AsyncIterator[Meshd]:
    """meshd serving the secure port itself, or from two worker processes (`--workers 2`: each binds it;
    the main process reviews tokens and signs CSRs for them)."""
    config = tmp_path / "config"
    config.mkdir()
    (config / "web.yaml").write_text(CONFIG)
    tokens = tmp_path / "tokens.yaml"
    tokens.write_text(TOKEN_FILE)
    args = ("--ca-token-file", str(tokens), "--workers", request.param)
    server = Meshd(config_dir=config, log_path=tmp_path / "meshd.log", extra_args=args)
    await server.start()
    try:
        yield server
    finally:
        await server.close()


def _root(meshd: Meshd) -> str:
    return (meshd.ca_dir / "root-cert.pem").read_text()


async def _workload_cert(meshd: Meshd, token: str) -> tuple[str, str]:
    key, csr = generate_csr()
    chain = await request_certificate(
        address=f"127.0.0.1:{meshd.secure_port}", root_cert_pem=_root(meshd), token=token, csr_pem=csr, ttl_s=3600
    )
    return "".join(chain), key


async def _ads(
    meshd: Meshd, *, node_id: str, client_cert: tuple[str, str] | None = None, token: str | None = None
) -> Any:
    """Open an ADS stream on the secure port, ask for clusters; the first response, or the AioRpcError."""
    metadata = (("authorization", f"Bearer {token}"),) if token else ()
    async with secure_channel(
        address=f"127.0.0.1:{meshd.secure_port}", root_cert_pem=_root(meshd), client_cert=client_cert
    ) as channel:
        stub = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel)
        call = stub.StreamAggregatedResources(metadata=metadata)
        await call.write(discovery_pb2.DiscoveryRequest(node=base_pb2.Node(id=node_id), type_url=CLUSTER_TYPE))
        try:
            return await asyncio.wait_for(call.read(), 10)
        except grpc.aio.AioRpcError as exc:
            return exc
        finally:
            call.cancel()


async def test_client_cert_namespace_must_match_the_node(meshd: Meshd) -> None:
    other = await _workload_cert(meshd, "tok-api")  # ns other
    refused = await _ads(meshd, node_id=_node("default"), client_cert=other)
    assert isinstance(refused, grpc.aio.AioRpcError) and refused.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "other" in (refused.details() or "")
    mine = await _workload_cert(meshd, "tok-web")  # ns default
    response = await _ads(meshd, node_id=_node("default"), client_cert=mine)
    assert isinstance(response, discovery_pb2.DiscoveryResponse), response
    assert response.type_url == CLUSTER_TYPE and len(response.resources) > 0
    # the "other" workload is served in its own namespace
    response = await _ads(meshd, node_id=_node("other"), client_cert=other)
    assert isinstance(response, discovery_pb2.DiscoveryResponse)


async def test_bearer_token_identity_on_xds(meshd: Meshd) -> None:
    refused = await _ads(meshd, node_id=_node("default"), token="tok-api")
    assert isinstance(refused, grpc.aio.AioRpcError) and refused.code() == grpc.StatusCode.PERMISSION_DENIED
    response = await _ads(meshd, node_id=_node("default"), token="tok-web")
    assert isinstance(response, discovery_pb2.DiscoveryResponse) and response.resources


async def test_no_identity_is_unauthenticated(meshd: Meshd) -> None:
    refused = await _ads(meshd, node_id=_node("default"))
    assert isinstance(refused, grpc.aio.AioRpcError) and refused.code() == grpc.StatusCode.UNAUTHENTICATED
    refused = await _ads(meshd, node_id=_node("default"), token="garbage")
    assert isinstance(refused, grpc.aio.AioRpcError) and refused.code() == grpc.StatusCode.UNAUTHENTICATED
    assert await meshd.ready()


async def test_plaintext_csr_refused_by_the_process(meshd: Meshd) -> None:
    from meshd._gen.istio.v1.auth import ca_pb2, ca_pb2_grpc

    async with grpc.aio.insecure_channel(f"127.0.0.1:{meshd.xds_port}") as channel:
        stub = ca_pb2_grpc.IstioCertificateServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.CreateCertificate(
                ca_pb2.IstioCertificateRequest(csr=generate_csr()[1]), metadata=(("authorization", "Bearer tok-web"),)
            )
    assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
    metrics = await meshd.metrics()
    assert "citadel_server_authentication_failure_count 1.0" in metrics
    assert "citadel_server_csr_count 1.0" in metrics


async def test_envoy_gets_config_over_mtls_on_the_secure_port(meshd: Meshd, tmp_path: pathlib.Path) -> None:
    chain, key = await _workload_cert(meshd, "tok-web")
    files = {"cert-chain.pem": chain, "key.pem": key, "root-cert.pem": _root(meshd)}
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    ip = f"{next_subnet()}.2"
    bootstrap = build_bootstrap(
        node_id=_node("default", ip), cluster="web.default", xds_host="127.0.0.1", xds_port=meshd.secure_port,
        admin_host=ip, admin_port=15000, delta=False,
    )  # fmt: skip
    xds = next(c for c in bootstrap["static_resources"]["clusters"] if c["name"] == XDS_CLUSTER)
    xds["transport_socket"] = mtls_xds_transport(tmp_path)
    envoy = EnvoyProcess(
        bootstrap=bootstrap, work_dir=tmp_path, admin_host=ip, admin_port=15000, name="web", log_level="warning"
    )
    async with envoy:
        await envoy.wait_ready(timeout_s=20)

        async def has_config() -> bool:
            dump = json.loads(await envoy.admin_get("/config_dump"))
            text = json.dumps(dump)
            return "outbound|9080||web.default.svc.cluster.local" in text

        await eventually(has_config, timeout=20, what="Envoy's clusters from meshd over mTLS")
        stats = await envoy.admin_get("/stats?filter=cluster.xds-grpc.ssl.handshake")
        assert "cluster.xds-grpc.ssl.handshake: " in stats and "handshake: 0" not in stats
        syncz = await meshd.get_json("/debug/syncz")
        assert _node("default", ip) in json.dumps(syncz)  # meshd sees the proxy connected
