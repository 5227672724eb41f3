"""DestinationRule client TLS through a real Envoy sidecar, with real TLS handshakes: the client's
sidecar originates TLS (SIMPLE / MUTUAL, from certificate files or from a Secret's credentialName
over SDS) to Python TLS servers that have no sidecar, and each server reports what it saw."""

from __future__ import annotations

import json
import pathlib
import ssl
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio
from aiohttp import web

from tests.certs import Authority, Pem
from tests.e2e.agents import write_ca_tokens
from tests.e2e.harness import Mesh, eventually, logs_on_failure

pytestmark = [pytest.mark.e2e, pytest.mark.asyncio(loop_scope="module")]


def _service(name: str, ip: str, port: int) -> str:
    return f"""\
apiVersion: v1
kind: Service
metadata: {{name: {name}, namespace: default}}
spec:
  ports: [{{name: http, port: 9080, targetPort: {port}}}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: {name}-1, namespace: default, labels: {{kubernetes.io/service-name: {name}}}}}
ports: [{{name: http, port: {port}}}]
endpoints: [{{addresses: [{ip}]}}]
"""


def _rule(host: str, tls: str) -> str:
    return f"""\
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: {host}, namespace: default}}
spec:
  host: {host}
  trafficPolicy:
    tls: {tls}
"""


def _secret(name: str, data: dict[str, bytes], *, kind: str = "Opaque") -> str:
    lines = "".join(f"  {key}: {json.dumps(value.decode())}\n" for key, value in data.items())
    head = f"apiVersion: v1\nkind: Secret\nmetadata: {{name: {name}, namespace: default}}\ntype: {kind}\n"
    return f"{head}stringData:\n{lines}"


class TlsServer:
    """An HTTPS server (no sidecar) that answers with what its TLS layer saw: SNI and client subject."""

    def __init__(self, *, pem: Pem, ca: bytes, require_client_cert: bool, work: pathlib.Path, name: str) -> None:
        cert, key = pem.write(work, name)
        self.context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.context.load_cert_chain(cert, key)
        self.context.load_verify_locations(cadata=ca.decode())
        self.context.verify_mode = ssl.CERT_REQUIRED if require_client_cert else ssl.CERT_OPTIONAL
        self.sni: list[str | None] = []
        self.context.sni_callback = lambda _sock, server_name, _ctx: self.sni.append(server_name)
        self.seen: list[dict[str, Any]] = []
        self._runner: web.AppRunner | None = None

    async def start(self, host: str, port: int) -> None:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, host, port, ssl_context=self.context).start()

    async def _handle(self, request: web.Request) -> web.Response:
        ssl_object = request.transport.get_extra_info("ssl_object") if request.transport else None
        peer = ssl_object.getpeercert() if ssl_object is not None else None
        subject = dict(item[0] for item in peer["subject"]) if peer else {}
        summary = {"tls": ssl_object is not None, "client_cn": subject.get("commonName"), "sni": self.sni[-1:]}
        self.seen.append(summary)
        response = web.json_response(summary)
        response.force_close()  # every request a new handshake: each one shows the current client certificate
        return response

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


class TlsMesh:
    def __init__(self, mesh: Mesh, ca: Authority, certs: pathlib.Path, servers: dict[str, TlsServer]) -> None:
        self.mesh, self.ca, self.certs, self.servers = mesh, ca, certs, servers

    async def get(self, host: str) -> tuple[int, dict[str, Any] | str]:
        status, _, body = await self.mesh.request(via_ip=self.mesh.ip(1), host=host)
        try:
            return status, json.loads(body)
        except ValueError:
            return status, body


@pytest_asyncio.fixture(scope="module", loop_scope="module", params=["sotw", "delta"])
async def tls_mesh(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[TlsMesh]:
    """meshd + a client sidecar (.1); HTTPS servers without sidecars: `secure` (.2, client
    certificate optional), `mtls` (.3, client certificate required); a plaintext app `plain` (.4).
    Over SotW and delta ADS (SDS rides on the same stream). The client's xDS runs over mTLS on meshd's
    secure port: credentialName Secrets are served only there, to an identity of their namespace."""
    work = tmp_path_factory.mktemp("upstream-tls")
    certs = work / "certs"
    certs.mkdir()
    ca = Authority("upstream-tls CA")
    (certs / "ca.pem").write_bytes(ca.pem)
    (certs / "other-ca.pem").write_bytes(Authority("some other CA").pem)
    ca.issue("client-files", client=True).write(certs, "client")
    servers: dict[str, TlsServer] = {}
    tokens = write_ca_tokens(work / "tokens.yaml", {"tok-client": ("default", "client")})
    mesh = Mesh(work_dir=work, delta=request.param == "delta", meshd_args=("--ca-token-file", str(tokens)))
    try:
        async with logs_on_failure(mesh) as m:
            for name, host, required in (("secure", 2, False), ("mtls", 3, True)):
                pem = ca.issue(name, sans=(name, f"{name}.example.com", f"{name}.default.svc.cluster.local"))
                servers[name] = TlsServer(pem=pem, ca=ca.pem, require_client_cert=required, work=certs, name=name)
                await servers[name].start(m.ip(host), 8443)
                m.write(f"{name}.yaml", _service(name, m.ip(host), 8443))
            await m.app(service="plain", version="v1", pod="plain-1", ip=m.ip(4))
            m.write("plain.yaml", _service("plain", m.ip(4), 8080))
            m.write("client.yaml", f"apiVersion: v1\nkind: Pod\nmetadata: {{name: client, namespace: default}}\n"
                                   f"status: {{podIP: {m.ip(1)}}}\n")  # fmt: skip
            await m.meshd.start()
            await m.sidecar(pod="client", ip=m.ip(1), token="tok-client")
            yield TlsMesh(m, ca, certs, servers)
    finally:
        for server in servers.values():
            await server.stop()


async def _no(found: Any) -> bool:
    return not await found


async def _until(t: TlsMesh, host: str, predicate: Any, what: str) -> tuple[int, Any]:
    async def check() -> tuple[int, Any] | None:
        status, body = await t.get(host)
        return (status, body) if predicate(status, body) else None

    return await eventually(check, timeout=20, what=what)  # type: ignore[no-any-return]


async def test_simple_tls_verifies_the_server_with_ca_san_and_sni(tls_mesh: TlsMesh) -> None:
    t = tls_mesh
    t.mesh.write(
        "secure-dr.yaml",
        _rule(
            "secure",
            f"{{mode: SIMPLE, caCertificates: {t.certs / 'ca.pem'}, subjectAltNames: [secure.example.com],"
            " sni: secure.example.com}",
        ),
    )
    _, body = await _until(t, "secure", lambda s, b: s == 200, "TLS to secure through the sidecar")
    assert body["tls"] is True and body["client_cn"] is None  # one-way TLS: no client certificate
    assert body["sni"] == ["secure.example.com"]

    # The same server behind a CA that did not sign it: the handshake fails, the client gets a 503.
    t.mesh.write("secure-dr.yaml", _rule("secure", f"{{mode: SIMPLE, caCertificates: {t.certs / 'other-ca.pem'}}}"))
    await _until(t, "secure", lambda s, b: s == 503, "a 503 when the CA is wrong")
    # A SAN the server certificate does not carry fails the same way.
    t.mesh.write(
        "secure-dr.yaml",
        _rule("secure", f"{{mode: SIMPLE, caCertificates: {t.certs / 'ca.pem'}, subjectAltNames: [nope.example.com]}}"),
    )

    async def held() -> bool:
        dump = json.dumps(await t.mesh.envoys["client"].config_dump(resource="dynamic_active_clusters"))
        return "nope.example.com" in dump and "other-ca.pem" not in dump

    await eventually(held, what="Envoy to hold the SAN matcher")
    status, _ = await t.get("secure")
    assert status == 503


async def test_simple_without_sni_uses_the_host_header(tls_mesh: TlsMesh) -> None:
    t = tls_mesh
    t.mesh.write("secure-dr.yaml", _rule("secure", f"{{mode: SIMPLE, caCertificates: {t.certs / 'ca.pem'}}}"))
    _, body = await _until(
        t, "secure", lambda s, b: s == 200 and b["sni"] == ["secure"], "SNI from the Host header (auto_sni)"
    )
    assert body["tls"] is True


async def test_mutual_with_files_presents_the_client_certificate(tls_mesh: TlsMesh) -> None:
    t = tls_mesh
    tls = (
        f"{{mode: MUTUAL, clientCertificate: {t.certs / 'client.pem'}, privateKey: {t.certs / 'client-key.pem'},"
        f" caCertificates: {t.certs / 'ca.pem'}}}"
    )
    t.mesh.write("mtls-dr.yaml", _rule("mtls", tls))
    _, body = await _until(t, "mtls", lambda s, b: s == 200, "mutual TLS to mtls")
    assert body["client_cn"] == "client-files"


async def test_mutual_and_simple_from_credential_name_and_secret_rotation(tls_mesh: TlsMesh) -> None:
    t = tls_mesh
    first = t.ca.issue("client-v1", client=True)
    t.mesh.write(
        "cred.yaml",
        _secret(
            "client-cred", {"tls.crt": first.cert, "tls.key": first.key, "ca.crt": t.ca.pem}, kind="kubernetes.io/tls"
        ),
    )
    t.mesh.write("mtls-dr.yaml", _rule("mtls", "{mode: MUTUAL, credentialName: client-cred}"))
    await _until(t, "mtls", lambda s, b: s == 200 and b["client_cn"] == "client-v1", "client-v1 over SDS")
    envoy = t.mesh.envoys["client"]
    pid = envoy.pid

    second = t.ca.issue("client-v2", client=True)
    t.mesh.write(
        "cred.yaml",
        _secret(
            "client-cred", {"tls.crt": second.cert, "tls.key": second.key, "ca.crt": t.ca.pem}, kind="kubernetes.io/tls"
        ),
    )
    await _until(t, "mtls", lambda s, b: s == 200 and b["client_cn"] == "client-v2", "the rotated certificate")
    assert envoy.pid == pid and envoy.returncode is None  # no restart: the secret came over SDS
    secrets = json.dumps(await envoy.config_dump(resource="dynamic_active_secrets"))
    assert "kubernetes://client-cred" in secrets and "kubernetes://client-cred-cacert" in secrets
    served = (await t.mesh.meshd.get_json("/debug/config_dump?proxyID=client.default"))["sds"]
    cert = next(x for x in served if x["name"] == "kubernetes://client-cred")["tlsCertificate"]
    assert cert["privateKey"] == {"inlineString": "[redacted]"} and cert["certificateChain"]["inlineBytes"]

    # SIMPLE from a CA-only Secret (generic key `cacert`).
    t.mesh.write("ca.yaml", _secret("server-ca", {"cacert": t.ca.pem}))
    t.mesh.write("secure-dr.yaml", _rule("secure", "{mode: SIMPLE, credentialName: server-ca, sni: secure}"))
    await _until(t, "secure", lambda s, b: s == 200 and b["tls"] and b["sni"] == ["secure"], "SIMPLE via server-ca")
    t.mesh.write("ca.yaml", _secret("server-ca", {"cacert": Authority("rotated to a wrong CA").pem}))
    await _until(t, "secure", lambda s, b: s == 503, "a 503 once the Secret's CA no longer signs the server")


async def test_missing_secret_is_reported_then_served_once_created(tls_mesh: TlsMesh) -> None:
    t = tls_mesh
    t.mesh.write("mtls-dr.yaml", _rule("mtls", "{mode: MUTUAL, credentialName: late-cred}"))

    async def reported() -> list[dict[str, Any]]:
        errors: list[dict[str, Any]] = await t.mesh.meshd.get_json("/debug/config_errors")
        return [e for e in errors if e["resource"] == "DestinationRule default/mtls"]

    errors = await eventually(reported, what="the missing Secret to be reported")
    assert errors[0]["field"] == "spec.trafficPolicy.tls.credentialName"
    assert "late-cred" in errors[0]["message"]
    # The rest keeps serving.
    status, _ = await t.get("plain")
    assert status == 200

    pem = t.ca.issue("client-late", client=True)
    t.mesh.write("late.yaml", _secret("late-cred", {"cert": pem.cert, "key": pem.key, "cacert": t.ca.pem}))
    await _until(t, "mtls", lambda s, b: s == 200 and b["client_cn"] == "client-late", "the late Secret to be served")
    assert await reported() == []


async def test_a_secret_that_never_comes_does_not_leave_the_cluster_warming(
    tls_mesh: TlsMesh, request: pytest.FixtureRequest
) -> None:
    """Envoy waits for the secret until its initial fetch timeout (15 s), then uses the cluster
    without it: connections fail (closed, never plaintext) and no cluster stays warming."""
    t = tls_mesh
    if t.mesh.delta:
        pytest.skip("one slow run is enough: the timeout is Envoy's, the same for both protocols")
    # A first version (no earlier accepted one to keep in effect): forget the previous tests' rule.
    (t.mesh.config_dir / "secure-dr.yaml").unlink(missing_ok=True)

    async def forgotten() -> bool:
        served = (await t.mesh.meshd.get_json("/debug/config_dump?proxyID=client.default")).get("sds", [])
        return not any("server-ca" in x["name"] for x in served)

    await eventually(forgotten, what="the client to be served no secret of the deleted rule")
    t.mesh.write("secure-dr.yaml", _rule("secure", "{mode: SIMPLE, credentialName: never-cred}"))

    async def settled() -> bool:
        dump = json.dumps(await t.mesh.envoys["client"].config_dump(resource="dynamic_active_clusters"))
        warming = json.dumps(await t.mesh.envoys["client"].config_dump(resource="dynamic_warming_clusters"))
        return "never-cred-cacert" in dump and "never-cred" not in warming

    await eventually(settled, timeout=30, what="the cluster to leave warming after the fetch timeout")
    status, _ = await t.get("secure")
    assert status == 503


async def test_missing_certificate_file_is_reported_and_never_nacked(tls_mesh: TlsMesh) -> None:
    t = tls_mesh
    good = (
        f"{{mode: MUTUAL, clientCertificate: {t.certs / 'client.pem'}, privateKey: {t.certs / 'client-key.pem'},"
        f" caCertificates: {t.certs / 'ca.pem'}}}"
    )
    typo = good.replace("client-key.pem", "typo-key.pem")
    t.mesh.write("mtls-dr.yaml", _rule("mtls", good))

    async def holds_good() -> bool:
        # the 200 below must come from this rule, not from the previous test's (a credentialName one)
        dump = json.dumps(await t.mesh.envoys["client"].config_dump(resource="dynamic_active_clusters"))
        return "client.pem" in dump

    await eventually(holds_good, what="the client's Envoy to hold the rule with the good files")
    await _until(t, "mtls", lambda s, b: s == 200, "MUTUAL with the good files")

    async def reported() -> list[dict[str, Any]]:
        errors: list[dict[str, Any]] = await t.mesh.meshd.get_json("/debug/config_errors")
        return [e for e in errors if e["resource"] == "DestinationRule default/mtls"]

    # An edit naming a missing file: reported, and the previous version stays in effect.
    t.mesh.write("mtls-dr.yaml", _rule("mtls", typo))
    (error,) = await eventually(reported, what="the missing file to be reported")
    assert error["field"] == "spec.trafficPolicy.tls.privateKey" and "typo-key.pem does not exist" in error["message"]
    assert "the previous version stays in effect" in error["message"]
    assert (await t.get("mtls"))[0] == 200
    # A first version naming a missing file: its clusters are left out (fail closed).
    (t.mesh.config_dir / "mtls-dr.yaml").unlink()
    await eventually(lambda: _no(reported()), what="the rule's deletion")
    await _until(t, "mtls", lambda s, b: s != 200, "plaintext to the mTLS server to fail without a rule")
    t.mesh.write("mtls-dr.yaml", _rule("mtls", typo))
    (error,) = await eventually(reported, what="the missing file to be reported")
    assert "typo-key.pem does not exist" in error["message"] and "previous version" not in error["message"]
    await _until(t, "mtls", lambda s, b: s == 503, "the cluster to be left out (fails closed)")
    assert (await t.get("plain"))[0] == 200
    status = await t.mesh.meshd.get_json("/debug/syncz")
    assert all(typ["nacked"] is None for conn in status for typ in conn["types"].values())


async def test_malformed_secret_is_refused_with_its_field(tls_mesh: TlsMesh) -> None:
    t = tls_mesh
    t.mesh.write(
        "bad.yaml", _secret("bad-cred", {"tls.crt": b"not a certificate", "tls.key": b"x"}, kind="kubernetes.io/tls")
    )

    async def reported() -> list[dict[str, Any]]:
        errors: list[dict[str, Any]] = await t.mesh.meshd.get_json("/debug/config_errors")
        return [e for e in errors if e["resource"] == "Secret default/bad-cred"]

    errors = await eventually(reported, what="the malformed Secret to be refused")
    assert errors[0]["field"] == "data.tls.crt" and "PEM" in errors[0]["message"]
    status = await t.mesh.meshd.get_json("/debug/syncz")
    assert all(typ["nacked"] is None for conn in status for typ in conn["types"].values())


async def test_disable_stays_plaintext(tls_mesh: TlsMesh) -> None:
    t = tls_mesh
    t.mesh.write("plain-dr.yaml", _rule("plain", "{mode: DISABLE}"))

    async def held() -> bool:
        dump = json.dumps(await t.mesh.envoys["client"].config_dump(resource="dynamic_active_clusters"))
        return "outbound|9080||plain.default.svc.cluster.local" in dump

    await eventually(held, what="the plain cluster")
    status, body = await t.get("plain")
    assert status == 200 and body["service"] == "plain"
    clusters = (await t.mesh.envoys["client"].config_dump(resource="dynamic_active_clusters"))["configs"]
    plain = [c["cluster"] for c in clusters if c["cluster"]["name"].endswith("|plain.default.svc.cluster.local")]
    assert plain and all("transport_socket" not in c for c in plain)
