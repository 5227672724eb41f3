"""EnvoyProcess and the demo apps against a real Envoy with a static bootstrap (no control plane)."""

from __future__ import annotations

import json
import os
import pathlib
from typing import Any

import aiohttp
import pytest

from meshd.agent.envoy import EnvoyError, EnvoyProcess
from meshd.demo.apps import Upstream, start_app
from tests.e2e.harness import next_subnet

pytestmark = pytest.mark.e2e

_SUBNET = next_subnet()  # this worker's own: no other test binds it meanwhile
IP = f"{_SUBNET}.1"  # the sidecar, and the app that calls through it
CATALOG_IP = f"{_SUBNET}.2"
ROUTER = {
    "name": "envoy.filters.http.router",
    "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"},
}


def _static_sidecar(*, catalog: str) -> dict[str, Any]:
    """A hand-written sidecar: outbound listener IP:9080 routing Host catalog:9080 to the catalog app."""
    hcm = {
        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3"
        ".HttpConnectionManager",
        "stat_prefix": "outbound_9080",
        "http_filters": [ROUTER],
        "route_config": {
            "virtual_hosts": [
                {"name": "catalog", "domains": ["catalog:9080"], "routes": [_route("catalog")]},
                {
                    "name": "other",
                    "domains": ["*"],
                    "routes": [{"match": {"prefix": "/"}, "direct_response": {"status": 404}}],
                },
            ]
        },
    }
    return {
        "node": {"id": "static", "cluster": "static"},
        "admin": {"address": _address(IP, 0)},
        "static_resources": {
            "listeners": [
                {
                    "name": "outbound_9080",
                    "address": _address(IP, 9080),
                    "filter_chains": [{"filters": [{"name": "hcm", "typed_config": hcm}]}],
                }
            ],
            "clusters": [
                {
                    "name": "catalog",
                    "type": "STATIC",
                    "connect_timeout": "1s",
                    "load_assignment": {
                        "cluster_name": "catalog",
                        "endpoints": [{"lb_endpoints": [{"endpoint": {"address": _address(catalog, 8080)}}]}],
                    },
                }
            ],
        },
    }


def _route(cluster: str) -> dict[str, Any]:
    return {"match": {"prefix": "/"}, "route": {"cluster": cluster}}


def _address(host: str, port: int) -> dict[str, Any]:
    return {"socket_address": {"address": host, "port_value": port}}


async def test_apps_call_each_other_through_a_sidecar(tmp_path: pathlib.Path) -> None:
    envoy = EnvoyProcess(bootstrap=_static_sidecar(catalog=CATALOG_IP), work_dir=tmp_path, admin_host=IP, admin_port=0)
    async with (
        envoy,
        await start_app(service="catalog", version="v2", pod="catalog-v2", host=CATALOG_IP) as catalog,
        await start_app(
            service="frontend",
            version="v1",
            pod="frontend",
            host=IP,
            upstream=Upstream(service="catalog", sidecar_host=IP),
        ) as frontend,
        aiohttp.ClientSession() as client,
    ):
        await envoy.wait_ready(timeout_s=20)
        assert "outbound_9080" in await envoy.admin_get("/listeners")
        async with client.get(frontend.url + "/", headers={"x-request-id": "r-1"}) as response:
            answer = json.loads(await response.text())
        assert response.status == 200, answer
        assert (answer["upstream"]["pod"], answer["upstream"]["version"]) == ("catalog-v2", "v2")
        assert answer["upstream"]["request"]["host"] == "catalog:9080"
        assert answer["upstream"]["request"]["headers"]["x-request-id"] == "r-1"

        await catalog.stop()
        async with client.get(frontend.url + "/") as response:
            failed = json.loads(await response.text())
        assert response.status == 502
        assert failed["upstream_status"] == 503  # Envoy: no healthy upstream / connect failure
        pid = envoy.pid
    assert envoy.returncode is not None
    assert pid is not None
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


async def test_a_bad_bootstrap_fails_fast_with_the_log(tmp_path: pathlib.Path) -> None:
    async with EnvoyProcess(
        bootstrap={"no_such_field": 1}, work_dir=tmp_path, admin_host=IP, admin_port=1, name="bad"
    ) as envoy:
        with pytest.raises(EnvoyError, match="exited with 1 before it was ready"):
            await envoy.wait_ready(timeout_s=20)
    assert envoy.returncode == 1
    assert "no_such_field" in envoy.log_tail(lines=200)


async def test_stop_is_idempotent_and_safe_before_start(tmp_path: pathlib.Path) -> None:
    envoy = EnvoyProcess(bootstrap=_static_sidecar(catalog=CATALOG_IP), work_dir=tmp_path, admin_host=IP, admin_port=0)
    assert await envoy.stop() is None
    await envoy.start()
    await envoy.wait_ready(timeout_s=20)
    assert await envoy.stop() == 0
    assert await envoy.stop() == 0
