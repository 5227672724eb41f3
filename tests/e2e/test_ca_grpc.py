"""meshd's CA over real gRPC and real TLS (standalone: token file): every refusal has its status code,
and meshd keeps issuing right after each one."""

from __future__ import annotations

import datetime
import pathlib
from collections.abc import AsyncIterator

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from meshd._gen.istio.v1.auth import ca_pb2, ca_pb2_grpc
from meshd.agent.ca_client import generate_csr
from tests.ca_fixture import CaUnderTest, fake_jwt, start_ca
from tests.csr_tools import bad_signature_csr, ec_csr, rsa_csr, sha1_csr


@pytest.fixture
async def ca(tmp_path: pathlib.Path) -> AsyncIterator[CaUnderTest]:
    under_test = await start_ca(tmp_path)
    try:
        yield under_test
    finally:
        await under_test.stop()


async def _refused(ca: CaUnderTest, code: grpc.StatusCode, **kwargs: object) -> str:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await ca.csr(**kwargs)  # type: ignore[arg-type]
    assert info.value.code() == code, info.value.details()
    await ca.assert_healthy()
    return str(info.value.details())


def _leaf(chain: list[str]) -> x509.Certificate:
    return x509.load_pem_x509_certificate(chain[0].encode())


def _uris(cert: x509.Certificate) -> list[str]:
    return list(cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
        x509.UniformResourceIdentifier
    ))  # fmt: skip


async def test_plaintext_port_refuses_every_csr(ca: CaUnderTest) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{ca.plaintext_port}") as channel:
        stub = ca_pb2_grpc.IstioCertificateServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.CreateCertificate(
                ca_pb2.IstioCertificateRequest(csr=generate_csr()[1], validity_duration=60),
                metadata=(("authorization", "Bearer tok-web"),),  # even with a valid token
            )
    assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert ca.counter("citadel_server_authentication_failure_count") == 1
    await ca.assert_healthy()


@pytest.mark.parametrize(
    "token",
    [None, "", "garbage", "not.a.jwt", fake_jwt(None), fake_jwt([1, 2]), "tok-web-but-longer", "x" * 7000],
    ids=["missing", "empty", "garbage", "dots", "null-payload", "list-payload", "near-miss", "huge"],
)
async def test_bad_tokens_are_unauthenticated(ca: CaUnderTest, token: str | None) -> None:
    before = ca.counter("citadel_server_authentication_failure_count")
    await _refused(ca, grpc.StatusCode.UNAUTHENTICATED, token=token)
    assert ca.counter("citadel_server_authentication_failure_count") == before + 1


async def test_issued_san_is_the_callers_whatever_the_csr_asks(ca: CaUnderTest) -> None:
    csr = ec_csr(sans=("spiffe://cluster.local/ns/kube-system/sa/admin", "spiffe://evil.example/ns/x/sa/y"))
    chain = await ca.csr(csr_pem=csr, token="tok-api")
    assert _uris(_leaf(chain)) == ["spiffe://cluster.local/ns/other/sa/api"]
    chain = await ca.csr(csr_pem=csr, token="tok-web")
    assert _uris(_leaf(chain)) == ["spiffe://cluster.local/ns/default/sa/web"]


async def test_issued_certificate_shape_and_chain(ca: CaUnderTest) -> None:
    chain = await ca.csr(ttl_s=0)
    leaf, root = _leaf(chain), x509.load_pem_x509_certificate(chain[-1].encode())
    assert chain[-1] == ca.root
    leaf.verify_directly_issued_by(root)
    assert leaf.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False
    usage = leaf.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.digital_signature and usage.key_encipherment and not usage.key_cert_sign
    eku = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert {o.dotted_string for o in eku} == {"1.3.6.1.5.5.7.3.1", "1.3.6.1.5.5.7.3.2"}
    lifetime = leaf.not_valid_after_utc - datetime.datetime.now(datetime.UTC)
    assert datetime.timedelta(hours=23, minutes=59) < lifetime <= datetime.timedelta(hours=24)  # TTL 0 -> 24 h
    assert ca.counter("citadel_server_success_cert_issuance_count") == 1
    assert ca.counter("citadel_server_csr_count") == 1


@pytest.mark.parametrize(
    "make",
    [
        bad_signature_csr,
        lambda: rsa_csr(1024),
        lambda: rsa_csr(2048, exponent=3),
        lambda: ec_csr(ec.SECP224R1()),
        sha1_csr,
    ],
    ids=["bad-signature", "rsa-1024", "rsa-exponent-3", "p-224", "sha1"],
)
async def test_weak_or_forged_csrs_are_invalid_argument(ca: CaUnderTest, make: object) -> None:
    details = await _refused(ca, grpc.StatusCode.INVALID_ARGUMENT, csr_pem=make())  # type: ignore[operator]
    assert details
    assert ca.counter("citadel_server_success_cert_issuance_count") == 1  # only assert_healthy's


async def test_unparsable_csr_counts_as_parsing_error(ca: CaUnderTest) -> None:
    await _refused(ca, grpc.StatusCode.INVALID_ARGUMENT, csr_pem="-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n")
    assert ca.counter("citadel_server_csr_parsing_err_count") == 1


async def test_accepted_key_types(ca: CaUnderTest) -> None:
    for csr in (rsa_csr(2048), ec_csr(ec.SECP384R1()), generate_csr(key_type="rsa")[1]):
        assert len(await ca.csr(csr_pem=csr)) == 2


async def test_ttl_above_maximum_is_refused(ca: CaUnderTest) -> None:
    await _refused(ca, grpc.StatusCode.INVALID_ARGUMENT, ttl_s=91 * 24 * 3600)
    await _refused(ca, grpc.StatusCode.INVALID_ARGUMENT, ttl_s=-5)
    details = await _refused(ca, grpc.StatusCode.INVALID_ARGUMENT, ttl_s=2**63 - 1)  # int64 max: no overflow
    assert "maximum" in details
    chain = await ca.csr(ttl_s=90 * 24 * 3600)  # the maximum itself is fine
    assert _leaf(chain).not_valid_after_utc > datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=89)


async def test_oversized_request_is_resource_exhausted(ca: CaUnderTest) -> None:
    await _refused(ca, grpc.StatusCode.RESOURCE_EXHAUSTED, csr_pem="A" * (4 * 1024 * 1024 + 10))


@pytest.mark.parametrize(
    ("metadata", "request_metadata"),
    [
        ((("impersonate-user", "system:serviceaccount:kube-system:admin"),), None),
        ((("impersonate-group", "system:masters"),), None),
        ((("x-forwarded-client-cert", "URI=spiffe://cluster.local/ns/kube-system/sa/admin"),), None),
        ((("clusterid", "remote-cluster"),), None),
        ((), {"ImpersonatedIdentity": "spiffe://cluster.local/ns/kube-system/sa/admin"}),
    ],
    ids=["impersonate-user", "impersonate-group", "xfcc", "foreign-cluster-id", "impersonated-identity"],
)
async def test_impersonation_is_refused(
    ca: CaUnderTest, metadata: tuple[tuple[str, str], ...], request_metadata: dict[str, str] | None
) -> None:
    await _refused(ca, grpc.StatusCode.PERMISSION_DENIED, metadata=metadata, request_metadata=request_metadata)


async def test_own_cluster_id_is_accepted(ca: CaUnderTest) -> None:
    assert len(await ca.csr(metadata=(("clusterid", "Kubernetes"),))) == 2


async def test_client_certificate_from_this_ca_authenticates(ca: CaUnderTest) -> None:
    key, csr = generate_csr()
    chain = await ca.csr(csr_pem=csr, token="tok-api")
    renewed = await ca.csr(token=None, client_cert=("".join(chain), key))
    assert _uris(_leaf(renewed)) == ["spiffe://cluster.local/ns/other/sa/api"]


async def test_client_certificate_from_another_ca_fails_the_handshake(ca: CaUnderTest) -> None:
    from tests.certs import Authority

    foreign = Authority("someone else").issue("x", sans=("spiffe://cluster.local/ns/default/sa/web",), client=True)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await ca.csr(token=None, client_cert=(foreign.cert.decode(), foreign.key.decode()))
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE  # OpenSSL refused the certificate
    await ca.assert_healthy()


async def test_metrics_exposed_with_istio_names(ca: CaUnderTest) -> None:
    from prometheus_client import generate_latest

    await ca.assert_healthy()
    text = generate_latest(ca.metrics.registry).decode()
    for name in (
        "citadel_server_csr_count 1.0",
        "citadel_server_success_cert_issuance_count 1.0",
        "citadel_server_authentication_failure_count 0.0",
        "citadel_server_csr_parsing_err_count 0.0",
    ):
        assert name in text
    seconds = ca.metrics.registry.get_sample_value("citadel_server_root_cert_expiry_seconds")
    assert seconds is not None and 3649 * 86400 < seconds <= 3650 * 86400


async def test_plugged_in_cacerts_dir_clamps_to_signer_expiry_then_refuses(tmp_path: pathlib.Path) -> None:
    from tests.unit.ca.test_signer import plugged_material

    now = datetime.datetime.now(datetime.UTC)
    material, root = plugged_material(intermediate_days=2, now=now)
    plugged = tmp_path / "ca" / "cacerts"
    plugged.mkdir(parents=True)
    for name, data in material.as_files().items():
        (plugged / name).write_bytes(data)
    shift = datetime.timedelta(0)
    ca = await start_ca(tmp_path, wall=lambda: datetime.datetime.now(datetime.UTC) + shift)
    try:
        assert ca.root == root.public_bytes(serialization.Encoding.PEM).decode()
        chain = await ca.csr(ttl_s=30 * 86400)
        assert len(chain) == 3  # leaf, intermediate, root
        intermediate = x509.load_pem_x509_certificate(material.ca_cert)
        assert _leaf(chain).not_valid_after_utc == intermediate.not_valid_after_utc  # clamped, not 30 days
        assert not (tmp_path / "ca" / "ca-cert.pem").exists()  # no self-signed root was made
        shift = datetime.timedelta(days=2) - datetime.timedelta(seconds=30)  # the intermediate is about to expire
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await ca.csr(ttl_s=3600)
        assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert (
            ca.metrics.registry.get_sample_value("citadel_server_csr_sign_err_count", {"error": "CA_UNAVAILABLE"}) == 1
        )
        shift = datetime.timedelta(0)
        await ca.assert_healthy()
    finally:
        await ca.stop()


async def test_loopback_backend_bypassing_tls_is_refused(ca: CaUnderTest) -> None:
    """The gRPC server behind the TLS front listens on a loopback port; a local process dialling it
    directly (no TLS, even with a valid token) is not treated as a TLS caller."""
    backend = ca.security.front._backend_port
    async with grpc.aio.insecure_channel(f"127.0.0.1:{backend}") as channel:
        stub = ca_pb2_grpc.IstioCertificateServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.CreateCertificate(
                ca_pb2.IstioCertificateRequest(csr=generate_csr()[1]), metadata=(("authorization", "Bearer tok-web"),)
            )
    assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
    await ca.assert_healthy()
