"""The CA in Kubernetes mode against the fake API server (real wire protocol, through a kubeconfig):
TokenReview authentication, the `istio-ca-secret` create-or-adopt race, a plugged-in `cacerts` Secret,
and the `istio-ca-root-cert` ConfigMaps (leader only)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime
import json
import pathlib
from collections.abc import AsyncIterator

import grpc
import pytest
from cryptography import x509

from meshd.ca.material import CaMaterial
from meshd.ca.publisher import CONFIGMAP, RootCertPublisher
from meshd.ca.secret_store import SELF_SIGNED_SECRET, SecretStore
from meshd.clock import SystemClock
from meshd.kube.client import new_api_client
from tests.ca_fixture import CaUnderTest, log, start_ca
from tests.e2e.harness import eventually
from tests.kubeapi import FakeApiServer, TokenIdentity
from tests.unit.ca.test_signer import plugged_material

NS = "istio-system"


def _jwt(payload: object) -> str:
    def part(value: object) -> str:
        return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=").decode()

    return f"{part({'alg': 'RS256', 'kid': 'k'})}.{part(payload)}.c2lnbmF0dXJl"


GOOD = _jwt({"sub": "system:serviceaccount:default:web"})
WRONG_AUDIENCE = _jwt({"sub": "system:serviceaccount:default:web", "n": 1})
NOT_SA = _jwt({"sub": "alice"})
UNKNOWN = _jwt({"sub": "system:serviceaccount:default:ghost"})


@pytest.fixture
async def api(tmp_path: pathlib.Path) -> AsyncIterator[tuple[FakeApiServer, pathlib.Path]]:
    server = FakeApiServer()
    await server.start()
    server.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}})
    server.tokens[GOOD] = TokenIdentity(username="system:serviceaccount:default:web")
    server.tokens[WRONG_AUDIENCE] = TokenIdentity(
        username="system:serviceaccount:default:web", audiences=("https://kubernetes.default.svc",)
    )
    server.tokens[NOT_SA] = TokenIdentity(username="alice", groups=("system:authenticated",))
    try:
        yield server, server.write_kubeconfig(tmp_path / "kubeconfig", namespace=NS)
    finally:
        await server.stop()


@pytest.fixture
async def ca(api: tuple[FakeApiServer, pathlib.Path], tmp_path: pathlib.Path) -> AsyncIterator[CaUnderTest]:
    under_test = await start_ca(tmp_path, kubeconfig=api[1])
    try:
        yield under_test
    finally:
        await under_test.stop()


async def _refused(ca: CaUnderTest, token: str, code: grpc.StatusCode = grpc.StatusCode.UNAUTHENTICATED) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await ca.csr(token=token)
    assert info.value.code() == code, info.value.details()
    await ca.assert_healthy(token=GOOD)


async def test_token_review_identity(ca: CaUnderTest, api: tuple[FakeApiServer, pathlib.Path]) -> None:
    chain = await ca.csr(token=GOOD)
    leaf = x509.load_pem_x509_certificate(chain[0].encode())
    uris = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert [u.value for u in uris] == ["spiffe://cluster.local/ns/default/sa/web"]
    reviews = [r for r in api[0].requests if r.verb == "tokenreview"]
    assert reviews and all(r.status == 201 or r.status == 200 for r in reviews)


@pytest.mark.parametrize("token", [UNKNOWN, WRONG_AUDIENCE, NOT_SA], ids=["not-authenticated", "audience", "not-sa"])
async def test_token_review_refusals(ca: CaUnderTest, api: tuple[FakeApiServer, pathlib.Path], token: str) -> None:
    before = api[0].count(verb="tokenreview")
    await _refused(ca, token)
    assert api[0].count(verb="tokenreview") == before + 2  # the refused review, then assert_healthy's


@pytest.mark.parametrize(
    "token", ["garbage", _jwt(None), "a.b.c", "Zm9v.YmFy.YmF6"], ids=["garbage", "null-payload", "abc", "not-json"]
)
async def test_malformed_tokens_never_reach_the_api_server(
    ca: CaUnderTest, api: tuple[FakeApiServer, pathlib.Path], token: str
) -> None:
    before = api[0].count(verb="tokenreview")
    await _refused(ca, token)
    assert api[0].count(verb="tokenreview") == before + 1  # only assert_healthy's review


async def test_token_review_api_failure_is_unauthenticated(
    ca: CaUnderTest, api: tuple[FakeApiServer, pathlib.Path]
) -> None:
    api[0].fail(status=500, count=1, verb=None)  # the next request: the TokenReview
    await _refused(ca, GOOD)


async def test_concurrent_replicas_adopt_one_root(api: tuple[FakeApiServer, pathlib.Path]) -> None:
    server, kubeconfig = api
    from meshd.ca.material import generate_root
    from meshd.ca.signer import utc_now

    clients = [await new_api_client(kubeconfig) for _ in range(5)]
    try:
        stores = [SecretStore(api=c, namespace=NS) for c in clients]
        results = await asyncio.gather(
            *(
                s.load_or_create(generate=lambda: generate_root(now=utc_now(), trust_domain="cluster.local"))
                for s in stores
            )
        )
    finally:
        for c in clients:
            await c.close()
    assert len({m.ca_cert for m, _ in results}) == 1
    assert sum(created for _, created in results) == 1
    secret = server.get("v1", "Secret", NS, SELF_SIGNED_SECRET)
    assert secret is not None
    assert base64.b64decode(secret["data"]["ca-cert.pem"]) == results[0][0].ca_cert
    assert server.count(verb="create", kind="Secret") >= 1


async def test_plugged_in_cacerts_secret_is_used(
    api: tuple[FakeApiServer, pathlib.Path], tmp_path: pathlib.Path
) -> None:
    server, kubeconfig = api
    material, root = plugged_material(now=datetime.datetime.now(datetime.UTC))
    server.create(
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "cacerts", "namespace": NS},
            "data": {k: base64.b64encode(v).decode() for k, v in material.as_files().items()},
        }
    )
    ca = await start_ca(tmp_path, kubeconfig=kubeconfig)
    try:
        chain = [x509.load_pem_x509_certificate(c.encode()) for c in await ca.csr(token=GOOD)]
    finally:
        await ca.stop()
    assert len(chain) == 3 and chain[-1] == root
    assert chain[1] == x509.load_pem_x509_certificate(material.ca_cert)  # the intermediate signs
    verifier = x509.verification.PolicyBuilder().store(x509.verification.Store([root])).build_client_verifier()
    assert verifier.verify(chain[0], chain[1:2]).subjects == [
        x509.UniformResourceIdentifier("spiffe://cluster.local/ns/default/sa/web")
    ]
    assert server.get("v1", "Secret", NS, SELF_SIGNED_SECRET) is None  # no self-signed root made


async def test_root_cert_published_only_by_the_leader(api: tuple[FakeApiServer, pathlib.Path]) -> None:
    server, kubeconfig = api
    for ns in ("default", "other"):
        server.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
    namespaces = ["default", "other", NS]
    leader = False
    root = CaMaterial.from_files({"ca-cert.pem": b"x", "ca-key.pem": b"y"}).ca_cert.decode()  # any text will do
    client = await new_api_client(kubeconfig)
    publisher = RootCertPublisher(
        api=client, root_pem=root, namespaces=lambda: namespaces, is_leader=lambda: leader, log=log
    )
    task: asyncio.Task[None] | None = None
    try:
        assert await publisher.sync() == 0
        assert server.count(kind="ConfigMap") == 0  # a follower does not even read
        leader = True
        assert await publisher.sync() == 3
        for ns in namespaces:
            cm = server.get("v1", "ConfigMap", ns, CONFIGMAP)
            assert cm is not None and cm["data"]["root-cert.pem"] == root
        assert await publisher.sync() == 0  # idempotent
        cm = server.get("v1", "ConfigMap", "other", CONFIGMAP)
        assert cm is not None
        server.update({**cm, "apiVersion": "v1", "kind": "ConfigMap", "data": {"root-cert.pem": "tampered"}})
        task = asyncio.create_task(publisher.run(clock=SystemClock(), interval_s=3600))
        publisher.trigger()

        async def repaired() -> bool:
            got = server.get("v1", "ConfigMap", "other", CONFIGMAP)
            return got is not None and got["data"]["root-cert.pem"] == root

        await eventually(repaired, what="tampered ConfigMap restored")
        server.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "late"}})
        namespaces.append("late")
        publisher.trigger()
        await eventually(lambda: _has(server, "late"), what="ConfigMap in a namespace that appeared later")
        leader = False
        namespaces.append("after-losing")
        writes = server.count(verb="create", kind="ConfigMap") + server.count(verb="update", kind="ConfigMap")
        assert await publisher.sync() == 0
        assert server.count(verb="create", kind="ConfigMap") + server.count(verb="update", kind="ConfigMap") == writes
    finally:
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await client.close()


async def _has(server: FakeApiServer, ns: str) -> bool:
    return server.get("v1", "ConfigMap", ns, CONFIGMAP) is not None
