"""RequestAuthentication on a captured sidecar (the capture lab of test_capture_listeners: network namespaces,
`meshd iptables` rules, Envoy as UID 1337): an unmodified client calls the server's ClusterIP with a token;
iptables brings the call to the server sidecar's virtualInbound, whose HTTP chain verifies it. Skipped, with
the reason, where the machine forbids network namespaces or iptables."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import pytest

from tests.e2e.harness import eventually
from tests.e2e.test_capture_listeners import CaptureMesh, _skip_without_lab, _start, _stop
from tests.jwt_tokens import SigningKey, decode_payload, jwks, tampered, token

pytestmark = pytest.mark.e2e
KEY = SigningKey("captured", kind="EC")
ISSUER = "https://issuer.capture.example"
REQUEST_AUTHENTICATION = "---\n" + json.dumps(
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
CLIENT = """
import json, sys, urllib.error, urllib.request
url, auth = sys.argv[1], sys.argv[2]
request = urllib.request.Request(url, headers={"Authorization": auth} if auth else {})
try:
    with urllib.request.urlopen(request, timeout=5) as r:
        print(json.dumps({"status": r.status, "body": json.loads(r.read())}))
except urllib.error.HTTPError as e:
    print(json.dumps({"status": e.code}))
except Exception as exc:
    print(json.dumps({"error": repr(exc)}))
"""


@pytest.fixture
async def capture_mesh() -> AsyncIterator[CaptureMesh]:
    _skip_without_lab()
    mesh = await _start(mtls=False, extra_yaml=REQUEST_AUTHENTICATION)
    try:
        yield mesh
    finally:
        await _stop(mesh.lab, mesh.workdir)


async def _call(mesh: CaptureMesh, jwt: str | None) -> dict[str, Any]:
    out = await mesh.lab.python(mesh.client_ns, CLIENT, f"http://{mesh.vip}.10:80/", f"Bearer {jwt}" if jwt else "")
    return dict(json.loads(out))


async def test_tokens_verified_on_the_captured_inbound(capture_mesh: CaptureMesh) -> None:
    mesh = capture_mesh
    good = token(KEY, issuer=ISSUER, sub="captured-user")

    async def verified() -> dict[str, Any] | None:
        answer = await _call(mesh, good)
        headers = {k.lower(): v for k, v in (answer.get("body") or {}).get("headers", {}).items()}
        return headers if answer.get("status") == 200 and "x-jwt-payload" in headers else None

    headers = await eventually(verified, timeout=40, what="a verified token through the capture listeners")
    assert decode_payload(headers["x-jwt-payload"])["sub"] == "captured-user"
    assert (await _call(mesh, tampered(good)))["status"] == 401
    assert (await _call(mesh, token(SigningKey("other", kind="EC"), issuer=ISSUER)))["status"] == 401
    assert (await _call(mesh, None))["status"] == 200  # no token: authentication passes


DENY_PRIVATE = json.dumps(
    {
        "apiVersion": "security.istio.io/v1",
        "kind": "AuthorizationPolicy",
        "metadata": {"name": "deny-private", "namespace": "default"},
        "spec": {
            "selector": {"matchLabels": {"app": "server"}},
            "action": "DENY",
            "rules": [{"to": [{"operation": {"paths": ["/private"]}}]}],
        },
    }
)


async def test_tokens_and_http_rules_on_a_port_no_service_declares(capture_mesh: CaptureMesh) -> None:
    """HTTP to the server's port 80, which no service declares (it passes through both sidecars): the
    server sidecar sniffs it as HTTP, verifies tokens there and applies HTTP rules as on declared ports
    (rather than the TCP adaptation, where a DENY rule with a path denies the whole connection)."""
    mesh = capture_mesh
    good = token(KEY, issuer=ISSUER, sub="undeclared-port-user")

    async def call(jwt: str | None, path: str = "/") -> dict[str, Any]:
        url = f"http://{mesh.server_ip}:80{path}"
        out = await mesh.lab.python(mesh.client_ns, CLIENT, url, f"Bearer {jwt}" if jwt else "")
        return dict(json.loads(out))

    async def verified() -> dict[str, Any] | None:
        answer = await call(good)
        headers = {k.lower(): v for k, v in (answer.get("body") or {}).get("headers", {}).items()}
        return headers if answer.get("status") == 200 and "x-jwt-payload" in headers else None

    headers = await eventually(verified, timeout=40, what="a verified token on the undeclared port")
    assert decode_payload(headers["x-jwt-payload"])["sub"] == "undeclared-port-user"
    assert (await call(tampered(good)))["status"] == 401
    assert (await call(None))["status"] == 200
    (mesh.workdir / "config" / "deny.yaml").write_text(DENY_PRIVATE)

    async def denied() -> bool:
        return (await call(None, "/private")).get("status") == 403

    await eventually(denied, timeout=40, what="the DENY path rule on the undeclared port")
    assert (await call(None, "/public"))["status"] == 200  # an HTTP rule: only the path is denied
