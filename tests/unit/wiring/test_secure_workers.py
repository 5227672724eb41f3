"""A worker's secure port asks the main process for what only it can answer: a CSR or a bearer token.
What the answers turn into on the worker's side, and on the main process's side (real CA, real signer)."""

from __future__ import annotations

import logging
import pathlib
from typing import Any

import grpc
import pytest
from cryptography import x509
from prometheus_client import CollectorRegistry

from meshd._gen.istio.v1.auth import ca_pb2
from meshd.agent.ca_client import generate_csr
from meshd.ca.auth import AuthError
from meshd.ca.identity import Identity
from meshd.ca.server import CertificateService
from meshd.ca.signer import utc_now
from meshd.obs.metrics import Metrics
from meshd.settings import Settings
from meshd.wiring.authority import load_authority
from meshd.wiring.secure_workers import RemoteCertificateService, RemoteTokens, ca_answers

log = logging.getLogger("meshd.test.secure_workers")


class Aborted(Exception):
    pass


class Context:
    """What a gRPC handler is given, for the parts the CA reads."""

    def __init__(self, metadata: tuple[tuple[str, str], ...] = ()) -> None:
        self.metadata = metadata
        self.aborted: tuple[grpc.StatusCode, str] | None = None

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return self.metadata

    def peer(self) -> str:
        return "ipv4:127.0.0.1:40000"

    async def abort(self, code: grpc.StatusCode, message: str) -> None:
        self.aborted = (code, message)
        raise Aborted


async def test_a_csr_the_main_process_cannot_answer_is_unavailable() -> None:
    async def ask(name: str, arg: Any) -> Any:
        raise TimeoutError

    service = RemoteCertificateService(ask=ask, peer_cert=lambda _: None)
    context = Context()
    with pytest.raises(Aborted):
        await service.CreateCertificate(ca_pb2.IstioCertificateRequest(csr="x"), context)
    assert context.aborted is not None and context.aborted[0] == grpc.StatusCode.UNAVAILABLE


async def test_a_refused_csr_is_refused_with_the_main_processs_status() -> None:
    async def ask(name: str, arg: Any) -> Any:
        return ("PERMISSION_DENIED", "impersonation refused", [])

    context = Context()
    with pytest.raises(Aborted):
        await RemoteCertificateService(ask=ask, peer_cert=lambda _: None).CreateCertificate(
            ca_pb2.IstioCertificateRequest(csr="x"), context
        )
    assert context.aborted == (grpc.StatusCode.PERMISSION_DENIED, "impersonation refused")


async def test_a_token_refused_by_the_main_process_is_an_auth_error_with_its_code() -> None:
    async def ask(name: str, arg: Any) -> Any:
        assert (name, arg) == ("token", "tok")
        return ("error", "PERMISSION_DENIED", "no")

    with pytest.raises(AuthError) as info:
        await RemoteTokens(ask).authenticate("tok")
    assert info.value.code == "PERMISSION_DENIED"

    async def yes(name: str, arg: Any) -> Any:
        return ("ok", Identity(namespace="shop", service_account="cart"))

    assert await RemoteTokens(yes).authenticate("tok") == Identity(namespace="shop", service_account="cart")


async def test_the_main_process_signs_a_workers_csr_for_the_callers_identity_only(tmp_path: pathlib.Path) -> None:
    tokens = tmp_path / "tokens.yaml"
    tokens.write_text("tok-web: {namespace: default, serviceAccount: web}\n")
    settings = Settings(config_dir=tmp_path, ca_dir=tmp_path / "ca", ca_token_file=tokens)
    metrics = Metrics(CollectorRegistry())
    authority = await load_authority(settings=settings, api=None, metrics=metrics, wall=utc_now, log=log)
    service = CertificateService(
        signer=authority.signer, authenticator=authority.authenticator, metrics=metrics.ca, log=log
    )
    answer = ca_answers(service, authority.authenticator)
    _, csr = generate_csr(identity="spiffe://cluster.local/ns/kube-system/sa/admin")  # someone else's SAN
    request = ca_pb2.IstioCertificateRequest(csr=csr, validity_duration=600).SerializeToString()

    code, message, chain = await answer("csr", (request, [("authorization", "Bearer tok-web")], None, "peer"))
    assert code is None, message
    leaf = x509.load_pem_x509_certificate(chain[0].encode())
    sans = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert [str(u) for u in sans.get_values_for_type(x509.UniformResourceIdentifier)] == [
        "spiffe://cluster.local/ns/default/sa/web"
    ]
    code, message, chain = await answer("csr", (request, [("authorization", "Bearer nope")], None, "peer"))
    assert (code, chain) == ("UNAUTHENTICATED", [])
    code, _, _ = await answer("csr", (request, [("clusterid", "elsewhere")], None, "peer"))
    assert code == "PERMISSION_DENIED"
    assert await answer("token", "tok-web") == ("ok", Identity(namespace="default", service_account="web"))
    assert (await answer("token", "nope"))[:2] == ("error", "UNAUTHENTICATED")
