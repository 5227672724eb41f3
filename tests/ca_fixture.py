"""meshd's CA in-process for tests: the real secure server (TLS front + gRPC) and a plaintext gRPC
server with the refusing CA service, exactly as `meshd serve` wires them (wiring/authority.py,
wiring/grpc_servers.py)."""

from __future__ import annotations

import base64
import json
import logging
import pathlib
from dataclasses import dataclass
from typing import Any

import grpc
from prometheus_client import CollectorRegistry

from meshd._gen.istio.v1.auth import ca_pb2, ca_pb2_grpc
from meshd.agent.ca_client import generate_csr, request_certificate
from meshd.ca.signer import WallClock, utc_now
from meshd.clock import SystemClock
from meshd.kube.client import new_api_client
from meshd.obs.metrics import Metrics
from meshd.settings import Settings
from meshd.wiring.authority import load_authority
from meshd.wiring.grpc_servers import SecurePort, ads_servicer, plaintext_server, start_secure_port
from meshd.xds.hub import Hub
from tests.e2e.harness import free_port

TOKENS = {
    "tok-web": ("default", "web"),
    "tok-api": ("other", "api"),
    "tok-shop": ("shop", "client"),
}
TOKEN_FILE = "".join(f"{tok}: {{namespace: {ns}, serviceAccount: {sa}}}\n" for tok, (ns, sa) in TOKENS.items())
log = logging.getLogger("meshd.test.ca")


def fake_jwt(payload: object, *, header: object = None) -> str:
    """A token shaped like a JWT (header.payload.signature); only a TokenReview can say whether it is good."""

    def part(value: object) -> str:
        return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=").decode()

    return f"{part(header or {'alg': 'RS256', 'kid': 'k'})}.{part(payload)}.c2lnbmF0dXJl"


@dataclass
class CaUnderTest:
    security: SecurePort
    plaintext: grpc.aio.Server
    plaintext_port: int
    metrics: Metrics
    api: Any = None  # the Kubernetes API client (kubeconfig given)
    hub: Hub | None = None  # the hub both ADS servicers serve

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.security.port}"

    @property
    def root(self) -> str:
        return self.security.root_pem

    def counter(self, name: str) -> float:
        value = self.metrics.registry.get_sample_value(name)
        return 0.0 if value is None else value

    async def csr(
        self,
        *,
        csr_pem: str | None = None,
        token: str | None = "tok-web",
        ttl_s: int = 3600,
        metadata: tuple[tuple[str, str], ...] = (),
        request_metadata: dict[str, Any] | None = None,
        client_cert: tuple[str, str] | None = None,
    ) -> list[str]:
        """A raw CreateCertificate on the secure port (raises AioRpcError)."""
        from meshd.agent.ca_client import secure_channel

        if csr_pem is None:
            csr_pem = generate_csr()[1]
        headers = (("authorization", f"Bearer {token}"),) if token is not None else ()
        request = ca_pb2.IstioCertificateRequest(csr=csr_pem, validity_duration=ttl_s)
        if request_metadata:
            request.metadata.update(request_metadata)
        async with secure_channel(address=self.address, root_cert_pem=self.root, client_cert=client_cert) as channel:
            stub = ca_pb2_grpc.IstioCertificateServiceStub(channel)
            response = await stub.CreateCertificate(request, metadata=headers + metadata, timeout=10)
        return list(response.cert_chain)

    async def assert_healthy(self, token: str = "tok-web") -> None:
        """A good CSR succeeds right after whatever the test did."""
        chain = await request_certificate(
            address=self.address, root_cert_pem=self.root, token=token, csr_pem=generate_csr()[1], ttl_s=600
        )
        assert len(chain) >= 2

    async def stop(self) -> None:
        await self.security.stop()
        await self.plaintext.stop(None)
        if self.api is not None:
            await self.api.close()


async def start_ca(
    tmp_path: pathlib.Path,
    *,
    wall: WallClock = utc_now,
    kubeconfig: pathlib.Path | None = None,
    hub: Hub | None = None,
    **overrides: Any,
) -> CaUnderTest:
    token_file = tmp_path / "tokens.yaml"
    token_file.write_text(TOKEN_FILE)
    config_dir = None if kubeconfig is not None else tmp_path / "config"
    if config_dir is not None:
        config_dir.mkdir(exist_ok=True)
    values: dict[str, Any] = {
        "config_dir": config_dir,
        "kubeconfig": kubeconfig,
        "ca_enabled": True,
        "ca_dir": tmp_path / "ca",
        "ca_token_file": token_file,
        "secure_host": "127.0.0.1",
        "secure_port": free_port(),
        **overrides,
    }
    settings = Settings(**values)
    metrics = Metrics(CollectorRegistry())
    hub, clock = hub or Hub(), SystemClock()
    ads = ads_servicer(settings=settings, hub=hub, metrics=metrics, clock=clock, log=log)
    plaintext, plaintext_port = plaintext_server(
        host="127.0.0.1", port=0, ads=ads, metrics=metrics, log=log, max_connections=settings.xds_max_connections
    )
    await plaintext.start()
    api = await new_api_client(kubeconfig) if kubeconfig is not None else None
    try:
        authority = await load_authority(settings=settings, api=api, metrics=metrics, wall=wall, log=log)
        security = await start_secure_port(
            settings=settings, authority=authority, hub=hub, metrics=metrics, clock=clock, log=log
        )
    except BaseException:
        await plaintext.stop(None)
        if api is not None:
            await api.close()
        raise
    return CaUnderTest(
        security=security, plaintext=plaintext, plaintext_port=plaintext_port, metrics=metrics, api=api, hub=hub
    )
