"""meshd's Kubernetes client looks up proxies and ~/.netrc in the environment only when it names a
proxy (kube/client.py): a real kubernetes-asyncio client through a kubeconfig, against an HTTP server
that records what each request carried."""

from __future__ import annotations

import json
import os
import pathlib
from collections.abc import AsyncIterator

import pytest
from aiohttp import web

from meshd.kube.client import new_api_client
from meshd.kube.transport import ApiClientTransport


class Recorder:
    def __init__(self) -> None:
        self.seen: list[tuple[str, str, str | None]] = []  # (Host, path, Authorization)
        self.url = ""

    async def handle(self, request: web.Request) -> web.Response:
        self.seen.append((request.headers.get("Host", ""), request.path, request.headers.get("Authorization")))
        return web.json_response({"major": "1", "minor": "30"})


@pytest.fixture
async def recorder() -> AsyncIterator[Recorder]:
    rec = Recorder()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", rec.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    rec.url = f"http://127.0.0.1:{port}"
    yield rec
    await runner.cleanup()


def _kubeconfig(path: pathlib.Path, server: str) -> pathlib.Path:
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "c", "cluster": {"server": server}}],
        "users": [{"name": "u", "user": {}}],
        "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u"}}],
        "current-context": "c",
    }
    path.write_text(json.dumps(config))
    return path


@pytest.fixture
def no_proxy_env(monkeypatch: pytest.MonkeyPatch, tmp_path: pathlib.Path) -> None:
    for name in list(os.environ):
        if name.lower().endswith("_proxy"):
            monkeypatch.delenv(name)
    netrc = tmp_path / "netrc"
    netrc.write_text("machine 127.0.0.1 login someone password secret\n")
    netrc.chmod(0o600)
    monkeypatch.setenv("NETRC", str(netrc))  # where aiohttp's trust_env looks for ~/.netrc


@pytest.mark.usefixtures("no_proxy_env")
async def test_without_a_proxy_in_the_environment_netrc_is_not_read(recorder: Recorder, tmp_path: pathlib.Path) -> None:
    api = await new_api_client(_kubeconfig(tmp_path / "kubeconfig", recorder.url))
    try:
        assert await ApiClientTransport(api).get_json("/version") == {"major": "1", "minor": "30"}
    finally:
        await api.close()
    assert [(path, auth) for _, path, auth in recorder.seen] == [("/version", None)]


@pytest.mark.usefixtures("no_proxy_env")
async def test_a_proxy_named_by_the_environment_is_used(
    recorder: Recorder, tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HTTP_PROXY", recorder.url)
    api = await new_api_client(_kubeconfig(tmp_path / "kubeconfig", "http://kube.invalid:6443"))
    try:
        assert await ApiClientTransport(api).get_json("/version") == {"major": "1", "minor": "30"}
    finally:
        await api.close()
    assert [(host, path) for host, path, _ in recorder.seen] == [("kube.invalid:6443", "/version")]
