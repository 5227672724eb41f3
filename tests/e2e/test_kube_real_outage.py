"""A short API outage on the real kube-apiserver (tests/kubereal; skipped without KUBEBUILDER_ASSETS) does
not drop leadership: meshd leads, the API server is killed (connections refused) and started again a second
later on the same port with the same etcd. The leader duties meet connection errors meanwhile (the root
publisher passes every 0.5 s here); each failure is logged by the duty that met it, and the duty recovers.
Leadership is lost only at the Lease's renew deadline, which the outage does not reach.

Restarting the session's API server is safe for the other modules: it comes back with the same state."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio

from tests.e2e.harness import Meshd, eventually, free_port
from tests.kubeapi import KubeRest
from tests.kubereal.control_plane import ControlPlane

pytestmark = [pytest.mark.e2e, pytest.mark.asyncio(loop_scope="module")]
NS = "meshd-outage"
ROOT_CM = "istio-ca-root-cert"
LEASE_S = 15  # renew deadline 10 s after the last renewal: far beyond the outage
OUTAGE_S = 1.0
V1 = "networking.istio.io/v1"


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def leader(real_kube: ControlPlane, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Meshd]:
    rest = KubeRest.from_kubeconfig(real_kube.kubeconfig)
    await rest.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}})
    await rest.close()
    meshd = Meshd(
        log_path=tmp_path_factory.mktemp("kube-outage") / "meshd-a.log",
        kubeconfig=real_kube.kubeconfig,
        extra_args=("--namespace", NS, "--leader-identity", "meshd-a", "--lease-duration", str(LEASE_S),
                    "--webhook-port", str(free_port()), "--status-interval", "0.2", "--root-cert-resync", "0.5"),
    )  # fmt: skip
    try:
        await meshd.start()
        yield meshd
    except BaseException:
        print(f"----- meshd-a.log -----\n{meshd.log()[-8000:]}")
        raise
    finally:
        await meshd.close()


async def lease(rest: KubeRest) -> dict[str, Any]:
    return dict(((await rest.get("coordination.k8s.io/v1", "Lease", NS, "meshd-leader")) or {}).get("spec") or {})


async def root_map(rest: KubeRest) -> str | None:
    cm = await rest.get("v1", "ConfigMap", NS, ROOT_CM)
    return None if cm is None else str((cm.get("data") or {}).get("root-cert.pem"))


async def test_a_one_second_api_outage_keeps_the_leader_and_its_duties(real_kube: ControlPlane, leader: Meshd) -> None:
    rest = KubeRest.from_kubeconfig(real_kube.kubeconfig)
    try:
        held = await eventually(lambda: _held_by(rest, "meshd-a"), timeout=20, what="meshd-a to lead")
        root = await eventually(lambda: root_map(rest), what=f"{ROOT_CM} in {NS}")

        async def renewed() -> dict[str, Any] | None:  # start the outage right after a renewal
            spec = await lease(rest)
            return spec if spec.get("renewTime") != held.get("renewTime") else None

        before = await eventually(renewed, timeout=LEASE_S, what="a renewal")
        mark = len(leader.log())
        await rest.close()
        real_kube.stop_apiserver()
        down = time.monotonic()
        await asyncio.sleep(OUTAGE_S)  # the outage itself: an interval, not a wait for a condition
        await asyncio.to_thread(real_kube.start_apiserver)
        print(f"API server down -> ready again: {time.monotonic() - down:.2f}s")
        rest = KubeRest.from_kubeconfig(real_kube.kubeconfig)

        async def renewed_again() -> dict[str, Any] | None:
            spec = await lease(rest)
            return spec if spec.get("renewTime") != before.get("renewTime") else None

        after = await eventually(renewed_again, timeout=LEASE_S, what="a renewal after the outage")
        assert after["holderIdentity"] == "meshd-a", after
        assert after.get("leaseTransitions") == before.get("leaseTransitions"), (before, after)
        log = leader.log()[mark:]
        assert "event=leader_lost" not in log and "event=leader_duties_failed" not in log, log[-4000:]

        async def recovered() -> bool:
            return "event=root_cert_publish_recovered" in leader.log()[mark:]

        await eventually(recovered, timeout=15, what="the root publisher to recover")
        log = leader.log()[mark:]
        failures = re.findall(r"event=(\w+_failed)\b", log)
        assert "root_cert_publish_failed" in failures, log[-4000:]  # the outage was met by a duty...
        named = {"root_cert_publish_failed", "root_cert_watch_failed", "lease_error", "leader_duty_failed",
                 "status_round_failed", "status_write_failed", "webhook_config_patch_failed"}  # fmt: skip
        assert set(failures) <= named, set(failures) - named  # ...and every failure says which duty met it

        # The duties work afterwards: a deleted root ConfigMap is repaired, status is written.
        await rest.delete("v1", "ConfigMap", NS, ROOT_CM)
        await eventually(lambda: _equals(root_map(rest), root), timeout=10, what="the root ConfigMap repaired")
        await rest.apply({
            "apiVersion": V1, "kind": "VirtualService", "metadata": {"name": "bad", "namespace": NS},
            "spec": {"hosts": ["web"], "http": [{"route": [{"destination": {"host": "web"}, "weight": 0},
                                                           {"destination": {"host": "db"}, "weight": 0}]}]},
        })  # fmt: skip

        async def status() -> list[Any]:
            vs = await rest.get(V1, "VirtualService", NS, "bad")
            return list(((vs or {}).get("status") or {}).get("validationMessages") or [])

        [message] = await eventually(status, timeout=10, what="status written after the outage")
        assert "weights add up to 0" in message["description"], message
        assert (await lease(rest))["holderIdentity"] == "meshd-a"
        await rest.delete(V1, "VirtualService", NS, "bad")
    finally:
        await rest.close()


async def _held_by(rest: KubeRest, identity: str) -> dict[str, Any] | None:
    spec = await lease(rest)
    return spec if spec.get("holderIdentity") == identity else None


async def _equals(value: Any, expected: Any) -> bool:
    return bool(await value == expected)
