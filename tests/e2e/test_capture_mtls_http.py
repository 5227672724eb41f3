"""HTTP over Istio mTLS to a sniffed port (a Service port without a name), in capture mode for real (the lab of
test_capture_listeners: network namespaces, `meshd iptables` rules, `meshd agent` sidecars with certificates
from meshd's CA, the server STRICT). The client sidecar announces `istio-http/1.1` for HTTP (its `istio.alpn`
filter), so the server sidecar takes the request through the port's HTTP chain: XFCC with the caller's
identity, HTTP rules as written, tokens verified, `request_protocol` http in the destination's metrics. Raw TCP
to the same port announces `istio` only and reaches the TCP chain, where a rule with HTTP fields still fails
closed (a DENY covers the whole port, an HTTP-only ALLOW admits nothing). Skipped, with the reason, where
the machine forbids network namespaces or iptables."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import pytest

from tests.e2e.harness import eventually
from tests.e2e.metrics_lab import samples
from tests.e2e.test_capture_listeners import STRICT_SERVER, CaptureMesh, _skip_without_lab, _start, _stop
from tests.jwt_tokens import SigningKey, decode_payload, jwks, tampered, token

pytestmark = pytest.mark.e2e

# The server app answers HTTP on port 80 (test_capture_listeners' SERVER_APP); `web` declares it unnamed.
WEB = """\
---
apiVersion: v1
kind: Service
metadata: {{name: web, namespace: default}}
spec:
  clusterIP: {vip}.12
  ports: [{{port: 80, targetPort: 80}}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: web-1, namespace: default, labels: {{kubernetes.io/service-name: web}}}}
addressType: IPv4
ports: [{{port: 80}}]
endpoints:
- addresses: [{server}]
  targetRef: {{kind: Pod, name: server, namespace: default}}
"""
CLIENT = """
import json, socket, sys, urllib.error, urllib.request
kind, url, auth = sys.argv[1], sys.argv[2], sys.argv[3]
try:
    if kind == "http":
        request = urllib.request.Request(url, headers={"Authorization": auth} if auth else {})
        try:
            with urllib.request.urlopen(request, timeout=5) as r:
                print(json.dumps({"status": r.status, "body": json.loads(r.read())}))
        except urllib.error.HTTPError as e:
            print(json.dumps({"status": e.code}))
    else:  # raw bytes that are no HTTP request (the app's HTTP server answers them with its own error page)
        host, port = url.rsplit(":", 1)
        s = socket.create_connection((host, int(port)), timeout=5)
        s.sendall(b"hello there\\r\\n\\r\\n")
        data = b""
        while chunk := s.recv(4096):
            data += chunk
        print(json.dumps({"data": data.decode(errors="replace")}))
except Exception as exc:
    print(json.dumps({"error": repr(exc)}))
"""
KEY = SigningKey("alpn", kind="EC")
ISSUER = "https://issuer.alpn.example"


def _policy(action: str, rules: list[dict[str, Any]]) -> str:
    return json.dumps(
        {
            "apiVersion": "security.istio.io/v1",
            "kind": "AuthorizationPolicy",
            "metadata": {"name": "web", "namespace": "default"},
            "spec": {"selector": {"matchLabels": {"app": "server"}}, "action": action, "rules": rules},
        }
    )


REQUEST_AUTHENTICATION = json.dumps(
    {
        "apiVersion": "security.istio.io/v1",
        "kind": "RequestAuthentication",
        "metadata": {"name": "server", "namespace": "default"},
        "spec": {
            "selector": {"matchLabels": {"app": "server"}},
            "jwtRules": [{"issuer": ISSUER, "jwks": jwks(KEY), "outputPayloadToHeader": "x-jwt-payload"}],
        },
    }
)


@pytest.fixture
async def mesh() -> AsyncIterator[CaptureMesh]:
    _skip_without_lab()
    started = await _start(mtls=True, extra_yaml=STRICT_SERVER)
    try:
        config = started.workdir / "config"
        (config / "web.yaml").write_text(WEB.format(vip=started.vip, server=started.server_ip))
        yield started
    finally:
        await _stop(started.lab, started.workdir)


async def _get(mesh: CaptureMesh, path: str, jwt: str | None = None) -> dict[str, Any]:
    url = f"http://{mesh.vip}.12:80{path}"
    out = await mesh.lab.python(mesh.client_ns, CLIENT, "http", url, f"Bearer {jwt}" if jwt else "")
    return dict(json.loads(out))


async def _raw(mesh: CaptureMesh) -> dict[str, Any]:
    return dict(json.loads(await mesh.lab.python(mesh.client_ns, CLIENT, "tcp", f"{mesh.vip}.12:80", "")))


def _app_answered_raw(answer: dict[str, Any]) -> bool:
    """The app's own reply to bytes that are no HTTP request: they went through as TCP."""
    return "Bad request syntax" in answer.get("data", "")  # (Python's page; an Envoy HCM has its own)


async def _apply(mesh: CaptureMesh, *documents: str) -> None:
    (mesh.workdir / "config" / "policy.yaml").write_text("\n---\n".join(documents))


async def test_http_over_mtls_to_a_sniffed_port_takes_the_http_chain(mesh: CaptureMesh) -> None:
    async def served() -> dict[str, Any] | None:
        answer = await _get(mesh, "/other")
        return answer if answer.get("status") == 200 else None

    answer = await eventually(served, timeout=60, what="HTTP over mTLS to the unnamed port")
    headers = {k.lower(): v for k, v in answer["body"]["headers"].items()}
    # the server sidecar's HTTP chain (only an HTTP connection manager adds XFCC) of an mTLS connection
    assert "URI=spiffe://cluster.local/ns/default/sa/client" in headers["x-forwarded-client-cert"], headers
    assert answer["body"]["peer"] == "127.0.0.6"

    async def reported() -> list[tuple[dict[str, str], float]] | None:
        text = await mesh.fetch(f"http://{mesh.server_ip}:15090/stats/prometheus")
        found = samples(text, "istio_requests_total", reporter="destination", destination_service_name="web")
        return found or None

    series = await eventually(reported, timeout=30, what="the destination's istio_requests_total")
    assert {labels["request_protocol"] for labels, _ in series} == {"http"}, series
    assert {labels["connection_security_policy"] for labels, _ in series} == {"mutual_tls"}, series

    # raw TCP to the same port announces `istio` only: the TCP chain carries it to the app
    raw = await _raw(mesh)
    assert _app_answered_raw(raw), raw

    # DENY on a path: applied as written to HTTP; on the TCP chain broadened to the port (fails closed)
    await _apply(mesh, _policy("DENY", [{"to": [{"operation": {"paths": ["/admin"]}}]}]))

    async def denied() -> bool:
        return (await _get(mesh, "/admin")).get("status") == 403

    await eventually(denied, timeout=40, what="the DENY on /admin over mTLS")
    assert (await _get(mesh, "/other"))["status"] == 200
    assert not _app_answered_raw(await _raw(mesh))

    # an HTTP-only ALLOW: the matching path only; nothing over TCP (the rule cannot allow a connection)
    await _apply(mesh, _policy("ALLOW", [{"to": [{"operation": {"paths": ["/allowed"]}}]}]))

    async def allowed() -> bool:
        return (await _get(mesh, "/other")).get("status") == 403  # (the DENY above let it through)

    await eventually(allowed, timeout=40, what="the HTTP-only ALLOW over mTLS")
    assert (await _get(mesh, "/allowed"))["status"] == 200
    assert not _app_answered_raw(await _raw(mesh))

    # a rule without HTTP fields admits TCP again
    await _apply(mesh, _policy("ALLOW", [{"from": [{"source": {"namespaces": ["default"]}}]}]))

    async def tcp_again() -> bool:
        return _app_answered_raw(await _raw(mesh))

    await eventually(tcp_again, timeout=40, what="raw TCP admitted by a rule without HTTP fields")


async def test_tokens_verified_over_mtls_on_a_sniffed_port(mesh: CaptureMesh) -> None:
    require_jwt = _policy("ALLOW", [{"from": [{"source": {"requestPrincipals": [f"{ISSUER}/*"]}}]}])
    await _apply(mesh, REQUEST_AUTHENTICATION, require_jwt)
    good = token(KEY, issuer=ISSUER, sub="alpn-user")

    async def verified() -> dict[str, str] | None:
        answer = await _get(mesh, "/", good)
        headers = {k.lower(): v for k, v in (answer.get("body") or {}).get("headers", {}).items()}
        return headers if answer.get("status") == 200 and "x-jwt-payload" in headers else None

    headers = await eventually(verified, timeout=60, what="a verified token over mTLS on the unnamed port")
    assert decode_payload(headers["x-jwt-payload"])["sub"] == "alpn-user"
    assert (await _get(mesh, "/", tampered(good)))["status"] == 401
    assert (await _get(mesh, "/"))["status"] == 403  # no token: no request principal
    assert not _app_answered_raw(await _raw(mesh))  # TCP has no token: the ALLOW admits nothing there
