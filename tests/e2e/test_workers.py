"""`meshd serve --workers 2`: real Envoy sidecars on both worker processes (SO_REUSEPORT on the plaintext
xDS port) get their whole config and every change, a killed worker is started again and its proxies
get their config again, and the main process's debug endpoints, metrics and NACK reports cover the
proxies of both workers."""

from __future__ import annotations

import asyncio
import os
import pathlib
import re
import signal
import urllib.parse
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import pytest
from envoy.service.status.v3 import csds_pb2

from meshd.ctl.xds_client import CONFIG_DUMP, SYNCZ, ask
from tests.e2e.agents import istioctl_cert_dir
from tests.e2e.conftest import SERVICE, virtual_service
from tests.e2e.harness import Mesh, eventually, logs_on_failure, worker_pid, worker_restarted

pytestmark = pytest.mark.e2e
CLIENTS = ("client-1", "client-2", "client-3", "client-4")
PROXIES = {*CLIENTS, "web-v1", "web-v2"}
V2 = "outbound|9080|v2|web.default.svc.cluster.local"


def client_ip(mesh: Mesh, pod: str) -> str:
    return mesh.ip(10 + int(pod.rsplit("-", 1)[1]))


async def workers_of(mesh: Mesh) -> dict[str, int]:
    """pod -> the worker holding its stream (every row from a worker says which)."""
    rows = await mesh.meshd.get_json("/debug/syncz")
    return {row["proxy"].split("~")[2].split(".")[0]: row["worker"] for row in rows}


async def all_synced(mesh: Mesh) -> dict[str, int]:
    """Every proxy connected, each with CDS, EDS, LDS and RDS sent and acked: pod -> its worker."""
    rows = await mesh.meshd.get_json("/debug/syncz")
    pods = {row["proxy"].split("~")[2].split(".")[0]: row for row in rows}
    assert set(pods) == PROXIES, sorted(pods)
    for pod, row in pods.items():
        assert set(row["types"]) >= {"cds", "eds", "lds", "rds"}, (pod, row["types"])
        assert all(t["sent"] is not None and t["acked"] == t["sent"] for t in row["types"].values()), (pod, row)
    return {pod: row["worker"] for pod, row in pods.items()}


async def spread(mesh: Mesh) -> dict[str, int]:
    """Restart client sidecars until both workers hold some (the kernel picks a worker per connection)."""
    for _ in range(12):
        placed = await eventually(lambda: all_synced(mesh), timeout=60, what="every sidecar synced")
        if set(placed.values()) == {0, 1}:
            return placed
        pod = CLIENTS[0]
        await mesh.envoys.pop(pod).stop()
        await mesh.sidecar(pod=pod, ip=client_ip(mesh, pod))
    raise AssertionError(f"the sidecars never landed on both workers: {placed}")


async def versions(mesh: Mesh, pod: str, count: int = 40) -> Counter[str]:
    return await mesh.versions(via_ip=client_ip(mesh, pod), host="web:9080", count=count)


async def all_route_to(mesh: Mesh, version: str) -> bool:
    for pod in CLIENTS:
        seen = await versions(mesh, pod)
        assert set(seen) == {version}, (pod, seen)
    return True


@pytest.fixture
async def mesh(tmp_path: Any) -> AsyncIterator[Mesh]:
    """meshd with two workers; web v1/v2 behind sidecars; four client sidecars; web routed to v1."""
    tokens = tmp_path / "tokens.yaml"
    tokens.write_text("tok-admin: {namespace: istio-system, serviceAccount: istioctl}\n")
    args = ("--workers", "2", "--ca-token-file", str(tokens))
    async with logs_on_failure(Mesh(work_dir=tmp_path, delta=False, meshd_args=args)) as m:
        m.write("web.yaml", SERVICE.format(v1=m.ip(2), v2=m.ip(3)))
        m.write("web-vs.yaml", virtual_service(100, 0))
        await m.meshd.start()
        await m.app(service="web", version="v1", pod="web-v1", ip=m.ip(2))
        await m.app(service="web", version="v2", pod="web-v2", ip=m.ip(3))
        await asyncio.gather(
            m.sidecar(pod="web-v1", ip=m.ip(2)),
            m.sidecar(pod="web-v2", ip=m.ip(3)),
            *(m.sidecar(pod=pod, ip=client_ip(m, pod)) for pod in CLIENTS),
        )
        yield m


async def test_sidecars_on_both_workers_get_their_config_and_every_change(mesh: Mesh) -> None:
    placed = await spread(mesh)
    await eventually(lambda: all_route_to(mesh, "v1"), timeout=30, what="every client routing web to v1")

    mesh.write("web-vs.yaml", virtual_service(0, 100))
    await eventually(lambda: all_route_to(mesh, "v2"), timeout=30, what="every client routing web to v2")

    # the main process's debug endpoints see the streams of both workers
    for worker in (0, 1):
        pod = next(p for p, w in placed.items() if w == worker)
        dump = await mesh.meshd.get_json(f"/debug/config_dump?proxyID={pod}.default")
        assert V2 in {c["name"] for c in dump["cds"]}, (pod, dump.keys())
    missing = await mesh.meshd.get_json("/debug/config_dump?proxyID=nobody.default")
    assert "not connected" in missing["error"]
    # Istio's debug types asked on the xDS port (whichever worker the kernel picks) cover every process
    address = f"127.0.0.1:{mesh.meshd.xds_port}"
    for _ in range(4):
        assert await _syncz_ids(address) == {f"{pod}.default" for pod in PROXIES}
    # ... and on the secure port, which the workers serve too (the main process answers over every process)
    admin = await _cert_dir(mesh, "tok-admin")
    secure = f"127.0.0.1:{mesh.meshd.secure_port}"
    ids = await _syncz_ids(secure, cert_dir=admin, authority="istiod.istio-system.svc")
    assert ids == {f"{pod}.default" for pod in PROXIES}
    for worker in (0, 1):
        pod = next(p for p, w in placed.items() if w == worker)
        response = await ask(address, CONFIG_DUMP, names=(f"{pod}.default",))
        assert len(response.resources) == 1 and V2.encode() in response.resources[0].value, pod
    # ... and /metrics adds the workers' stream counters up
    text = await mesh.meshd.metrics()
    connected = sum(float(v) for v in re.findall(r"^pilot_xds\{[^}]*\} (\S+)$", text, re.M))
    assert connected == len(PROXIES), text
    pushes = sum(float(v) for v in re.findall(r'^pilot_xds_pushes\{type="rds"\} (\S+)$', text, re.M))
    assert pushes >= 2 * len(PROXIES), text  # each proxy: its first RDS response and the edit


async def test_a_killed_worker_is_started_again_and_its_proxies_get_config_again(mesh: Mesh) -> None:
    placed = await spread(mesh)
    victim = placed[CLIENTS[0]]
    pid = worker_pid(mesh.meshd.log(), victim)
    os.kill(pid, signal.SIGKILL)
    await eventually(
        lambda: worker_restarted(mesh, victim, pid), timeout=60, what=f"worker {victim} to be started again"
    )
    await eventually(lambda: mesh.meshd.ready(), timeout=60, what="meshd ready again")
    # the killed worker's proxies reconnect (to either worker) and get their whole config again
    await eventually(lambda: all_synced(mesh), timeout=60, what="every sidecar synced again")
    mesh.write("web-vs.yaml", virtual_service(0, 100))
    await eventually(lambda: all_route_to(mesh, "v2"), timeout=30, what="every client routing web to v2")


async def test_a_nack_on_a_worker_is_reported_by_the_main_process(mesh: Mesh) -> None:
    await spread(mesh)
    await mesh.meshd.post("/debug/test/inject-invalid-cluster?name=" + urllib.parse.quote(V2))

    async def reported() -> list[dict[str, Any]]:
        errors = await mesh.meshd.get_json("/debug/config_errors")
        found = [e for e in errors if V2 in e["message"]]
        assert {e["resource"] for e in found} >= {"DestinationRule default/web", "Service default/web"}, found
        assert "Expected positive duration" in found[0]["message"], found
        return found

    await eventually(reported, timeout=30, what="the NACK to be reported on the DestinationRule")
    text = await mesh.meshd.metrics()
    assert float(re.search(r'^pilot_total_xds_rejects\{type="cds"\} (\S+)$', text, re.M)[1]) >= 1, text  # type: ignore[index]
    # the rest keeps flowing to the sidecars of both workers
    mesh.write("web-vs.yaml", virtual_service(0, 100))
    await eventually(lambda: all_route_to(mesh, "v2"), timeout=30, what="every client routing web to v2")


async def _syncz_ids(address: str, **how: Any) -> set[str]:
    ids = set()
    for resource in (await ask(address, SYNCZ, **how)).resources:
        config = csds_pb2.ClientConfig()
        assert resource.Unpack(config)
        ids.add(config.node.id)
    return ids


async def _cert_dir(mesh: Mesh, token: str) -> pathlib.Path:
    return await istioctl_cert_dir(
        work_dir=mesh.work_dir, ca_dir=mesh.meshd.ca_dir, secure_port=mesh.meshd.secure_port, token=token
    )
