"""Two `meshd serve` processes in Kubernetes mode (`--kubeconfig`, no config directory) against the
fake API server: the objects come from the cluster through the Kubernetes source, exactly one
replica leads and writes status on them, and when it stops the other takes over and writes.
"""

from __future__ import annotations

import asyncio
import pathlib
import sys
import time
from typing import Any

import aiohttp
import pytest

from tests.e2e.harness import eventually, free_port
from tests.kubeapi import FakeApiServer

pytestmark = pytest.mark.e2e

V1 = "networking.istio.io/v1"
LEASE = ("coordination.k8s.io/v1", "Lease", "istio-system", "meshd-leader")


def virtual_service(weights: tuple[int, int]) -> dict[str, Any]:
    route = [{"destination": {"host": "web.example.com", "port": {"number": 80}}, "weight": w} for w in weights]
    return {
        "apiVersion": V1,
        "kind": "VirtualService",
        "metadata": {"name": "web", "namespace": "default"},
        "spec": {"hosts": ["web.example.com"], "http": [{"route": route}]},
    }


class KubeMeshd:
    def __init__(self, name: str, kubeconfig: pathlib.Path, log_path: pathlib.Path) -> None:
        self.name, self.kubeconfig, self.log_path = name, kubeconfig, log_path
        self.http_port = free_port()
        self.process: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        with self.log_path.open("ab") as log:
            self.process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "meshd", "serve", "--kubeconfig", str(self.kubeconfig),
                "--xds-host", "127.0.0.1", "--xds-port", str(free_port()),
                "--http-host", "127.0.0.1", "--http-port", str(self.http_port),
                "--leader-identity", self.name, "--lease-duration", "4", "--status-interval", "0.1",
                "--no-ca",  # the CA is not under test here (and would share port 15012)
                stdout=log, stderr=log,
            )  # fmt: skip

    async def ready(self) -> bool:
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"http://127.0.0.1:{self.http_port}/ready") as resp,
        ):
            return resp.status == 200

    async def stop(self) -> None:
        if self.process is not None and self.process.returncode is None:
            self.process.terminate()
            try:
                await asyncio.wait_for(self.process.wait(), 10)
            except TimeoutError:
                self.process.kill()
                await self.process.wait()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


async def test_kubernetes_mode_replicas_one_leader_writes_status_the_other_takes_over(
    server: FakeApiServer, tmp_path: pathlib.Path
) -> None:
    server.create(virtual_service((0, 0)))
    kubeconfig = server.write_kubeconfig(tmp_path / "kubeconfig")
    replicas = {n: KubeMeshd(n, kubeconfig, tmp_path / f"{n}.log") for n in ("meshd-a", "meshd-b")}
    try:
        await asyncio.gather(*(r.start() for r in replicas.values()))
        for replica in replicas.values():
            await eventually(replica.ready, timeout=20, what=f"{replica.name} /ready (informers synced)")

        def holder() -> str:
            lease = server.get(*LEASE)
            return str(lease["spec"].get("holderIdentity") or "") if lease else ""

        async def leader_known() -> str:
            return holder()

        leader = await eventually(leader_known, timeout=10, what="a leader")
        follower = next(n for n in replicas if n != leader)

        async def rejected() -> list[Any]:
            obj = server.get(V1, "VirtualService", "default", "web")
            return list((obj.get("status") or {}).get("validationMessages", []))

        [message] = await eventually(rejected, timeout=10, what="status from the cluster's object")
        assert message["description"] == "spec.http[0].route: destination weights add up to 0"
        assert "event=status_written" not in replicas[follower].log()

        stopped = time.monotonic()
        await replicas[leader].stop()

        async def taken_over() -> bool:
            return holder() == follower

        await eventually(taken_over, timeout=10, what="takeover")
        assert time.monotonic() - stopped < 3.5

        fixed = server.get(V1, "VirtualService", "default", "web")
        fixed["spec"] = virtual_service((70, 30))["spec"]
        server.update(fixed)  # the informer delivers it; the new leader clears the status

        async def cleared() -> bool:
            status = server.get(V1, "VirtualService", "default", "web").get("status") or {}
            return "validationMessages" not in status and status.get("observedGeneration") == 2

        await eventually(cleared, timeout=10, what="the new leader clears the status")

        async def logged() -> bool:  # the line follows the write's response: it may land a moment after
            return "event=status_written" in replicas[follower].log()

        await eventually(logged, timeout=5, what="the new leader logs its status write")
    finally:
        for replica in replicas.values():
            await replica.stop()
