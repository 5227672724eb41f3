"""Mesh routing (GAMMA) through real Envoy sidecars: HTTPRoutes whose parentRef is a Service route what the
sidecars send to it. A producer route (the Service's namespace) splits every client's traffic 90/10 and sends a
header / path match to v2; a consumer route (namespace b) changes only b's client; an older VirtualService for
the same host wins over a younger route, a younger one loses to it; a TCPRoute splits connections 90/10; a TLSRoute
sends the TLS connections whose SNI is the Service's name to its backend, which terminates them (passed through)."""

from __future__ import annotations

import asyncio
import json
import pathlib
from collections import Counter
from collections.abc import AsyncIterator

import pytest

from tests.certs import Authority
from tests.e2e.harness import Mesh, eventually, logs_on_failure
from tests.e2e.l4_servers import Servers, client_context, read_line, server_context

pytestmark = pytest.mark.e2e
REQUESTS = 300
CLIENT_A, CLIENT_B, V1, V2, ECHO_V1, ECHO_V2, TLS_V1, TLS_V2 = 1, 2, 3, 4, 5, 6, 7, 8
SECURE = "secure.a.svc.cluster.local"


def _service(ns: str, name: str, pods: list[tuple[str, str]], *, port: int = 9080, target: int = 8080,
             port_name: str = "http") -> str:  # fmt: skip
    """A Service (no pods: a front with no endpoints of its own) and an EndpointSlice of (pod, ip)."""
    out = (
        f"apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: {ns}}}\n"
        f"spec: {{ports: [{{name: {port_name}, port: {port}, targetPort: {target}}}]}}\n"
    )
    if pods:
        endpoints = "\n".join(f"- {{addresses: [{ip}], targetRef: {{kind: Pod, name: {pod}, namespace: {ns}}}}}"
                              for pod, ip in pods)  # fmt: skip
        out += (
            f"---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n"
            f"metadata: {{name: {name}-1, namespace: {ns}, labels: {{kubernetes.io/service-name: {name}}}}}\n"
            f"addressType: IPv4\nports: [{{name: {port_name}, port: {target}}}]\nendpoints:\n{endpoints}\n"
        )
    return out


def _pod(ns: str, name: str, ip: str, app: str) -> str:
    return (
        f"apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: {ns}, labels: {{app: {app}}}}}\n"
        f"status: {{podIP: {ip}}}\n"
    )


def _world(m: Mesh) -> str:
    ip = m.ip
    docs = [
        _pod("a", "client-a", ip(CLIENT_A), "client"),
        _pod("b", "client-b", ip(CLIENT_B), "client"),
        _pod("a", "web-v1", ip(V1), "web"),
        _pod("a", "web-v2", ip(V2), "web"),
        _pod("a", "echo-v1", ip(ECHO_V1), "echo"),
        _pod("a", "echo-v2", ip(ECHO_V2), "echo"),
        # `web` has both pods; web-v1 / web-v2 one each
        _service("a", "web", [("web-v1", ip(V1)), ("web-v2", ip(V2))]),
        _service("a", "web-v1", [("web-v1", ip(V1))]),
        _service("a", "web-v2", [("web-v2", ip(V2))]),
        _service(
            "a", "echo", [("echo-v1", ip(ECHO_V1)), ("echo-v2", ip(ECHO_V2))], port=9000, target=9000, port_name="tcp"
        ),
        _service("a", "echo-v1", [("echo-v1", ip(ECHO_V1))], port=9001, target=9000, port_name="tcp"),
        _service("a", "echo-v2", [("echo-v2", ip(ECHO_V2))], port=9002, target=9000, port_name="tcp"),
        # TLS (passed through: the servers terminate it): `secure` has the v1 pod, secure-v2 the v2 pod
        _pod("a", "tls-v1", ip(TLS_V1), "secure"),
        _pod("a", "tls-v2", ip(TLS_V2), "secure"),
        _service("a", "secure", [("tls-v1", ip(TLS_V1))], port=8443, target=8443, port_name="tls"),
        _service("a", "secure-v2", [("tls-v2", ip(TLS_V2))], port=8443, target=8443, port_name="tls"),
    ]
    return "---\n".join(docs)


PRODUCER = """\
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: web, namespace: a, creationTimestamp: "2025-01-01T00:00:00Z"}
spec:
  parentRefs: [{group: "", kind: Service, name: web, port: 9080}]
  rules:
  - matches: [{headers: [{name: x-canary, value: "yes"}]}, {path: {type: PathPrefix, value: /v2}}]
    backendRefs: [{name: web-v2, port: 9080}]
  - backendRefs: [{name: web-v1, port: 9080, weight: 90}, {name: web-v2, port: 9080, weight: 10}]
"""

CONSUMER = """\
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: web-for-b, namespace: b}
spec:
  parentRefs: [{group: "", kind: Service, name: web, namespace: a}]
  rules:
  - backendRefs: [{name: web-v2, namespace: a, port: 9080}]
---
apiVersion: gateway.networking.k8s.io/v1beta1
kind: ReferenceGrant
metadata: {name: from-b, namespace: a}
spec:
  from: [{group: gateway.networking.k8s.io, kind: HTTPRoute, namespace: b}]
  to: [{group: "", kind: Service}]
"""


def _virtual_service(name: str, created: str) -> str:
    return f"""\
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: {name}, namespace: a, creationTimestamp: "{created}"}}
spec:
  hosts: [web.a.svc.cluster.local]
  http:
  - route: [{{destination: {{host: web-v2.a.svc.cluster.local, port: {{number: 9080}}}}}}]
"""


TCP_ROUTE = """\
apiVersion: gateway.networking.k8s.io/v1alpha2
kind: TCPRoute
metadata: {name: echo, namespace: a}
spec:
  parentRefs: [{group: "", kind: Service, name: echo}]
  rules:
  - backendRefs: [{name: echo-v1, port: 9001, weight: 90}, {name: echo-v2, port: 9002, weight: 10}]
"""


TLS_ROUTE = """\
apiVersion: gateway.networking.k8s.io/v1alpha2
kind: TLSRoute
metadata: {name: secure, namespace: a}
spec:
  parentRefs: [{group: "", kind: Service, name: secure, port: 8443}]
  rules:
  - backendRefs: [{name: secure-v2, port: 8443}]
"""


@pytest.fixture
async def mesh(tmp_path: pathlib.Path) -> AsyncIterator[tuple[Mesh, Servers]]:
    servers = Servers()
    authority = Authority()
    (tmp_path / "ca.pem").write_bytes(authority.pem)
    # both TLS servers answer for the Service's name (the SNI the client sends)
    cert, key = authority.issue(SECURE, sans=(SECURE,)).write(tmp_path, "secure")
    async with logs_on_failure(Mesh(work_dir=tmp_path, delta=False)) as m:
        m.write("world.yaml", _world(m))
        await m.meshd.start()
        await m.app(service="web", version="v1", pod="web-v1", ip=m.ip(V1))
        await m.app(service="web", version="v2", pod="web-v2", ip=m.ip(V2))
        await servers.name(m.ip(ECHO_V1), 9000, "v1")
        await servers.name(m.ip(ECHO_V2), 9000, "v2")
        for index, name in ((TLS_V1, "tls-v1"), (TLS_V2, "tls-v2")):
            await servers.name(m.ip(index), 8443, name, tls=server_context(str(cert), str(key)))
        await m.sidecar(pod="client-a", ip=m.ip(CLIENT_A), namespace="a")
        await m.sidecar(pod="client-b", ip=m.ip(CLIENT_B), namespace="b")
        try:
            yield m, servers
        finally:
            await servers.close()


async def _holds(m: Mesh, pod: str, text: str) -> bool:
    """Whether the sidecar's route configuration (Envoy's /config_dump) holds `text`."""
    return text in json.dumps(await m.envoys[pod].config_dump(resource="dynamic_route_configs"))


def _share(seen: Counter[str], version: str) -> float:
    return seen.get(version, 0) / sum(seen.values())


async def _routes_to(m: Mesh, client: int, expected: str, **headers: str) -> bool:
    status, body = await m.call(via_ip=m.ip(client), host="web.a:9080", headers=headers)
    return status == 200 and json.loads(body)["version"] == expected


async def _only(m: Mesh, client: int, version: str, count: int = 30) -> bool:
    seen = await m.versions(via_ip=m.ip(client), host="web.a:9080", count=count)
    return seen == Counter({version: count})


async def test_gamma_http_route_splits_matches_and_scopes_consumer_routes(mesh: tuple[Mesh, Servers]) -> None:
    m, _ = mesh
    # without a route: the Service balances over both pods
    seen = await m.versions(via_ip=m.ip(CLIENT_A), host="web.a:9080", count=100)
    assert 0.3 <= _share(seen, "v1") <= 0.7, seen

    m.write("producer.yaml", PRODUCER)
    for pod in ("client-a", "client-b"):
        await eventually(lambda pod=pod: _holds(m, pod, '"weight": 90'), what=f"{pod} to hold the route's weights")
    for client in (CLIENT_A, CLIENT_B):  # a producer route: every client, 90/10
        seen = await m.versions(via_ip=m.ip(client), host="web.a:9080", count=REQUESTS)
        assert set(seen) <= {"v1", "v2"} and 0.82 <= _share(seen, "v1") <= 0.97, (client, seen)
    for _ in range(10):  # the header match and the path prefix always go to v2
        assert await _routes_to(m, CLIENT_A, "v2", **{"x-canary": "yes"})
        status, body = await m.call(via_ip=m.ip(CLIENT_A), host="web.a:9080", path="/v2/x")
        assert status == 200 and json.loads(body)["version"] == "v2"

    # a consumer route in b: b's client only goes to v2, a's client keeps the producer's split
    m.write("consumer.yaml", CONSUMER)
    await eventually(lambda: _only(m, CLIENT_B, "v2"), what="b's client to follow its consumer route")
    seen = await m.versions(via_ip=m.ip(CLIENT_A), host="web.a:9080", count=REQUESTS)
    assert 0.82 <= _share(seen, "v1") <= 0.97, seen

    errors = await m.meshd.get_json("/debug/config_errors")
    assert not [e for e in errors if "HTTPRoute" in (e["resource"] or "")], errors


async def test_virtual_service_precedence_and_tcp_route(mesh: tuple[Mesh, Servers]) -> None:
    m, _ = mesh
    # a VirtualService older than the route wins for the same host (all to v2) ...
    m.write("producer.yaml", PRODUCER)
    m.write("vs.yaml", _virtual_service("web", "2024-01-01T00:00:00Z"))
    await eventually(lambda: _only(m, CLIENT_A, "v2"), what="the older VirtualService to route web")

    async def reported() -> bool:
        errors = await m.meshd.get_json("/debug/config_errors")
        return any("already routed by the older VirtualService VirtualService a/web" in e["message"] for e in errors)

    await eventually(reported, what="the younger route's VirtualService to be reported as ignored")
    # ... a younger one loses to the route (90/10 again; a new VirtualService: an edited one that loses would be
    # replaced by its last accepted version)
    m.write("vs.yaml", _virtual_service("web-late", "2026-01-01T00:00:00Z"))

    async def split() -> bool:
        seen = await m.versions(via_ip=m.ip(CLIENT_A), host="web.a:9080", count=REQUESTS)
        return 0.82 <= _share(seen, "v1") <= 0.97

    await eventually(split, what="the older route to win over the younger VirtualService")

    # a TCPRoute attached to the echo Service: connections split 90/10

    async def tcp_versions() -> Counter[str]:
        seen: Counter[str] = Counter()
        sem = asyncio.Semaphore(8)

        async def one() -> None:
            async with sem:
                try:
                    seen[await read_line(m.ip(CLIENT_A), 9000)] += 1
                except (OSError, TimeoutError) as exc:
                    seen[type(exc).__name__] += 1

        await asyncio.gather(*(one() for _ in range(REQUESTS)))
        return seen

    async def tcp_split() -> bool:
        seen = await tcp_versions()
        return set(seen) <= {"v1", "v2"} and 0.82 <= _share(seen, "v1") <= 0.97

    before = await tcp_versions()  # without the route: both pods about evenly
    assert 0.3 <= _share(before, "v1") <= 0.7, before
    m.write("tcp.yaml", TCP_ROUTE)
    await eventually(tcp_split, what="the TCPRoute to split connections 90/10")


async def test_gamma_tls_route_passes_the_services_sni_through_to_its_backend(
    mesh: tuple[Mesh, Servers], tmp_path: pathlib.Path
) -> None:
    """A TLSRoute with a Service parent: the client sidecars read the ClientHello's SNI and pass the connections
    naming the Service to the route's backend (secure-v2's pod, which terminates TLS); without it they reach the
    Service's own pod."""
    m, _ = mesh
    tls = client_context(str(tmp_path / "ca.pem"))

    async def answer(client: int) -> str:
        try:
            return await read_line(m.ip(client), 8443, tls=tls, sni=SECURE)
        except (OSError, TimeoutError) as exc:
            return type(exc).__name__

    async def answers(client: int, expected: str) -> bool:
        return [await answer(client) for _ in range(5)] == [expected] * 5

    await eventually(lambda: answers(CLIENT_A, "tls-v1"), what="the Service's own pod by its SNI, before the route")
    m.write("tls.yaml", TLS_ROUTE)
    for client in (CLIENT_A, CLIENT_B):  # a producer route: every client
        await eventually(lambda c=client: answers(c, "tls-v2"), what=f"client {client}: the TLSRoute's backend")
    errors = await m.meshd.get_json("/debug/config_errors")
    assert not [e for e in errors if "TLSRoute" in (e["resource"] or "")], errors
