"""The whole chain with meshd's CA: `meshd agent` obtains its certificate with its token, Envoy reaches
meshd's secure port over mTLS with it and receives its config (traffic flows), and the certificate is
rotated under continuous traffic with zero failed requests while the xDS connection stays up. The same
with `meshd serve --workers 2`: the workers serve the secure port (TLS, identity checks), the main
process reviews the tokens and signs the CSRs they are sent."""

from __future__ import annotations

import asyncio
import json
import os
import pathlib
import signal
from collections.abc import AsyncIterator

import pytest

from tests.e2e.agents import AgentProcess, write_ca_tokens
from tests.e2e.conftest import SERVICE, virtual_service
from tests.e2e.harness import Mesh, eventually, logs_on_failure, worker_pid, worker_restarted

pytestmark = pytest.mark.e2e

TOKENS = {"tok-client": ("default", "client"), "tok-web": ("default", "web")}


@pytest.fixture
async def mesh(request: pytest.FixtureRequest, tmp_path: pathlib.Path) -> AsyncIterator[Mesh]:
    """web v1/v2 behind agent sidecars with certificates from meshd; delta: delta ADS and delta SDS;
    workers: meshd with two worker processes."""
    param = getattr(request, "param", "sotw")
    async with logs_on_failure(Mesh(work_dir=tmp_path, delta=param == "delta")) as m:
        tokens = write_ca_tokens(tmp_path / "tokens.yaml", TOKENS)
        m.meshd.extra_args = ("--ca-token-file", str(tokens), *(("--workers", "2") if param == "workers" else ()))
        m.write("web.yaml", SERVICE.format(v1=m.ip(2), v2=m.ip(3)))
        m.write("web-vs.yaml", virtual_service(100, 0))
        await m.meshd.start()
        for pod, host in (("web-v1", 2), ("web-v2", 3)):
            await m.app(service="web", version=pod[-2:], pod=pod, ip=m.ip(host))
            sds = ("--sds-delta",) if m.delta else ()
            await m.agent_sidecar(pod=pod, ip=m.ip(host), service_account="web", token="tok-web", args=sds)
        yield m


async def _stat(agent: AgentProcess, name: str) -> int:
    stats = json.loads(await agent.admin_get(f"/stats?format=json&filter=^{name}$"))["stats"]
    return int(stats[0]["value"]) if stats else 0


async def _workers(mesh: Mesh) -> dict[str, int]:
    """pod -> the worker process holding its xDS stream, every proxy acked its listeners."""
    rows = await mesh.meshd.get_json("/debug/syncz")
    assert all((row["types"].get("lds") or {}).get("acked") for row in rows), rows
    return {row["proxy"].split("~")[2].split(".")[0]: row["worker"] for row in rows}


@pytest.mark.parametrize("mesh", ["sotw", "delta", "workers"], indirect=True)
async def test_agent_gets_a_certificate_and_envoy_uses_it_for_xds(mesh: Mesh) -> None:
    client: AgentProcess = await mesh.agent_sidecar(
        pod="client", ip=mesh.ip(1), service_account="client", token="tok-client"
    )
    if mesh.delta:
        sent = json.loads(await client.admin_get("/config_dump?resource=dynamic_active_clusters"))
        assert sent["configs"], "delta ADS delivered clusters"
    assert await client.cert_identities() == {"spiffe://cluster.local/ns/default/sa/client"}
    assert (await client.status())["certificate"]["identity"] == ["spiffe://cluster.local/ns/default/sa/client"]
    # xDS came over TLS to the secure port: handshakes on xds-grpc, connected, and config arrived
    assert await _stat(client, "cluster.xds-grpc.ssl.handshake") >= 1
    assert await _stat(client, "control_plane.connected_state") == 1
    seen = await mesh.versions(via_ip=mesh.ip(1), host="web:9080", count=20)
    assert seen == {"v1": 20}
    # a config change still reaches it over the mTLS stream
    mesh.write("web-vs.yaml", virtual_service(0, 100))

    async def shifted() -> bool:
        return await mesh.versions(via_ip=mesh.ip(1), host="web:9080", count=5) == {"v2": 5}

    await eventually(shifted, what="traffic shift pushed over mTLS xDS")
    if mesh.meshd.extra_args[-2:] == ("--workers", "2"):
        placed = await _on_both_workers(mesh)
        # the worker holding the client dies: the client reconnects to the secure port (either worker,
        # whichever holds it now), its stream is authorised again and it gets its config and changes
        victim = placed["client"]
        pid = worker_pid(mesh.meshd.log(), victim)
        os.kill(pid, signal.SIGKILL)
        await eventually(lambda: worker_restarted(mesh, victim, pid), timeout=60, what=f"worker {victim} started again")
        await eventually(lambda: _workers_of_all(mesh), timeout=60, what="every proxy served again")
        mesh.write("web-vs.yaml", virtual_service(100, 0))

        async def back() -> bool:
            return await mesh.versions(via_ip=mesh.ip(1), host="web:9080", count=5) == {"v1": 5}

        await eventually(back, what="traffic shift pushed after the worker's restart")


async def _workers_of_all(mesh: Mesh) -> dict[str, int]:
    placed = await _workers(mesh)
    assert set(placed) == {"client", "web-v1", "web-v2"}, placed
    return placed


async def _on_both_workers(mesh: Mesh) -> dict[str, int]:
    """Restart the client's agent until the secure port's proxies are on both workers (the kernel picks
    one per connection); the restarted client gets a new certificate and its config each time."""
    for _ in range(12):
        placed = await eventually(lambda: _workers_of_all(mesh), timeout=30, what="every proxy's listeners acked")
        if set(placed.values()) == {0, 1}:
            return placed
        await mesh.agents.pop("client").close()
        client = await mesh.agent_sidecar(pod="client", ip=mesh.ip(1), service_account="client", token="tok-client")
        assert await client.cert_identities() == {"spiffe://cluster.local/ns/default/sa/client"}
    raise AssertionError(f"the agents never landed on both workers: {placed}")


@pytest.mark.parametrize("mesh", ["sotw", "workers"], indirect=True)
async def test_rotation_under_continuous_traffic(mesh: Mesh) -> None:
    client: AgentProcess = await mesh.agent_sidecar(
        pod="client", ip=mesh.ip(1), service_account="client", token="tok-client", args=("--cert-ttl", "4")
    )
    failures: list[str] = []
    sent = 0
    done = asyncio.Event()

    async def traffic() -> None:
        nonlocal sent
        while not done.is_set():
            try:
                status, _ = await mesh.call(via_ip=mesh.ip(1), host="web:9080")
                if status != 200:
                    failures.append(f"status {status}")
            except Exception as err:
                failures.append(repr(err))
            sent += 1

    serials: set[str] = set()

    async def rotated_twice() -> bool:
        serials.update(await client.cert_serials())
        return len(serials) >= 3

    senders = [asyncio.create_task(traffic()) for _ in range(4)]
    try:
        await eventually(rotated_twice, timeout=30, interval=0.2, what="two rotations in Envoy's /certs")
        for agent in mesh.agents.values():
            assert (await agent.status())["sds"]["nacks"] == 0
    finally:
        done.set()
        await asyncio.gather(*senders)
    assert sent > 50
    assert failures == [], failures[:5]
    # the xDS connection survived the rotations (new certificates apply to new connections)
    assert await _stat(client, "cluster.xds-grpc.upstream_cx_total") == 1
    assert await _stat(client, "control_plane.connected_state") == 1
