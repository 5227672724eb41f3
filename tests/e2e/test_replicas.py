"""Two real `meshd serve` processes pointed at the fake API server by a kubeconfig: exactly one
takes the Lease and writes status on the cluster's objects (the other serves xDS just the same),
and when the leader stops, the other takes over and writes.

The Kubernetes source is another part of the work, so each replica reads its Istio objects from a
config directory holding the same objects as the cluster (`--config-dir` + `--kubeconfig`): the
Lease, the status writes and the takeover go through the production code unchanged."""

from __future__ import annotations

import asyncio
import pathlib
import re
import time
from typing import Any

import pytest
import yaml

from tests.e2e.harness import Meshd, eventually
from tests.kubeapi import FakeApiServer

pytestmark = pytest.mark.e2e

V1 = "networking.istio.io/v1"
LEASE = ("coordination.k8s.io/v1", "Lease", "istio-system", "meshd-leader")


def virtual_service(weights: tuple[int, int]) -> dict[str, Any]:
    return {
        "apiVersion": V1,
        "kind": "VirtualService",
        "metadata": {"name": "web", "namespace": "default"},
        "spec": {
            "hosts": ["web.example.com"],
            "http": [
                {
                    "route": [
                        {"destination": {"host": "web.example.com", "port": {"number": 80}}, "weight": weights[0]},
                        {"destination": {"host": "web.example.com", "port": {"number": 80}}, "weight": weights[1]},
                    ]
                }
            ],
        },
    }


def holder(server: FakeApiServer) -> str:
    lease = server.get(*LEASE)
    return str(lease["spec"].get("holderIdentity") or "") if lease else ""


def status(server: FakeApiServer) -> dict[str, Any]:
    obj = server.get(V1, "VirtualService", "default", "web")
    return dict(obj.get("status") or {})


async def test_one_replica_leads_and_writes_status_the_other_takes_over(
    server: FakeApiServer, tmp_path: pathlib.Path
) -> None:
    config = tmp_path / "config"
    config.mkdir()
    (config / "web.yaml").write_text(yaml.safe_dump(virtual_service((0, 0))))
    server.create(virtual_service((0, 0)))
    kubeconfig = server.write_kubeconfig(tmp_path / "kubeconfig")
    replicas = {
        name: Meshd(
            config_dir=config,
            log_path=tmp_path / f"{name}.log",
            extra_args=(
                "--kubeconfig",
                str(kubeconfig),
                "--leader-identity",
                name,
                "--lease-duration",
                "4",
                "--status-interval",
                "0.1",
            ),
        )
        for name in ("meshd-a", "meshd-b")
    }
    try:
        await asyncio.gather(*(r.start() for r in replicas.values()))  # both /ready: serving never waits to lead

        async def one_leader() -> str:
            return holder(server)

        leader = await eventually(one_leader, timeout=10, what="a leader")
        follower = next(n for n in replicas if n != leader)

        async def rejected() -> list[Any]:
            return list(status(server).get("validationMessages", []))

        [message] = await eventually(rejected, timeout=10, what="status on the invalid VirtualService")
        assert message["description"] == "spec.http[0].route: destination weights add up to 0"
        # the same field and message meshd logs for the resource
        logged = re.search(
            r"event=invalid_resource .*resource=VirtualService default/web field=(\S+) message='([^']*)'",
            replicas[leader].log(),
        )
        assert logged is not None and message["description"] == f"{logged[1]}: {logged[2]}"
        # let the follower poll the Lease several times (every 0.4 s) while the leader renews it
        polls = server.count(verb="get", kind="Lease")

        async def follower_polled() -> bool:
            return server.count(verb="get", kind="Lease") >= polls + 5

        await eventually(follower_polled, timeout=10, what="the follower polls the Lease")
        assert holder(server) == leader
        assert sum(1 for r in server.requests if r.subresource == "status" and r.verb == "update") == 1
        assert "event=status_written" in replicas[leader].log()
        assert "event=status_written" not in replicas[follower].log()
        assert "event=leader_elected" not in replicas[follower].log()

        stopped = time.monotonic()
        await replicas[leader].stop()  # SIGTERM: clean shutdown releases the Lease

        async def taken_over() -> bool:
            return holder(server) == follower

        await eventually(taken_over, timeout=10, what="the other replica takes the Lease")
        assert time.monotonic() - stopped < 3.5  # released, not expired (retry 0.4 s; duration 4 s)

        # the new leader writes: fix the VirtualService, in the cluster and in its config
        fixed = server.get(V1, "VirtualService", "default", "web")
        fixed["spec"] = virtual_service((70, 30))["spec"]
        server.update(fixed)
        (config / "web.yaml").write_text(yaml.safe_dump(virtual_service((70, 30))))

        async def cleared() -> bool:
            current = status(server)
            return "validationMessages" not in current and current.get("observedGeneration") == 2

        await eventually(cleared, timeout=10, what="the new leader clears the status")
        assert status(server)["conditions"][-1]["status"] == "True"

        async def logged_write() -> bool:  # the log line follows the write the server has already seen
            return "event=status_written" in replicas[follower].log()

        await eventually(logged_write, timeout=5, what="the new leader logs its status write")
        assert await replicas[follower].ready()
    finally:
        for replica in replicas.values():
            await replica.close()
