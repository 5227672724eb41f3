"""WasmPlugin `type: NETWORK` through real Envoys (sidecars and a gateway, bound mode) with a real proxy-wasm
network module (tests/e2e/wasm_network_module.py, run by Envoy's V8) and real TCP traffic: a TCP echo app
(`raw:<data>`) behind the `raw` service, the HTTP `web` service behind sidecars.

The module puts its `pluginConfig` in front of what the upstream answers and closes a connection whose first
bytes are its deny prefix (the upstream never sees them). Shown: it runs on the selected workload's chains
only (`selector`), on the port and direction `match` names (CLIENT: outbound, SERVER: inbound, where it sees
the raw bytes of HTTP ahead of the HTTP connection manager); on a gateway's TCP server; `file://` and
`http://` modules (the latter only with its `sha256`); a module that cannot be fetched, verified or read:
FAIL_CLOSE closes every connection before it reaches the app, FAIL_OPEN passes them untouched."""

from __future__ import annotations

import asyncio
import json
import pathlib
from collections.abc import AsyncIterator

import pytest
from aiohttp import web

from tests.e2e.conftest import SERVICE, virtual_service
from tests.e2e.harness import Mesh, eventually, free_port, logs_on_failure
from tests.e2e.wasm_module import sha256
from tests.e2e.wasm_network_module import build_network_module

pytestmark = pytest.mark.e2e
RAW_PORT, GATEWAY_PORT = 8071, 31400
DROP = build_network_module(deny_prefix="DROP")
HTTP_DENY = build_network_module(deny_prefix="GET /deny")
CONFIG = """\
apiVersion: v1
kind: Pod
metadata: {{name: client, namespace: default, labels: {{app: client, security.istio.io/tlsMode: istio}}}}
status: {{podIP: {client}}}
---
apiVersion: v1
kind: Service
metadata: {{name: raw, namespace: default}}
spec:
  ports: [{{name: tcp-raw, port: 8071, targetPort: {raw_port}}}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: raw-1, namespace: default, labels: {{kubernetes.io/service-name: raw}}}}
ports: [{{name: tcp-raw, port: {raw_port}}}]
endpoints:
- {{addresses: [{raw}]}}
---
apiVersion: v1
kind: Pod
metadata: {{name: ingress-1, namespace: istio-system, labels: {{istio: ingressgateway}}}}
status: {{podIP: {gateway}}}
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: ingress, namespace: istio-system}}
spec:
  selector: {{istio: ingressgateway}}
  servers:
  - port: {{number: 31400, name: tcp, protocol: TCP}}
    hosts: ["*"]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: raw-ingress, namespace: istio-system}}
spec:
  hosts: ["*"]
  gateways: [ingress]
  tcp:
  - route: [{{destination: {{host: raw.default.svc.cluster.local, port: {{number: 8071}}}}}}]
"""


def plugin(name: str, *, url: str, selector: str, extra: str = "", namespace: str = "default") -> str:
    return f"""\
apiVersion: extensions.istio.io/v1alpha1
kind: WasmPlugin
metadata: {{name: {name}, namespace: {namespace}}}
spec:
  type: NETWORK
  selector: {{matchLabels: {selector}}}
  url: {url}
{extra}"""


class Echo:
    """The TCP app: answers `raw:<what it read>`; keeps what each connection sent."""

    def __init__(self) -> None:
        self.received: list[bytes] = []

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        data = await reader.read(100)
        self.received.append(data)
        writer.write(b"raw:" + data)
        await writer.drain()
        writer.close()


class Lab:
    def __init__(self, mesh: Mesh, echo: Echo, modules: pathlib.Path) -> None:
        self.mesh, self.echo, self.modules = mesh, echo, modules

    async def tcp(self, via: int, data: bytes, *, port: int = RAW_PORT) -> bytes:
        """`data` over a new connection to the proxy at `.via`; what comes back before the connection ends."""
        reader, writer = await asyncio.open_connection(self.mesh.ip(via), port)
        try:
            writer.write(data)
            await writer.drain()
            return await asyncio.wait_for(reader.read(200), 10)
        except ConnectionResetError:
            return b""
        finally:
            writer.close()

    async def http(self, path: str = "/") -> int | str:
        """A request from the client's sidecar to web: its status, or how the connection failed."""
        try:
            return (await self.mesh.request(via_ip=self.mesh.ip(1), host="web", path=path))[0]
        except Exception as exc:  # the connection closed by the plugin: no HTTP answer at all
            return type(exc).__name__

    async def errors_on(self, resource: str) -> list[str]:
        errors = await self.mesh.meshd.get_json("/debug/config_errors")
        return [e["message"] for e in errors if e["resource"] == resource]


@pytest.fixture
async def lab(tmp_path: pathlib.Path) -> AsyncIterator[Lab]:
    """meshd; sidecars client (.1), web-v1 (.2), web-v2 (.3); the TCP echo app at .4 (no sidecar); a gateway
    (.5) with a TCP server on 31400 to the echo app; modules in files: drop.wasm, http-deny.wasm."""
    modules = tmp_path / "modules"
    modules.mkdir()
    (modules / "drop.wasm").write_bytes(DROP)
    (modules / "http-deny.wasm").write_bytes(HTTP_DENY)
    echo = Echo()
    async with logs_on_failure(Mesh(work_dir=tmp_path, delta=False)) as m:
        raw_port = free_port()
        m.write("web.yaml", SERVICE.format(v1=m.ip(2), v2=m.ip(3)))
        m.write("web-vs.yaml", virtual_service(100, 0))
        m.write("raw.yaml", CONFIG.format(client=m.ip(1), raw=m.ip(4), raw_port=raw_port, gateway=m.ip(5)))
        await m.meshd.start()
        server = await asyncio.start_server(echo.serve, m.ip(4), raw_port)
        try:
            await m.app(service="web", version="v1", pod="web-v1", ip=m.ip(2))
            await m.app(service="web", version="v2", pod="web-v2", ip=m.ip(3))
            for pod, host in (("client", 1), ("web-v1", 2), ("web-v2", 3)):
                await m.sidecar(pod=pod, ip=m.ip(host))
            await m.sidecar(pod="ingress-1", ip=m.ip(5), namespace="istio-system", node_type="router")
            lab = Lab(m, echo, modules)
            await eventually(lambda: _echoes(lab, 1), what="the echo app through the client's sidecar")
            yield lab
        finally:
            server.close()
            await server.wait_closed()


async def _echoes(lab: Lab, via: int, *, port: int = RAW_PORT, prefix: bytes = b"") -> bool:
    return await lab.tcp(via, b"hello", port=port) == prefix + b"raw:hello"


async def test_a_network_module_runs_on_the_selected_workloads_tcp_connections_only(lab: Lab) -> None:
    extra = "  pluginConfig: {from: net}\n  match: [{mode: CLIENT, ports: [{number: 8071}]}]\n"
    lab.mesh.write("plugin.yaml", plugin("net", url=f"file://{lab.modules / 'drop.wasm'}", selector="{app: client}",
                                         extra=extra))  # fmt: skip
    config = b'{"from":"net"}'
    await eventually(lambda: _echoes(lab, 1, prefix=config), what="the module's configuration before the answer")
    before = len(lab.echo.received)
    assert await lab.tcp(1, b"DROP table") == b""  # closed by the module: no answer
    assert b"DROP table" not in lab.echo.received[before:]  # and the app never saw the data
    # web-v1's sidecar (same outbound listener, not selected) and the client's HTTP port (not matched): untouched
    assert await lab.tcp(2, b"hello") == b"raw:hello"
    assert await lab.tcp(2, b"DROP table") == b"raw:DROP table"
    assert await lab.http() == 200
    ecds = json.dumps(await lab.mesh.envoys["client"].config_dump(resource="ecds_filters"))
    assert "default.net~" in ecds and "envoy.extensions.filters.network.wasm.v3.Wasm" in ecds
    assert "default.net~" not in json.dumps(await lab.mesh.envoys["web-v1"].config_dump(resource="dynamic_listeners"))
    assert not await lab.errors_on("WasmPlugin default/net")


async def test_server_mode_sees_the_raw_bytes_of_http_on_the_selected_version_only(lab: Lab) -> None:
    """On web-v1's inbound HTTP chain, ahead of the HTTP connection manager: a request line starting
    `GET /deny` closes the connection (the client's sidecar answers 503), other requests pass; web-v2 is
    not selected, and web-v1's outbound chains are not SERVER."""
    url = f"file://{lab.modules / 'http-deny.wasm'}"
    mesh = lab.mesh
    mesh.write("plugin.yaml", plugin("gate", url=url, selector="{app: web, version: v1}",
                                     extra="  match: [{mode: SERVER}]\n"))  # fmt: skip
    await eventually(lambda: _http_is(lab, "/deny/x", 503), what="web-v1's sidecar closing /deny connections")
    assert await lab.http("/fine") == 200
    mesh.write("web-vs.yaml", virtual_service(0, 100))
    await eventually(lambda: _http_is(lab, "/deny/x", 200), what="web-v2 (not selected) answering /deny")
    # web-v1's own outbound connections (CLIENT) are not matched: its sidecar's request to web-v2 passes
    status, _, body = await mesh.request(via_ip=mesh.ip(2), host="web", path="/deny/x")
    assert status == 200 and json.loads(body)["version"] == "v2", (status, body)
    dump = json.dumps(await mesh.envoys["client"].config_dump(resource="dynamic_listeners"))
    assert "default.gate~" not in dump


async def _http_is(lab: Lab, path: str, wanted: int) -> bool:
    return await lab.http(path) == wanted


async def test_a_gateways_tcp_server_runs_the_module(lab: Lab) -> None:
    await eventually(lambda: _echoes(lab, 5, port=GATEWAY_PORT), what="the echo app through the gateway")
    url = f"file://{lab.modules / 'drop.wasm'}"
    edge = plugin("edge", namespace="istio-system", url=url, selector="{istio: ingressgateway}",
                  extra="  pluginConfig: {at: edge}\n")  # fmt: skip
    lab.mesh.write("plugin.yaml", edge)
    await eventually(
        lambda: _echoes(lab, 5, port=GATEWAY_PORT, prefix=b'{"at":"edge"}'), what="the module on the gateway"
    )
    assert await lab.tcp(5, b"DROP it", port=GATEWAY_PORT) == b""
    assert await lab.tcp(1, b"hello") == b"raw:hello"  # the sidecars are not selected


async def test_an_http_module_runs_only_with_its_sha256_and_fails_as_its_strategy_says(lab: Lab) -> None:
    module_port = free_port()
    fetches: list[str] = []

    async def serve(request: web.Request) -> web.Response:
        fetches.append(request.path)
        return web.Response(body=DROP)

    app = web.Application()
    app.router.add_get("/drop.wasm", serve)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    await web.TCPSite(runner, lab.mesh.ip(7), module_port).start()
    url = f"http://{lab.mesh.ip(7)}:{module_port}/drop.wasm"
    try:
        good = f"  sha256: {sha256(DROP)}\n  pluginConfig: {{from: http}}\n"
        lab.mesh.write("plugin.yaml", plugin("remote", url=url, selector="{app: client}", extra=good))
        await eventually(lambda: _echoes(lab, 1, prefix=b'{"from":"http"}'), what="the fetched module running")
        assert fetches
        # a wrong checksum: Envoy never runs the module; FAIL_CLOSE (the default) closes every connection
        bad = f"  sha256: '{'0' * 64}'\n  pluginConfig: {{from: bad}}\n"
        lab.mesh.write("plugin.yaml", plugin("remote", url=url, selector="{app: client}", extra=bad))
        await eventually(lambda: _closed(lab), what="FAIL_CLOSE: connections closed")
        # FAIL_OPEN: the filter is skipped, connections pass untouched
        lab.mesh.write("plugin.yaml", plugin("remote", url=url, selector="{app: client}",
                                             extra=bad + "  failStrategy: FAIL_OPEN\n"))  # fmt: skip
        await eventually(lambda: _echoes(lab, 1), what="FAIL_OPEN: connections pass, the module not run")
        assert await lab.tcp(1, b"DROP it") == b"raw:DROP it"
    finally:
        await runner.cleanup()


async def _closed(lab: Lab) -> bool:
    before = len(lab.echo.received)
    closed = await lab.tcp(1, b"hello") == b""
    return closed and len(lab.echo.received) == before  # the app saw nothing


@pytest.mark.parametrize("strategy", ["FAIL_CLOSE", "FAIL_OPEN"])
async def test_an_unreadable_file_module_fails_as_its_strategy_says(lab: Lab, strategy: str) -> None:
    """Envoy rejects the Wasm config of a module it cannot read (reported on the WasmPlugin). FAIL_CLOSE: the
    network filter, without a config, closes every connection before the app; FAIL_OPEN: its default config
    (a network RBAC filter without rules) stands in, connections pass. A readable module then takes over."""
    extra = f"  failStrategy: {strategy}\n  match: [{{mode: CLIENT, ports: [{{number: 8071}}]}}]\n"
    lab.mesh.write("plugin.yaml", plugin("missing", url="file:///nonexistent/drop.wasm", selector="{app: client}",
                                         extra=extra))  # fmt: skip

    async def reported() -> list[str]:
        found = await lab.errors_on("WasmPlugin default/missing")
        assert found and "/nonexistent/drop.wasm" in found[0], found
        return found

    await eventually(reported, what="Envoy's rejection reported on the WasmPlugin")

    async def in_force() -> bool:
        dump = await lab.mesh.envoys["client"].config_dump(resource="dynamic_listeners")
        active = [c.get("active_state") for c in dump.get("configs", [])]
        warming = [c.get("warming_state") for c in dump.get("configs", []) if c.get("warming_state")]
        return "default.missing~" in json.dumps(active) and "default.missing~" not in json.dumps(warming)

    await eventually(in_force, what="the client's listeners with the plugin's filter, active")
    for _ in range(3):
        if strategy == "FAIL_CLOSE":
            assert await _closed(lab)
        else:
            assert await lab.tcp(1, b"DROP x") == b"raw:DROP x"
    assert await lab.http() == 200  # port 9080 is not matched
    readable = plugin("missing", url=f"file://{lab.modules / 'drop.wasm'}", selector="{app: client}",
                      extra=extra + "  pluginConfig: {v: 1}\n")  # fmt: skip
    lab.mesh.write("plugin.yaml", readable)
    await eventually(lambda: _echoes(lab, 1, prefix=b'{"v":1}'), what="the readable module running")
