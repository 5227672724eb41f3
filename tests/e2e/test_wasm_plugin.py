"""WasmPlugin through real Envoy sidecars with a real proxy-wasm module (tests/e2e/wasm_module.py, run by
Envoy's V8): the module's response header on the selected workload only, its `pluginConfig` as the header's
value, its 403 on /deny; `phase` placing it before or after the authorization filters (whose 403 answers
first); `file://` and `http://` (a local server) modules, the latter only when Envoy finds the `sha256`;
FAIL_CLOSE (the default) refusing every request when the module cannot be fetched, verified or read, FAIL_OPEN
skipping the filter; an invalid WasmPlugin reported (/debug/config_errors) naming its field."""

from __future__ import annotations

import asyncio
import json
import pathlib
from collections.abc import AsyncIterator

import pytest
from aiohttp import web

from tests.e2e.conftest import SERVICE, virtual_service
from tests.e2e.harness import Mesh, eventually, logs_on_failure
from tests.e2e.wasm_module import build_module, sha256

pytestmark = pytest.mark.e2e
HEADER = "x-wasm-plugin"
MODULE = build_module(header=HEADER, deny_prefix="/deny")
CLIENT_POD = """\
apiVersion: v1
kind: Pod
metadata: {{name: client, namespace: default, labels: {{app: client, security.istio.io/tlsMode: istio}}}}
status: {{podIP: {ip}}}
"""
DENY_DENY = """\
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: no-deny-paths, namespace: default}
spec:
  selector: {matchLabels: {app: web}}
  action: DENY
  rules: [{to: [{operation: {paths: ["/deny*"]}}]}]
"""


def plugin(name: str, *, url: str, selector: str, extra: str = "") -> str:
    return f"""\
apiVersion: extensions.istio.io/v1alpha1
kind: WasmPlugin
metadata: {{name: {name}, namespace: default}}
spec:
  selector: {{matchLabels: {selector}}}
  url: {url}
{extra}"""


@pytest.fixture
async def mesh(tmp_path: pathlib.Path) -> AsyncIterator[Mesh]:
    """meshd + sidecars: client (.1), web-v1 (.2), web-v2 (.3); all of web's traffic to v1."""
    async with logs_on_failure(Mesh(work_dir=tmp_path, delta=False)) as m:
        m.write("web.yaml", SERVICE.format(v1=m.ip(2), v2=m.ip(3)))
        m.write("web-vs.yaml", virtual_service(100, 0))
        m.write("client.yaml", CLIENT_POD.format(ip=m.ip(1)))
        await m.meshd.start()
        await m.app(service="web", version="v1", pod="web-v1", ip=m.ip(2))
        await m.app(service="web", version="v2", pod="web-v2", ip=m.ip(3))
        for pod, host in (("client", 1), ("web-v1", 2), ("web-v2", 3)):
            await m.sidecar(pod=pod, ip=m.ip(host))
        yield m


@pytest.fixture
def module_file(tmp_path: pathlib.Path) -> pathlib.Path:
    path = tmp_path / "header.wasm"
    path.write_bytes(MODULE)
    return path


class ModuleServer:
    """Serves the module at /header.wasm (aiohttp on a loopback address) and counts the fetches."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port, self.fetches = host, port, 0
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/header.wasm"

    async def _module(self, _: web.Request) -> web.Response:
        self.fetches += 1
        return web.Response(body=MODULE, content_type="application/wasm")

    async def start(self) -> ModuleServer:
        app = web.Application()
        app.router.add_get("/header.wasm", self._module)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        await web.TCPSite(self._runner, self.host, self.port).start()
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


async def _get(mesh: Mesh, path: str = "/") -> tuple[int, dict[str, str], str]:
    status, headers, body = await mesh.request(via_ip=mesh.ip(1), host="web", path=path)
    return status, headers, body


async def _errors_on(mesh: Mesh, resource: str) -> list[str]:
    return [e["message"] for e in await mesh.meshd.get_json("/debug/config_errors") if e["resource"] == resource]


async def test_a_file_module_adds_its_header_on_the_selected_workload_only(
    mesh: Mesh, module_file: pathlib.Path
) -> None:
    assert HEADER not in (await _get(mesh))[1]
    mesh.write(
        "plugin.yaml",
        plugin(
            "header",
            url=f"file://{module_file}",
            selector="{app: web, version: v1}",
            extra="  pluginConfig: {from: file}\n  match: [{mode: SERVER}]\n",
        ),
    )

    async def header() -> bool:
        status, headers, _ = await _get(mesh)
        return status == 200 and headers.get(HEADER) == '{"from":"file"}'

    await eventually(header, what="the plugin's header from web-v1's sidecar")
    status, _, body = await _get(mesh, "/deny/x")
    assert (status, body) == (403, "denied by wasm"), (status, body)
    ecds = json.dumps(await mesh.envoys["web-v1"].config_dump(resource="ecds_filters"))
    assert "default.header" in ecds and "envoy.wasm.runtime.v8" in ecds
    # the client and web-v2 are not selected: v2's answers carry no header
    assert "default.header" not in json.dumps(await mesh.envoys["client"].config_dump(resource="dynamic_listeners"))
    mesh.write("web-vs.yaml", virtual_service(0, 100))

    async def from_v2() -> bool:
        status, headers, body = await _get(mesh)
        return status == 200 and json.loads(body)["version"] == "v2" and HEADER not in headers

    await eventually(from_v2, what="web-v2's answers, without the header")
    assert not await _errors_on(mesh, "WasmPlugin default/header")


async def test_phase_places_the_plugin_before_or_after_authorization(mesh: Mesh, module_file: pathlib.Path) -> None:
    mesh.write("deny.yaml", DENY_DENY)
    await eventually(lambda: _body_is(mesh, "RBAC: access denied"), what="the DENY policy on /deny")
    for phase, answer in (("AUTHN", "denied by wasm"), ("STATS", "RBAC: access denied"), ("AUTHZ", "denied by wasm")):
        mesh.write(
            "plugin.yaml",
            plugin(
                "gate",
                url=f"file://{module_file}",
                selector="{app: web}",
                extra=f"  phase: {phase}\n  pluginConfig: {{phase: {phase}}}\n",
            ),
        )
        await eventually(lambda p=phase: _header_is(mesh, json.dumps({"phase": p})), what=f"the {phase} plugin")
        await eventually(lambda a=answer: _body_is(mesh, a), what=f"{phase}: /deny answered by {answer!r}")


async def _header_is(mesh: Mesh, wanted: str) -> bool:
    status, headers, _ = await _get(mesh)
    return status == 200 and headers.get(HEADER) == wanted.replace(" ", "")


async def _body_is(mesh: Mesh, wanted: str) -> bool:
    status, _, body = await _get(mesh, "/deny/x")
    return status == 403 and body == wanted


async def test_an_http_module_runs_only_with_its_sha256(mesh: Mesh) -> None:
    server = await ModuleServer(mesh.ip(7), 8090).start()
    try:
        client_plugin = "{app: client}"
        good = (
            f"  sha256: {sha256(MODULE)}\n  pluginConfig: {{from: http}}\n"
            "  match: [{mode: CLIENT, ports: [{number: 9080}]}]\n"
        )
        mesh.write("plugin.yaml", plugin("remote", url=server.url, selector=client_plugin, extra=good))
        await eventually(lambda: _header_is(mesh, '{"from":"http"}'), what="the fetched module's header")
        assert server.fetches >= 1
        clusters = json.dumps(await mesh.envoys["client"].config_dump(resource="dynamic_active_clusters"))
        assert f"wasm|http|{mesh.ip(7)}|8090" in clusters

        # a wrong checksum: Envoy never runs the module; FAIL_CLOSE (the default) answers every request 503
        wrong = "0" * 64
        bad = f"  sha256: '{wrong}'\n  pluginConfig: {{from: bad}}\n"
        mesh.write("plugin.yaml", plugin("remote", url=server.url, selector=client_plugin, extra=bad))
        await eventually(lambda: _status_is(mesh, 503), what="FAIL_CLOSE: requests refused")
        # FAIL_OPEN: the filter is skipped, requests pass without the header
        mesh.write(
            "plugin.yaml",
            plugin("remote", url=server.url, selector=client_plugin, extra=bad + "  failStrategy: FAIL_OPEN\n"),
        )

        async def passes() -> bool:
            status, headers, _ = await _get(mesh)
            return status == 200 and HEADER not in headers

        await eventually(passes, what="FAIL_OPEN: requests pass, the module not run")
    finally:
        await server.stop()


async def test_an_unfetchable_module_fails_closed(mesh: Mesh) -> None:
    """Nothing listens where the module is: Envoy's fetch fails (after its retries) and FAIL_CLOSE refuses."""
    url = f"http://{mesh.ip(8)}:8091/header.wasm"
    extra = f"  sha256: {sha256(MODULE)}\n"
    mesh.write("plugin.yaml", plugin("unfetchable", url=url, selector="{app: client}", extra=extra))
    seen: list[int] = []

    async def refused() -> bool:
        seen.append((await _get(mesh))[0])
        return seen[-1] == 503

    await eventually(refused, timeout=60, what="FAIL_CLOSE: an unfetchable module refuses requests")
    assert set(seen) <= {200, 503}, seen  # the listener without the plugin until the new one is ready


async def test_no_request_passes_the_plugin_while_its_module_is_fetched(mesh: Mesh) -> None:
    """A slow module server (6 s): the listener that references the new filter warms while Envoy fetches, so
    no new connection meets the filter before its module runs (FAIL_CLOSE leaves no gap at creation)."""

    async def slow(_: web.Request) -> web.Response:
        await asyncio.sleep(6)
        return web.Response(body=MODULE)

    app = web.Application()
    app.router.add_get("/slow.wasm", slow)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    await web.TCPSite(runner, mesh.ip(9), 8092).start()
    try:
        extra = f"  sha256: {sha256(MODULE)}\n  pluginConfig: {{from: slow}}\n"
        url = f"http://{mesh.ip(9)}:8092/slow.wasm"
        mesh.write("plugin.yaml", plugin("slow", url=url, selector="{app: client}", extra=extra))
        seen: list[tuple[bool, int, bool]] = []  # (an active listener holds the filter, status, the header)

        async def loaded() -> bool:
            dump = await mesh.envoys["client"].config_dump(resource="dynamic_listeners")
            holds = any('"default.slow~' in json.dumps(c.get("active_state", {})) for c in dump.get("configs", []))
            status, headers, _ = await mesh.request(via_ip=mesh.ip(1), host="web", headers={"connection": "close"})
            seen.append((holds, status, HEADER in headers))
            return status == 200 and HEADER in headers

        await eventually(loaded, timeout=60, interval=0.2, what="the slow module loaded and run")
    finally:
        await runner.cleanup()
    assert sum(not holds for holds, _, _ in seen) >= 5, seen  # the fetch took a while: the listener warmed
    assert not [s for s in seen if s[0] and not s[2]], seen  # never the filter without its module


@pytest.mark.parametrize("strategy", ["FAIL_CLOSE", "FAIL_OPEN"])
async def test_an_unreadable_file_module_fails_as_its_strategy_says(
    mesh: Mesh, module_file: pathlib.Path, strategy: str
) -> None:
    """file:// names a path in the proxy's container that cannot be read: Envoy rejects the plugin's Wasm config
    (a NACK of the very first Wasm config the client's proxy is sent), which is reported on the WasmPlugin.
    FAIL_CLOSE: the filter, without a config, refuses every request (500); FAIL_OPEN: the filter is not applied
    (Istio's fail open), requests pass without the module. A readable module then takes over."""
    extra = f"  failStrategy: {strategy}\n"
    mesh.write("plugin.yaml", plugin("missing", url="file:///nonexistent/header.wasm", selector="{app: client}",
                                     extra=extra))  # fmt: skip

    async def reported() -> list[str]:
        found = await _errors_on(mesh, "WasmPlugin default/missing")
        assert found and "Invalid path: /nonexistent/header.wasm" in found[0], found
        return found

    await eventually(reported, what="Envoy's rejection reported on the WasmPlugin")

    async def in_force() -> bool:
        dump = await mesh.envoys["client"].config_dump(resource="dynamic_listeners")
        active = [c.get("active_state") for c in dump.get("configs", [])]
        warming = [c.get("warming_state") for c in dump.get("configs", []) if c.get("warming_state")]
        return "default.missing~" in json.dumps(active) and "default.missing~" not in json.dumps(warming)

    await eventually(in_force, what="the client's listeners with the plugin's filter, active")
    wanted = 500 if strategy == "FAIL_CLOSE" else 200
    for _ in range(3):
        status, headers, _ = await mesh.request(via_ip=mesh.ip(1), host="web", headers={"connection": "close"})
        assert (status, HEADER in headers) == (wanted, False), (strategy, status, headers)

    mesh.write("plugin.yaml", plugin("missing", url=f"file://{module_file}", selector="{app: client}",
                                     extra=extra + "  pluginConfig: {v: 1}\n"))  # fmt: skip
    await eventually(lambda: _header_is(mesh, '{"v":1}'), what="the readable module's header")


async def _status_is(mesh: Mesh, wanted: int) -> bool:
    return (await _get(mesh))[0] == wanted


async def test_an_invalid_wasm_plugin_is_reported_naming_its_field(mesh: Mesh) -> None:
    mesh.write(
        "plugin.yaml",
        plugin("registry", url="oci://registry.example.com/header:v1", selector="{app: client}"),
    )

    async def reported() -> list[str]:
        errors = await mesh.meshd.get_json("/debug/config_errors")
        found = [e for e in errors if e["resource"] == "WasmPlugin default/registry"]
        assert found and found[0]["field"] == "spec.url" and "oci://" in found[0]["message"], errors
        return found

    await eventually(reported, what="the oci:// WasmPlugin to be reported")
    assert (await _get(mesh))[0] == 200  # nothing else changed
