"""The node agent's SDS feeding a real Envoy over the Unix socket: Envoy holds the workload certificate
(`default`) and the root (`ROOTCA`) the agent serves, and swaps them when the agent rotates."""

from __future__ import annotations

import pytest

from meshd.settings import AgentSettings
from tests.e2e.agents import AgentTask, remove_workdir, short_workdir
from tests.e2e.harness import eventually, free_port, next_subnet
from tests.workload_pki import LocalCaSource, WorkloadCa

SPIFFE = "spiffe://cluster.local/ns/default/sa/web"


def _settings(**overrides: object) -> AgentSettings:
    ip = f"{next_subnet()}.1"
    values: dict[str, object] = {
        "pod": "web-1",
        "ip": ip,
        "service_account": "web",
        "labels": {"app": "web"},
        # nothing listens there: the test looks only at what Envoy got over SDS
        "xds_address": f"127.0.0.1:{free_port()}",
        "workdir": short_workdir("sds"),
        "restart_base_s": 0.1,
    }
    values.update(overrides)
    return AgentSettings.model_validate(values)


@pytest.mark.parametrize("sds_delta", [False, True], ids=["sotw", "delta"])
async def test_envoy_holds_the_agents_certificate(sds_delta: bool) -> None:
    ca = WorkloadCa()
    source = LocalCaSource(ca, spiffe=SPIFFE, ttl_s=3600)
    agent = AgentTask(_settings(sds_delta=sds_delta), source=source)
    try:
        await agent.start()
        assert await eventually(agent.cert_identities, what="a certificate in Envoy's /certs") == {SPIFFE}

        async def secrets() -> dict[str, dict[str, object]]:
            dump = await agent.config_dump("dynamic_active_secrets")
            return {c["name"]: c for c in dump["configs"]}

        held = await eventually(secrets, what="dynamic_active_secrets")
        assert set(held) == {"default", "ROOTCA"}
        root = held["ROOTCA"]["secret"]["validation_context"]["trusted_ca"]  # type: ignore[index]
        assert root, held["ROOTCA"]
        status = await agent.status()
        assert status["sds"]["nacks"] == 0 and status["sds"]["acks"] >= 1
        assert [f"{int(s, 16):x}" for s in await agent.cert_serials()] == [status["certificate"]["serial"]]
    finally:
        assert await agent.stop() == 0
        assert not agent.socket_path.exists()
        remove_workdir(agent.workdir)


async def test_rotation_is_pushed_over_the_open_stream() -> None:
    """A 3 s certificate is replaced at half its life: Envoy shows new serials, with one SDS stream per
    subscription all along (pushes, not reconnects)."""
    source = LocalCaSource(WorkloadCa(), spiffe=SPIFFE, ttl_s=3)
    agent = AgentTask(_settings(), source=source)
    try:
        await agent.start()
        seen: set[str] = set()

        async def rotated_twice() -> bool:
            seen.update(await agent.cert_serials())
            return len(seen) >= 3

        await eventually(rotated_twice, timeout=20, interval=0.2, what="two rotations in /certs")
        status = await agent.status()
        assert status["certificate"]["issued"] >= 3
        streams = status["sds"]["streams"]
        assert status["sds"]["pushes"] > streams, status  # later versions went over the same streams
        assert status["sds"]["nacks"] == 0
    finally:
        assert await agent.stop() == 0
        remove_workdir(agent.workdir)


async def test_ca_outage_keeps_the_old_certificate_and_retries() -> None:
    source = LocalCaSource(WorkloadCa(), spiffe=SPIFFE, ttl_s=2)
    agent = AgentTask(_settings(ca_retry_base_s=0.2, ca_retry_max_s=0.4), source=source)
    try:
        await agent.start()
        first = await eventually(agent.cert_serials, what="first certificate")
        source.fail_next = 4  # the rotation due at 1 s fails four times (0.2 + 0.4 + 0.4 + 0.4 s)
        calls = source.calls
        await eventually(lambda: _at_least(source.calls - calls, 3), what="retries")
        assert await agent.cert_serials() == first  # still served meanwhile
        await eventually(lambda: _differs(agent, first), timeout=10, what="a new certificate after the outage")
        assert source.calls - calls >= 5
    finally:
        assert await agent.stop() == 0
        remove_workdir(agent.workdir)


async def _at_least(value: int, minimum: int) -> bool:
    return value >= minimum


async def _differs(agent: AgentTask, first: set[str]) -> bool:
    return bool(await agent.cert_serials()) and await agent.cert_serials() != first


async def test_not_ready_until_a_certificate_is_loaded() -> None:
    source = LocalCaSource(WorkloadCa(), spiffe=SPIFFE, ttl_s=3600)
    source.fail_next = 1_000_000
    agent = AgentTask(_settings(ca_retry_base_s=0.05, ca_retry_max_s=0.1), source=source)
    try:
        await agent.start()
        await eventually(lambda: _at_least(source.calls, 3), what="CA attempts")
        async with agent.session.get(f"http://{agent.ip}:{agent.status_port}/healthz/ready") as resp:
            assert (resp.status, await resp.text()) == (503, "no workload certificate yet\n")

        # Envoy got nothing (its admin port may come up only now on a loaded machine: polled, not assumed)
        async def nothing_held() -> bool:
            return await agent.cert_serials() == set()

        assert await eventually(nothing_held, what="Envoy's admin to answer, holding no certificate")
        source.fail_next = 0
        await eventually(agent.cert_serials, what="the certificate once the CA answers")
    finally:
        assert await agent.stop() == 0
        remove_workdir(agent.workdir)
