"""L4 features through real Envoy sidecars without traffic capture (listeners bound on each proxy's address):
VirtualService `tcp` routes shifting connections 80/20 between versions, `tls` routes choosing a backend by
SNI, DestinationRule `proxyProtocol` (the backend reads the PROXY header), `tunnel` (TCP carried over HTTP
CONNECT through a proxy), `workloadSelector` (the rule reaches only the selected client), and a Sidecar's
`ingress` listeners (a custom port forwarded to the app at its defaultEndpoint, plaintext and TLS).

One mesh for the module: sidecars `client` and `canary` (namespace default), `canary` in namespace other,
`legacy` (with a Sidecar declaring ingress ports); backends are plain servers reached directly."""

from __future__ import annotations

import asyncio
import json
import pathlib
import re
import ssl
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio
from aiohttp import web

from tests.certs import Authority
from tests.e2e.harness import Mesh, eventually, free_port, logs_on_failure
from tests.e2e.l4_servers import Servers, client_context, read_line, server_context

pytestmark = [pytest.mark.e2e, pytest.mark.asyncio(loop_scope="module")]

CLIENT, CANARY, ECHO_V1, ECHO_V2, TLS_A, TLS_B, PP, SECURE, PROXY, TARGET, LEGACY, OTHER = range(1, 13)


def _pod(mesh: Mesh, name: str, host: int, labels: str, namespace: str = "default") -> str:
    return (
        f"apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: {namespace}, labels: {{{labels}}}}}\n"
        f"status: {{podIP: {mesh.ip(host)}}}"
    )


def _service(name: str, port: int, port_name: str, endpoints: list[tuple[str, int, str]], target: int = 0) -> str:
    """A Service and its EndpointSlice: (address, port, pod name) per endpoint."""
    target = target or port
    lines = [
        f"- {{addresses: [{ip}], targetRef: {{kind: Pod, name: {pod}, namespace: default}}}}"
        for ip, _, pod in endpoints
    ]
    return (
        f"apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: default}}\n"
        f"spec: {{ports: [{{name: {port_name}, port: {port}, targetPort: {target}}}]}}\n---\n"
        f"apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n"
        f"metadata: {{name: {name}-1, namespace: default, labels: {{kubernetes.io/service-name: {name}}}}}\n"
        f"addressType: IPv4\nports: [{{name: {port_name}, port: {endpoints[0][1]}}}]\nendpoints:\n" + "\n".join(lines)
    )


def _world(mesh: Mesh, ca: pathlib.Path, legacy_app: int, certs: pathlib.Path) -> str:
    ip = mesh.ip
    docs = [
        _pod(mesh, "client", CLIENT, "app: client"),
        _pod(mesh, "canary", CANARY, "app: canary"),
        _pod(mesh, "canary-other", OTHER, "app: canary", namespace="other"),
        _pod(mesh, "legacy", LEGACY, "app: legacy"),
        _pod(mesh, "echo-v1", ECHO_V1, "app: tcp-echo, version: v1"),
        _pod(mesh, "echo-v2", ECHO_V2, "app: tcp-echo, version: v2"),
        _service("tcp-echo", 9000, "tcp", [(ip(ECHO_V1), 9000, "echo-v1"), (ip(ECHO_V2), 9000, "echo-v2")]),
        "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: tcp-echo, namespace: default}\n"
        "spec: {host: tcp-echo, subsets: [{name: v1, labels: {version: v1}}, {name: v2, labels: {version: v2}}]}",
        # TLS by SNI: two hosts of one ServiceEntry on 8443, each routed to its own backend
        "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: tls-front, namespace: default}\n"
        "spec: {hosts: [a.tls.test, b.tls.test], location: MESH_INTERNAL, resolution: STATIC,\n"
        "       ports: [{number: 8443, name: tls, protocol: TLS}]}",
        _service("backend-a", 8443, "tls", [(ip(TLS_A), 8443, "tls-a")]),
        _service("backend-b", 8443, "tls", [(ip(TLS_B), 8443, "tls-b")]),
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: tls-by-sni, namespace: default}\n"
        "spec:\n  hosts: [a.tls.test, b.tls.test]\n  tls:\n"
        "  - match: [{port: 8443, sniHosts: [a.tls.test]}]\n    route: [{destination: {host: backend-a}}]\n"
        "  - match: [{port: 8443, sniHosts: [b.tls.test]}]\n    route: [{destination: {host: backend-b}}]",
        _service("pp", 7000, "tcp", [(ip(PP), 7000, "pp")]),
        # an HTTPS backend: only a client whose rule originates TLS gets an answer
        _service("secure", 80, "http", [(ip(SECURE), 8443, "secure")], target=8443),
        "apiVersion: networking.istio.io/v1\nkind: DestinationRule\n"
        "metadata: {name: secure-canary, namespace: default}\n"
        "spec:\n  host: secure\n  workloadSelector: {matchLabels: {app: canary}}\n"
        f"  trafficPolicy: {{tls: {{mode: SIMPLE, caCertificates: {ca}, sni: secure.test}}}}",
        _service("corp-proxy", 3128, "tcp", [(ip(PROXY), 3128, "corp-proxy")]),
        "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: corp-proxy, namespace: default}\n"
        f"spec: {{host: corp-proxy, trafficPolicy: {{tunnel: {{targetHost: {ip(TARGET)}, targetPort: 9100}}}}}}",
        "apiVersion: networking.istio.io/v1\nkind: Sidecar\nmetadata: {name: legacy, namespace: default}\n"
        "spec:\n  workloadSelector: {labels: {app: legacy}}\n  ingress:\n"
        f"  - port: {{number: 9999, protocol: HTTP, name: http-custom}}\n    defaultEndpoint: 127.0.0.1:{legacy_app}\n"
        f"  - port: {{number: 9998, protocol: TCP, name: tls-custom}}\n    defaultEndpoint: 127.0.0.1:{legacy_app}\n"
        f"    tls: {{mode: SIMPLE, serverCertificate: {certs / 'legacy.pem'}, privateKey: {certs / 'legacy-key.pem'}}}",
    ]
    return "\n---\n".join(docs) + "\n"


def _tcp_vs(v1: int, v2: int) -> str:
    return (
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: tcp-echo, namespace: default}\n"
        "spec:\n  hosts: [tcp-echo]\n  tcp:\n  - match: [{port: 9000}]\n    route:\n"
        f"    - {{destination: {{host: tcp-echo, subset: v1, port: {{number: 9000}}}}, weight: {v1}}}\n"
        f"    - {{destination: {{host: tcp-echo, subset: v2, port: {{number: 9000}}}}, weight: {v2}}}\n"
    )


def _pp_rule(version: str | None) -> str:
    policy = f"{{proxyProtocol: {{version: {version}}}}}" if version else "{}"
    return (
        "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: pp, namespace: default}\n"
        f"spec: {{host: pp, trafficPolicy: {policy}}}\n"
    )


class L4Mesh:
    def __init__(self, mesh: Mesh, servers: Servers, ca: pathlib.Path) -> None:
        self.mesh, self.servers, self.ca = mesh, servers, ca

    def ip(self, host: int) -> str:
        return self.mesh.ip(host)

    async def listener(self, pod: str, name: str) -> str:
        dump = await self.mesh.envoys[pod].config_dump(resource="dynamic_listeners")
        for entry in dump.get("configs", []):
            if entry.get("name") == name and "active_state" in entry:
                return json.dumps(entry["active_state"])
        return ""

    async def holds(self, pod: str, listener: str, text: str) -> None:
        async def held() -> bool:
            return text in await self.listener(pod, listener)

        await eventually(held, timeout=20, what=f"{pod}'s listener {listener} to hold {text}")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def l4(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[L4Mesh]:
    work = tmp_path_factory.mktemp("l4")
    certs = work / "certs"
    certs.mkdir()
    authority = Authority()
    ca = certs / "ca.pem"
    ca.write_bytes(authority.pem)
    for name, sans in {
        "a": ("a.tls.test",),
        "b": ("b.tls.test",),
        "secure": ("secure.test",),
        "legacy": ("legacy.test",),
    }.items():
        authority.issue(sans[0], sans=sans).write(certs, name)
    servers = Servers()
    runners: list[web.AppRunner] = []
    async with logs_on_failure(Mesh(work_dir=work, delta=False)) as m:
        legacy_app = free_port()
        m.write("world.yaml", _world(m, ca, legacy_app, certs))
        m.write("tcp-vs.yaml", _tcp_vs(100, 0))
        m.write("pp.yaml", _pp_rule("V1"))
        await m.meshd.start()
        await servers.name(m.ip(ECHO_V1), 9000, "v1")
        await servers.name(m.ip(ECHO_V2), 9000, "v2")
        await servers.name(
            m.ip(TLS_A), 8443, "tls-a", tls=server_context(str(certs / "a.pem"), str(certs / "a-key.pem"))
        )
        await servers.name(
            m.ip(TLS_B), 8443, "tls-b", tls=server_context(str(certs / "b.pem"), str(certs / "b-key.pem"))
        )
        await servers.proxy_protocol(m.ip(PP), 7000)
        await servers.connect_proxy(m.ip(PROXY), 3128)
        await servers.name(m.ip(TARGET), 9100, "tunnelled")
        runners.append(await _https_app(m.ip(SECURE), 8443, certs))
        await m.app(service="legacy", version="v1", pod="legacy-app", ip="127.0.0.1", port=legacy_app)
        for pod, host, namespace in (("client", CLIENT, "default"), ("canary", CANARY, "default"),
                                     ("canary-other", OTHER, "other"), ("legacy", LEGACY, "default")):  # fmt: skip
            await m.sidecar(pod=pod, ip=m.ip(host), namespace=namespace)
        try:
            yield L4Mesh(m, servers, ca)
        finally:
            await servers.close()
            for runner in runners:
                await runner.cleanup()


async def _https_app(host: str, port: int, certs: pathlib.Path) -> web.AppRunner:
    async def hello(_: web.Request) -> web.Response:
        return web.json_response({"served": "secure over TLS"})

    app = web.Application()
    app.router.add_get("/{tail:.*}", hello)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    await web.TCPSite(
        runner, host, port, ssl_context=server_context(str(certs / "secure.pem"), str(certs / "secure-key.pem"))
    ).start()
    return runner


async def _weights(l4: L4Mesh) -> dict[str, int]:
    """The weighted clusters of the client's tcp-echo listener (subset -> weight)."""
    text = await l4.listener("client", f"{l4.ip(CLIENT)}_9000")
    found = re.findall(r'"name": "outbound\|9000\|(v\d)\|tcp-echo[^"]*", "weight": (\d+)', text)
    return {subset: int(weight) for subset, weight in found}


async def _versions(l4: L4Mesh, count: int) -> Counter[str]:
    seen: Counter[str] = Counter()
    sem = asyncio.Semaphore(10)

    async def one() -> None:
        async with sem:
            try:
                seen[await read_line(l4.ip(CLIENT), 9000)] += 1
            except (OSError, TimeoutError) as exc:
                seen[type(exc).__name__] += 1

    await asyncio.gather(*(one() for _ in range(count)))
    return seen


async def _has_weights(l4: L4Mesh, expected: dict[str, int]) -> bool:
    return await _weights(l4) == expected


async def test_tcp_traffic_shifting_80_20_then_20_80(l4: L4Mesh) -> None:
    """Istio's TCP traffic shifting task: connections to tcp-echo split by the VirtualService's weights."""
    await l4.holds("client", f"{l4.ip(CLIENT)}_9000", "outbound|9000|v1|tcp-echo")
    assert await _versions(l4, 20) == Counter({"v1": 20})  # 100/0

    l4.mesh.write("tcp-vs.yaml", _tcp_vs(80, 20))
    await eventually(lambda: _has_weights(l4, {"v1": 80, "v2": 20}), timeout=20, what="the 80/20 listener")
    seen = await _versions(l4, 200)
    assert set(seen) == {"v1", "v2"} and 135 <= seen["v1"] <= 185, seen  # 160 expected, ~4 standard deviations

    l4.mesh.write("tcp-vs.yaml", _tcp_vs(20, 80))
    await eventually(lambda: _has_weights(l4, {"v1": 20, "v2": 80}), timeout=20, what="the 20/80 listener")
    seen = await _versions(l4, 200)
    assert set(seen) == {"v1", "v2"} and 135 <= seen["v2"] <= 185, seen


async def test_tls_routing_by_sni_to_two_backends_on_one_port(l4: L4Mesh) -> None:
    """Istio's TLS routing: the sidecar reads the ClientHello's SNI and passes the TLS connection through to
    the backend of that host, which terminates it with its own certificate."""
    tls = client_context(str(l4.ca))
    await l4.holds("client", f"{l4.ip(CLIENT)}_8443", "tls_inspector")
    assert await read_line(l4.ip(CLIENT), 8443, tls=tls, sni="a.tls.test") == "tls-a"
    assert await read_line(l4.ip(CLIENT), 8443, tls=tls, sni="b.tls.test") == "tls-b"
    with pytest.raises((OSError, ssl.SSLError, TimeoutError)):
        await read_line(l4.ip(CLIENT), 8443, tls=tls, sni="c.tls.test")  # no chain for that name


async def test_proxy_protocol_header_reaches_the_backend(l4: L4Mesh) -> None:
    """DestinationRule proxyProtocol: v1 (text) then v2 (binary) headers carrying the downstream addresses."""
    await l4.holds("client", f"{l4.ip(CLIENT)}_7000", "outbound|7000||pp")

    async def header() -> str:
        return await read_line(l4.ip(CLIENT), 7000)

    v1 = await eventually(header, timeout=20, what="a PROXY v1 header at the backend")
    assert v1.startswith("PROXY TCP4 ") and v1.split()[3] == l4.ip(CLIENT) and v1.split()[5] == "7000", v1

    l4.mesh.write("pp.yaml", _pp_rule("V2"))

    async def binary() -> str | None:
        found = await header()
        return found if found.startswith("v2 ") else None

    v2 = await eventually(binary, timeout=20, what="a PROXY v2 header at the backend")
    assert v2.startswith("v2 0d0a0d0a000d0a515549540a21"), v2  # signature, version 2 PROXY command
    l4.mesh.write("pp.yaml", _pp_rule("V1"))


async def test_tunnel_carries_tcp_over_http_connect_through_the_proxy(l4: L4Mesh) -> None:
    """DestinationRule tunnel: the sidecar opens `CONNECT <targetHost>:<targetPort>` to the rule's host (an
    HTTP proxy) and the connection's bytes flow through it to the target."""
    await l4.holds("client", f"{l4.ip(CLIENT)}_3128", "tunneling_config")
    assert await read_line(l4.ip(CLIENT), 3128) == "tunnelled"
    assert f"CONNECT {l4.ip(TARGET)}:9100" in l4.servers.connect_targets, l4.servers.connect_targets


async def test_workload_selector_rule_applies_only_to_the_selected_client(l4: L4Mesh) -> None:
    """A DestinationRule selecting app=canary originates TLS for the canary only: the other client of its
    namespace, and a canary of another namespace, send plaintext to the HTTPS backend and fail."""
    host = "secure.default.svc.cluster.local"

    async def status(pod: int) -> int:
        code, _, _ = await l4.mesh.request(via_ip=l4.ip(pod), host=host, port=80)
        return code

    async def canary_served() -> bool:
        return await status(CANARY) == 200

    await eventually(canary_served, timeout=20, what="the canary's TLS origination")
    assert await status(CLIENT) >= 500
    assert await status(OTHER) >= 500
    clusters = json.dumps(await l4.mesh.envoys["client"].config_dump(resource="dynamic_active_clusters"))
    assert "secure.test" not in clusters  # the selected rule's SNI never reached the other client


async def test_sidecar_ingress_forwards_a_custom_port_to_the_default_endpoint(l4: L4Mesh) -> None:
    """A Sidecar's ingress listeners on the legacy proxy: 9999 (HTTP) and 9998 (TLS terminated with its own
    certificate files) reach the app listening on 127.0.0.1 only."""

    async def plain() -> dict[str, Any] | None:
        code, _, body = await l4.mesh.request(via_ip=l4.ip(LEGACY), host="legacy", port=9999)
        return json.loads(body) if code == 200 else None

    answer = await eventually(plain, timeout=20, what="the ingress port 9999 to reach the app")
    assert answer["pod"] == "legacy-app"

    tls = client_context(str(l4.ca))
    reader, writer = await asyncio.open_connection(l4.ip(LEGACY), 9998, ssl=tls, server_hostname="legacy.test")
    writer.write(b"GET / HTTP/1.1\r\nHost: legacy\r\nConnection: close\r\n\r\n")
    response = (await asyncio.wait_for(reader.read(), 10)).decode()
    writer.close()
    assert response.startswith("HTTP/1.1 200") and "legacy-app" in response, response
    clusters = json.dumps(await l4.mesh.envoys["legacy"].config_dump(resource="dynamic_active_clusters"))
    assert "inbound|9999||" in clusters and f'"port_value": {9999}' not in clusters

    status = await l4.mesh.meshd.get_json("/debug/syncz")
    assert all(t["nacked"] is None for c in status for t in c["types"].values()), status
