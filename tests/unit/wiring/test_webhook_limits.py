"""The webhook port (15017) as `meshd serve` wires it refuses connections over --webhook-max-connections
at accept and counts them (issue 20, defect 12)."""

from __future__ import annotations

import asyncio
import logging
import pathlib
import socket

from prometheus_client import CollectorRegistry

from meshd.obs.metrics import Metrics
from meshd.settings import Settings
from meshd.wiring.webhooks import webhook_server
from tests.certs import Authority
from tests.e2e.harness import eventually, free_port


async def test_webhook_connection_cap_is_enforced_and_counted(tmp_path: pathlib.Path) -> None:
    cert, key = Authority().issue("meshd.istio-system.svc", sans=("localhost",)).write(tmp_path, "webhook")
    port = free_port()
    settings = Settings(
        webhook_host="127.0.0.1", webhook_port=port, webhook_cert=cert, webhook_key=key, webhook_max_connections=2
    )
    metrics = Metrics(CollectorRegistry())
    webhook = webhook_server(
        settings=settings, ca_issued=False, authority=None, clock=None, metrics=metrics, log=logging.getLogger("t")
    )  # type: ignore[arg-type]
    assert webhook is not None
    task = asyncio.create_task(webhook.serve())
    held: list[socket.socket] = []
    try:

        async def listening() -> bool:
            held.append(socket.create_connection(("127.0.0.1", port)))
            return True

        await eventually(listening, what="the webhook port")
        held.append(socket.create_connection(("127.0.0.1", port)))
        reader, writer = await asyncio.open_connection("127.0.0.1", port)  # the third: over the cap
        assert await asyncio.wait_for(reader.read(1), 5) == b""
        writer.close()
        assert metrics.registry.get_sample_value("meshd_connections_refused", {"listener": "webhook"}) == 1
    finally:
        for sock in held:
            sock.close()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
