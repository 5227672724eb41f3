"""Kubernetes Gateway API through a real gateway Envoy (node type `router`) fed by meshd, standalone from YAML,
with real backends: an HTTPRoute splitting 90/10 by backendRef weights with request and response header
modifiers, a header match, RequestRedirect (302 Location), URLRewrite (prefix and hostname), two RequestMirrors
(one by `fraction`), an HTTPS listener terminating TLS with a certificateRefs Secret, and a cross-namespace
backendRef answered 500 until a ReferenceGrant allows it. The gateway pod carries
`gateway.networking.k8s.io/gateway-name: gw` in the Gateway's namespace and reaches meshd on the secure port with
an identity of that namespace."""

from __future__ import annotations

import json
import ssl
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
import pytest_asyncio

from meshd.demo.apps import AppServer
from tests.certs import Authority
from tests.e2e.agents import write_ca_tokens
from tests.e2e.gateway_lab import client_context, common_name, https_get, secret_yaml
from tests.e2e.harness import Mesh, eventually, logs_on_failure

pytestmark = [pytest.mark.e2e, pytest.mark.asyncio(loop_scope="module")]

GW_NS = "istio-ingress"
GATEWAY = f"""\
apiVersion: v1
kind: Pod
metadata: {{name: gw-1, namespace: {GW_NS}, labels: {{gateway.networking.k8s.io/gateway-name: gw}}}}
status: {{podIP: {{ip}}}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {{name: istio}}
spec: {{controllerName: istio.io/gateway-controller}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: gw, namespace: {GW_NS}}}
spec:
  gatewayClassName: istio
  listeners:
  - {{name: http, port: 80, protocol: HTTP, allowedRoutes: {{namespaces: {{from: All}}}}}}
  - name: https
    port: 443
    protocol: HTTPS
    hostname: secure.example.com
    tls: {{mode: Terminate, certificateRefs: [{{name: secure-cert}}]}}
    allowedRoutes: {{namespaces: {{from: All}}}}
"""

WEB = """\
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: web, namespace: default}
spec:
  parentRefs: [{name: gw, namespace: istio-ingress}]
  hostnames: [web.example.com, secure.example.com]
  rules:
  - matches: [{headers: [{name: x-canary, value: "yes"}]}]
    backendRefs: [{name: web-v2, port: 80}]
  - filters:
    - type: RequestHeaderModifier
      requestHeaderModifier: {set: [{name: x-set, value: by-route}], add: [{name: x-added, value: a}], remove: [x-drop]}
    - type: ResponseHeaderModifier
      responseHeaderModifier: {add: [{name: x-served-by, value: meshd-gateway}]}
    backendRefs:
    - {name: web-v1, port: 80, weight: 90}
    - {name: web-v2, port: 80, weight: 10}
"""

FILTERS = """\
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: filters, namespace: default}
spec:
  parentRefs: [{name: gw, namespace: istio-ingress, sectionName: http}]
  hostnames: [filters.example.com]
  rules:
  - matches: [{path: {type: PathPrefix, value: /old}}]
    filters:
    - type: RequestRedirect
      requestRedirect: {scheme: https, hostname: new.example.com, path: {type: ReplaceFullPath, replaceFullPath: /new}}
  - matches: [{path: {type: PathPrefix, value: /moved}}]
    filters:
    - type: RequestRedirect
      requestRedirect: {path: {type: ReplacePrefixMatch, replacePrefixMatch: /here}}
  - matches: [{path: {type: PathPrefix, value: /api}}]
    filters:
    - type: URLRewrite
      urlRewrite: {hostname: internal.example.com, path: {type: ReplacePrefixMatch, replacePrefixMatch: /v2}}
    backendRefs: [{name: web-v1, port: 80}]
  - matches: [{path: {type: Exact, value: /mirrored}}]
    filters:
    - {type: RequestMirror, requestMirror: {backendRef: {name: audit, port: 80}}}
    - type: RequestMirror
      requestMirror: {backendRef: {name: web-v2, port: 80}, fraction: {numerator: 2, denominator: 2}}
    backendRefs: [{name: web-v1, port: 80}]
  - matches: [{path: {type: PathPrefix, value: /cors}}]
    filters:
    - type: CORS
      cors:
        allowOrigins: ["https://*.example.com", "http://app.test:8080"]
        allowMethods: [GET, PUT]
        allowHeaders: [x-custom]
        exposeHeaders: [x-trace]
        allowCredentials: true
        maxAge: 60
    backendRefs: [{name: web-v1, port: 80}]
  - matches: [{path: {type: PathPrefix, value: /open}}]
    filters:
    - {type: CORS, cors: {allowOrigins: ["*"], allowMethods: ["*"], allowHeaders: ["*"], allowCredentials: true}}
    backendRefs: [{name: web-v1, port: 80}]
"""

CROSS = """\
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: cross, namespace: team}
spec:
  parentRefs: [{name: gw, namespace: istio-ingress, sectionName: http}]
  hostnames: [cross.example.com]
  rules: [{backendRefs: [{name: web-v1, namespace: default, port: 80}]}]
"""

GRANT = """\
apiVersion: gateway.networking.k8s.io/v1beta1
kind: ReferenceGrant
metadata: {name: team-routes, namespace: default}
spec:
  from: [{group: gateway.networking.k8s.io, kind: HTTPRoute, namespace: team}]
  to: [{group: "", kind: Service}]
"""


def service(name: str, ip: str) -> str:
    return f"""\
apiVersion: v1
kind: Service
metadata: {{name: {name}, namespace: default}}
spec:
  ports: [{{name: http, port: 80, targetPort: 8080}}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: {name}-1, namespace: default, labels: {{kubernetes.io/service-name: {name}}}}}
addressType: IPv4
ports: [{{name: http, port: 8080}}]
endpoints: [{{addresses: [{ip}]}}]
"""


class Lab:
    def __init__(self, mesh: Mesh, ca: Authority, audit: AppServer) -> None:
        self.mesh, self.ca, self.audit = mesh, ca, audit
        self.gateway_ip = mesh.ip(1)
        self.client = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10))

    async def http(
        self, *, host: str, path: str = "/", headers: dict[str, str] | None = None
    ) -> tuple[int, dict[str, str], str]:
        url = f"http://{self.gateway_ip}:80{path}"
        async with self.client.get(url, headers={"Host": host, **(headers or {})}, allow_redirects=False) as resp:
            return resp.status, {k.lower(): v for k, v in resp.headers.items()}, await resp.text()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def lab(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Lab]:
    """meshd; a gateway Envoy (router, istio-ingress) at .1; apps web-v1 (.11), web-v2 (.12), audit (.13)."""
    work = tmp_path_factory.mktemp("gateway-api")
    ca = Authority("gateway api test CA")
    tokens = write_ca_tokens(work / "tokens.yaml", {"tok-gw": (GW_NS, "gw-istio")})
    mesh = Mesh(work_dir=work, delta=True, meshd_args=("--ca-token-file", str(tokens)))
    async with logs_on_failure(mesh) as m:
        await m.app(service="web", version="v1", pod="web-v1", ip=m.ip(11))
        await m.app(service="web", version="v2", pod="web-v2", ip=m.ip(12))
        audit = await m.app(service="audit", version="v1", pod="audit", ip=m.ip(13))
        m.write("gateway.yaml", GATEWAY.replace("{ip}", m.ip(1)))
        for name, ip in (("web-v1", m.ip(11)), ("web-v2", m.ip(12)), ("audit", m.ip(13))):
            m.write(f"{name}.yaml", service(name, ip))
        pem = ca.issue("secure.example.com", sans=("secure.example.com",))
        m.write("secret.yaml", secret_yaml("secure-cert", GW_NS, {"tls.crt": pem.cert, "tls.key": pem.key},
                                           kind="kubernetes.io/tls"))  # fmt: skip
        m.write("web.yaml", WEB)
        m.write("filters.yaml", FILTERS)
        await m.meshd.start()
        await m.sidecar(pod="gw-1", ip=m.ip(1), namespace=GW_NS, token="tok-gw", node_type="router")
        lab = Lab(m, ca, audit)
        try:
            yield lab
        finally:
            await lab.client.close()


async def _until(check: Any, what: str, timeout: float = 30) -> Any:
    return await eventually(check, timeout=timeout, what=what)


async def test_weighted_backends_and_header_modifiers(lab: Lab) -> None:
    async def served() -> bool:
        return (await lab.http(host="web.example.com"))[0] == 200

    await _until(served, "web.example.com through the Gateway API gateway")
    seen: Counter[str] = Counter()
    for _ in range(200):
        # (x-canary with another value: not the header match's exact "yes")
        status, headers, body = await lab.http(
            host="web.example.com", path="/x", headers={"x-drop": "1", "x-canary": "no"}
        )
        assert status == 200, body
        answer = json.loads(body)
        seen[answer["version"]] += 1
        sent = answer["request"]["headers"]
        assert sent.get("x-set") == "by-route" and sent.get("x-added") == "a" and "x-drop" not in sent, sent
        assert headers.get("x-served-by") == "meshd-gateway", headers
    assert seen["v1"] + seen["v2"] == 200 and 150 <= seen["v1"] <= 195, seen  # 90/10, loosely
    # the header match goes to v2 only (and its rule has no header modifier)
    for _ in range(10):
        status, _, body = await lab.http(host="web.example.com", headers={"x-canary": "yes"})
        assert status == 200 and json.loads(body)["version"] == "v2"
        assert "x-set" not in json.loads(body)["request"]["headers"]
    # a hostname no route gives: 404
    assert (await lab.http(host="nothing.example.com"))[0] == 404


async def test_redirect_rewrite_and_mirror(lab: Lab) -> None:
    async def redirected() -> dict[str, str] | None:
        status, headers, _ = await lab.http(host="filters.example.com", path="/old/page")
        return headers if status == 302 else None

    headers = await _until(redirected, "a 302 from RequestRedirect")
    assert headers["location"] == "https://new.example.com/new", headers
    # a redirect's ReplacePrefixMatch: the matched prefix /moved (path segments) becomes /here, the rest is kept
    for path, expected in (("/moved/a/b?x=1", "/here/a/b?x=1"), ("/moved", "/here")):
        status, headers, _ = await lab.http(host="filters.example.com", path=path)
        assert status == 302 and headers["location"] == f"http://filters.example.com{expected}", (path, headers)
    assert (await lab.http(host="filters.example.com", path="/movedx"))[0] == 404
    # URLRewrite: the matched prefix /api becomes /v2 (segment-wise), the Host internal.example.com
    for path, expected in (("/api/items?x=1", "/v2/items?x=1"), ("/api", "/v2")):
        status, _, body = await lab.http(host="filters.example.com", path=path)
        assert status == 200, body
        request = json.loads(body)["request"]
        assert request["path"] == expected and request["host"] == "internal.example.com", request
    # /apifoo is not under the prefix /api (path segments): no route
    assert (await lab.http(host="filters.example.com", path="/apifoo"))[0] == 404
    # RequestMirror twice (HTTPRouteRequestMultipleMirrors): the audit app and web-v2 (its `fraction` 2/2: all)
    # each see a copy of every request; the client gets web-v1's answer
    web_v2 = next(app for app in lab.mesh.apps if app.identity.pod == "web-v2")
    before = len(lab.audit.state.received)
    copies = sum(r["path"] == "/mirrored" for r in web_v2.state.received)
    for _ in range(5):
        status, _, body = await lab.http(host="filters.example.com", path="/mirrored")
        assert status == 200 and json.loads(body)["pod"] == "web-v1", body

    async def mirrored() -> bool:
        at_v2 = sum(r["path"] == "/mirrored" for r in web_v2.state.received)
        return len(lab.audit.state.received) >= before + 5 and at_v2 >= copies + 5

    await _until(mirrored, "5 mirrored requests at the audit app and at web-v2")
    assert all(r["path"] == "/mirrored" for r in lab.audit.state.received[before:])


async def test_the_cors_filter_answers_preflights_for_its_origins_only(lab: Lab) -> None:
    """HTTPRouteCORS: a wildcard host origin (any labels to its left), an origin with a port, credentials, the
    method / header lists and maxAge in the preflight's answer; another origin gets no CORS headers; `*` origins,
    and `*` methods and headers with credentials answered with the preflight's own (as the specification asks)."""

    async def preflight(path: str, origin: str) -> dict[str, str]:
        asked = {"origin": origin, "access-control-request-method": "PUT", "access-control-request-headers": "x-a,x-b"}
        async with lab.client.options(
            f"http://{lab.gateway_ip}:80{path}", headers={"Host": "filters.example.com", **asked}
        ) as resp:
            return {k.lower(): v for k, v in resp.headers.items()}

    async def answered() -> dict[str, str] | None:
        headers = await preflight("/cors", "https://a.b.example.com")
        return headers if "access-control-allow-origin" in headers else None

    headers = await _until(answered, "a CORS preflight answer")
    assert headers["access-control-allow-origin"] == "https://a.b.example.com"
    assert headers["access-control-allow-methods"] == "GET,PUT"
    assert headers["access-control-allow-headers"] == "x-custom"
    assert headers["access-control-max-age"] == "60"
    assert headers["access-control-allow-credentials"] == "true"
    assert (await preflight("/cors", "http://app.test:8080"))["access-control-allow-origin"] == "http://app.test:8080"
    for other in ("https://example.com", "http://a.example.com", "http://app.test", "https://evil.test"):
        assert "access-control-allow-origin" not in await preflight("/cors", other), other
    # an actual cross-origin request: the response names the origin and the exposed headers
    status, headers, _ = await lab.http(
        host="filters.example.com", path="/cors/x", headers={"origin": "https://w.example.com"}
    )
    assert status == 200 and headers["access-control-allow-origin"] == "https://w.example.com", headers
    assert headers["access-control-expose-headers"] == "x-trace"
    # `*`: any origin; methods and headers `*` with credentials: the preflight's own; maxAge left out: 5
    headers = await preflight("/open", "https://anyone.test")
    assert headers["access-control-allow-origin"] == "https://anyone.test", headers
    assert headers["access-control-allow-methods"] == "PUT" and headers["access-control-allow-headers"] == "x-a,x-b"
    assert headers["access-control-max-age"] == "5" and headers["access-control-allow-credentials"] == "true"


async def test_https_listener_terminates_with_the_certificate_ref(lab: Lab) -> None:
    trusting = client_context(lab.ca)

    async def served() -> tuple[int, Any, Any] | None:
        try:
            return await https_get(lab.gateway_ip, 443, sni="secure.example.com", path="/s", tls=trusting)
        except (OSError, ssl.SSLError):
            return None

    status, body, cert = await _until(served, "HTTPS to secure.example.com")
    assert status == 200 and body["service"] == "web" and common_name(cert) == "secure.example.com"


async def test_cross_namespace_backend_refused_until_a_reference_grant(lab: Lab) -> None:
    lab.mesh.write("cross.yaml", CROSS)

    async def answered(code: int) -> bool:
        return (await lab.http(host="cross.example.com"))[0] == code

    await _until(lambda: answered(500), "500 for a backendRef to another namespace without ReferenceGrant")
    errors = await lab.mesh.meshd.get_json("/debug/config_errors")
    assert "RefNotPermitted" in json.dumps(errors), errors
    lab.mesh.write("grant.yaml", GRANT)
    await _until(lambda: answered(200), "200 once the ReferenceGrant allows it")
