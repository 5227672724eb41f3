"""`meshd agent` as a real process: it starts Envoy, restarts it with backoff when it dies, stops it on
SIGTERM (socket removed, exit 0), and gives up with Envoy's exit code after bounded failures."""

from __future__ import annotations

import itertools
import os
import pathlib
import re
import signal
from collections.abc import AsyncIterator

import pytest

from tests.e2e.agents import AgentProcess
from tests.e2e.conftest import SERVICE, virtual_service
from tests.e2e.harness import Mesh, eventually

pytestmark = pytest.mark.e2e


@pytest.fixture
async def mesh(tmp_path: pathlib.Path) -> AsyncIterator[Mesh]:
    """meshd + web v1/v2 with ordinary sidecars; the client sidecar is up to each test."""
    m = Mesh(work_dir=tmp_path, delta=False)
    try:
        m.write("web.yaml", SERVICE.format(v1=m.ip(2), v2=m.ip(3)))
        m.write("web-vs.yaml", virtual_service(50, 50))
        await m.meshd.start()
        for pod, host in (("web-v1", 2), ("web-v2", 3)):
            await m.app(service="web", version=pod[-2:], pod=pod, ip=m.ip(host))
            await m.sidecar(pod=pod, ip=m.ip(host))
        yield m
    finally:
        await m.close()


async def _serves(mesh: Mesh) -> bool:
    status, _ = await mesh.call(via_ip=mesh.ip(1), host="web:9080")
    return bool(status == 200)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


async def test_killed_envoy_is_restarted_and_sigterm_stops_cleanly(mesh: Mesh) -> None:
    agent: AgentProcess = await mesh.agent_sidecar(pod="client", ip=mesh.ip(1))
    await eventually(lambda: _serves(mesh), what="traffic through the agent's Envoy")
    first_pid = (await agent.status())["envoy"]["pid"]
    os.kill(first_pid, signal.SIGKILL)

    async def restarted() -> int | None:
        pid = (await agent.status())["envoy"]["pid"]
        return pid if pid != first_pid else None

    second_pid = await eventually(restarted, what="a new Envoy")
    await agent.wait_ready()
    await eventually(lambda: _serves(mesh), what="traffic through the restarted Envoy")
    assert (await agent.status())["envoy"]["exits"] == [-signal.SIGKILL]
    assert not _alive(first_pid)

    assert agent.socket_path.exists()
    assert await agent.terminate() == 0
    assert not _alive(second_pid), "Envoy outlived its agent"
    assert not agent.socket_path.exists(), "SDS socket left behind"
    assert "event=agent_stopped exit_code=0" in agent.log()


async def test_crashing_envoy_backs_off_then_gives_up_with_its_code(mesh: Mesh) -> None:
    agent: AgentProcess = await mesh.agent_sidecar(
        pod="client",
        ip=mesh.ip(1),
        args=("--envoy-arg=--no-such-flag", "--restart-base", "0.2", "--max-restarts", "3"),
        wait_ready=False,
    )
    code = await agent.wait_exit(timeout=30)
    log = agent.log()
    envoy_log = (agent.workdir / "envoy.log").read_text()
    assert "no-such-flag" in envoy_log  # Envoy itself refused the flag
    assert code == 1, log
    starts = [float(t) for t in re.findall(r"event=envoy_started pid=\d+ attempt=\d+ t=([\d.]+)", log)]
    assert len(starts) == 4, log  # the first run and 3 restarts
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    # backoff 0.2, 0.4, 0.8 s: the delays the agent chose double, and each restart came at least its delay
    # after the previous start (the gaps themselves also hold Envoy's start-up and exit time, which varies
    # with the machine's load: they need not grow)
    delays = [
        float(d)
        for d in re.findall(r"event=envoy_exited pid=\d+ returncode=\d+ failures=\d+ restart_in_s=([\d.]+)", log)
    ]
    assert delays == [0.2, 0.4, 0.8], log
    for gap, delay in zip(gaps, delays, strict=True):
        assert gap >= delay, gaps
    assert "event=envoy_gave_up" in log
    assert not agent.socket_path.exists()


async def test_envoy_quitting_by_itself_ends_the_agent_with_0(mesh: Mesh) -> None:
    agent: AgentProcess = await mesh.agent_sidecar(pod="client", ip=mesh.ip(1))
    async with agent.session.post(f"http://{agent.ip}:{agent.admin_port}/quitquitquit") as resp:
        assert resp.status == 200
    assert await agent.wait_exit() == 0
    assert "returncode=0 action=exit" in agent.log()
