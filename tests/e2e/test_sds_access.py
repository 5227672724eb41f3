"""credentialName Secrets (with their private keys) go only to authenticated, authorised proxies
(issue 20, item 1): meshd's real plaintext and secure gRPC servers in-process, real gRPC ADS clients.

- the plaintext port serves no secret at all, whatever namespace the node id claims (logged, counted);
- the secure port serves a proxy the Secrets of its own namespace once its identity is verified there;
- an identity of another namespace may not claim the Secret's namespace (PERMISSION_DENIED), and in its
  own namespace it never receives another namespace's Secret.

Each test reads the SDS answer deterministically: the SDS request goes first and a CDS request after it
on the same stream; requests are handled in order, so a stream whose first response is CDS was sent no
secret."""

from __future__ import annotations

import asyncio
import base64
import logging
import pathlib
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from envoy.config.core.v3 import base_pb2
from envoy.extensions.transport_sockets.tls.v3 import secret_pb2
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2

from meshd.agent.ca_client import generate_csr, request_certificate, secure_channel
from meshd.api.parse import parse_resource
from meshd.generate.generator import ConfigGenerator
from meshd.model.world import build_world
from meshd.xds.hub import Hub
from meshd.xds.resource import CLUSTER, SECRET
from tests.ca_fixture import CaUnderTest, start_ca
from tests.certs import Authority

pytestmark = pytest.mark.e2e

AUTHORITY = Authority("shop's upstream CA")
CLIENT = AUTHORITY.issue("shop-client", client=True)
SECRET_NAME = "kubernetes://shop-client-cred"


def _documents() -> list[dict[str, Any]]:
    def secret(namespace: str) -> dict[str, Any]:
        data = {"tls.crt": CLIENT.cert, "tls.key": CLIENT.key, "ca.crt": AUTHORITY.pem}
        return {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "shop-client-cred", "namespace": namespace},
            "type": "kubernetes.io/tls",
            "data": {k: base64.b64encode(v).decode() for k, v in data.items()},
        }

    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "bank", "namespace": "shop"},
        "spec": {"ports": [{"name": "http", "port": 443}]},
    }
    rule = {  # exported to every namespace: a proxy of `other` has the cluster and names the secret too
        "apiVersion": "networking.istio.io/v1",
        "kind": "DestinationRule",
        "metadata": {"name": "bank", "namespace": "shop"},
        "spec": {
            "host": "bank.shop.svc.cluster.local",
            "trafficPolicy": {"tls": {"mode": "MUTUAL", "credentialName": "shop-client-cred"}},
        },
    }
    return [secret("shop"), service, rule]


def _node(namespace: str) -> str:
    return f"sidecar~10.9.0.1~pod-1.{namespace}~{namespace}.svc.cluster.local"


@pytest.fixture
async def ca(tmp_path: pathlib.Path) -> AsyncIterator[CaUnderTest]:
    hub = Hub()
    world = build_world([parse_resource(d) for d in _documents()], domain_suffix="cluster.local")
    generator = ConfigGenerator(world)
    generator.precompute()
    hub.publish(generator, changed_at=0.0)
    server = await start_ca(tmp_path, hub=hub)
    try:
        yield server
    finally:
        await server.stop()


async def _sds_then_cds(channel: grpc.aio.Channel, *, node_id: str, token: str | None = None) -> Any:
    """SDS for shop's secret, then CDS, on one stream: the first response, or the AioRpcError."""
    metadata = (("authorization", f"Bearer {token}"),) if token else ()
    call = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel).StreamAggregatedResources(metadata=metadata)
    node = base_pb2.Node(id=node_id)
    try:
        await call.write(discovery_pb2.DiscoveryRequest(node=node, type_url=SECRET, resource_names=[SECRET_NAME]))
        await call.write(discovery_pb2.DiscoveryRequest(node=node, type_url=CLUSTER))
        return await asyncio.wait_for(call.read(), 10)
    except grpc.aio.AioRpcError as exc:
        return exc
    finally:
        call.cancel()
        await call.code()  # the call's status delivered: grpc's own task for it is done before the test ends


async def _secure(ca: CaUnderTest, *, node_id: str, token: str) -> Any:
    async with secure_channel(address=ca.address, root_cert_pem=ca.root) as channel:
        return await _sds_then_cds(channel, node_id=node_id, token=token)


def _private_key(response: discovery_pb2.DiscoveryResponse) -> bytes:
    (any_secret,) = response.resources
    secret = secret_pb2.Secret()
    any_secret.Unpack(secret)
    assert secret.name == SECRET_NAME
    return bytes(secret.tls_certificate.private_key.inline_bytes)


async def test_plaintext_client_claiming_shop_gets_no_secret(ca: CaUnderTest, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="meshd.test.ca")
    async with grpc.aio.insecure_channel(f"127.0.0.1:{ca.plaintext_port}") as channel:
        response = await _sds_then_cds(channel, node_id=_node("shop"))
    assert isinstance(response, discovery_pb2.DiscoveryResponse), response
    assert response.type_url == CLUSTER  # the SDS request, handled first, was answered with nothing
    assert any("bank.shop" in r.value.decode(errors="replace") for r in response.resources)  # still served config
    assert ca.metrics.registry.get_sample_value("meshd_xds_secret_refusals", {"reason": "unauthenticated"}) == 1.0
    (line,) = [r.getMessage() for r in caplog.records if "event=sds_refused" in r.getMessage()]
    assert "reason=unauthenticated" in line and "pod-1.shop" in line and SECRET_NAME in line
    assert "secure port" in line


async def test_authenticated_client_of_shop_gets_its_secret(ca: CaUnderTest) -> None:
    response = await _secure(ca, node_id=_node("shop"), token="tok-shop")
    assert isinstance(response, discovery_pb2.DiscoveryResponse), response
    assert response.type_url == SECRET
    assert _private_key(response) == CLIENT.key
    assert ca.metrics.registry.get_sample_value("meshd_xds_secret_refusals", {"reason": "unauthenticated"}) is None


async def test_client_certificate_of_shop_gets_its_secret(ca: CaUnderTest) -> None:
    key, csr = generate_csr()
    chain = await request_certificate(
        address=ca.address, root_cert_pem=ca.root, token="tok-shop", csr_pem=csr, ttl_s=600
    )
    async with secure_channel(address=ca.address, root_cert_pem=ca.root, client_cert=("".join(chain), key)) as channel:
        response = await _sds_then_cds(channel, node_id=_node("shop"))
    assert isinstance(response, discovery_pb2.DiscoveryResponse) and response.type_url == SECRET
    assert _private_key(response) == CLIENT.key


async def test_identity_of_other_namespace_never_gets_shops_secret(ca: CaUnderTest) -> None:
    refused = await _secure(ca, node_id=_node("shop"), token="tok-api")  # identity other/api claiming shop
    assert isinstance(refused, grpc.aio.AioRpcError) and refused.code() == grpc.StatusCode.PERMISSION_DENIED
    # In its own namespace its cluster names shop-client-cred too, but Secrets are read from the proxy's
    # namespace (no such Secret in `other`): the SDS answer is empty, and its clusters are served.
    async with secure_channel(address=ca.address, root_cert_pem=ca.root) as channel:
        metadata = (("authorization", "Bearer tok-api"),)
        call = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel).StreamAggregatedResources(metadata=metadata)
        node = base_pb2.Node(id=_node("other"))
        await call.write(discovery_pb2.DiscoveryRequest(node=node, type_url=SECRET, resource_names=[SECRET_NAME]))
        await call.write(discovery_pb2.DiscoveryRequest(node=node, type_url=CLUSTER))
        sds = await asyncio.wait_for(call.read(), 10)
        cds = await asyncio.wait_for(call.read(), 10)
        call.cancel()
        await call.code()
    assert sds.type_url == SECRET and list(sds.resources) == []
    assert cds.type_url == CLUSTER and any(SECRET_NAME.encode() in r.value for r in cds.resources)
