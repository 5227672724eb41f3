"""Asks a running meshd (or istiod) for Istio's debug xDS types over ADS, as `istioctl --xds-address`
does: one SotW request on a stream of its own, one response. Plaintext (15010) or, with a certificate
directory holding `cert-chain.pem`, `key.pem` and `root-cert.pem` (istioctl's `--cert-dir` layout), the
secure port (15012), where meshd answers only an identity in its own namespace."""

from __future__ import annotations

import asyncio
import pathlib

import grpc
from envoy.config.core.v3 import base_pb2
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2

SYNCZ = "istio.io/debug/syncz"
CONFIG_DUMP = "istio.io/debug/config_dump"
# Who asks: a node id meshd accepts, naming the tool (never served proxy config: debug streams are apart).
CLIENT_NODE = "sidecar~127.0.0.1~meshd-ctl.istio-system~istio-system.svc.cluster.local"


class XdsClientError(Exception):
    pass


def _channel(address: str, *, cert_dir: pathlib.Path | None, authority: str | None) -> grpc.aio.Channel:
    if cert_dir is None:
        return grpc.aio.insecure_channel(address)
    try:
        credentials = grpc.ssl_channel_credentials(
            root_certificates=(cert_dir / "root-cert.pem").read_bytes(),
            private_key=(cert_dir / "key.pem").read_bytes(),
            certificate_chain=(cert_dir / "cert-chain.pem").read_bytes(),
        )
    except OSError as exc:
        raise XdsClientError(f"cannot read the certificate directory {cert_dir}: {exc}") from None
    options = [("grpc.ssl_target_name_override", authority)] if authority else []
    return grpc.aio.secure_channel(address, credentials, options=options)


async def ask(
    address: str,
    type_url: str,
    *,
    names: tuple[str, ...] = (),
    cert_dir: pathlib.Path | None = None,
    authority: str | None = None,
    timeout_s: float = 10.0,
) -> discovery_pb2.DiscoveryResponse:
    """One debug request and its response; XdsClientError with the server's reason otherwise."""
    request = discovery_pb2.DiscoveryRequest(
        node=base_pb2.Node(id=CLIENT_NODE), type_url=type_url, resource_names=names
    )
    async with _channel(address, cert_dir=cert_dir, authority=authority) as channel:
        call = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel).StreamAggregatedResources()
        try:
            async with asyncio.timeout(timeout_s):
                await call.write(request)
                response = await call.read()
        except grpc.aio.AioRpcError as exc:
            raise XdsClientError(f"{address}: {exc.code().name}: {exc.details()}") from None
        except TimeoutError:
            raise XdsClientError(f"{address}: no answer within {timeout_s:g}s") from None
        finally:
            call.cancel()
    if response is grpc.aio.EOF or not isinstance(response, discovery_pb2.DiscoveryResponse):
        raise XdsClientError(f"{address}: the stream ended without an answer")
    return response
