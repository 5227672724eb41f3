"""The one Kubernetes API client: opened at the first call that succeeds, the same object for every
user after that, tried again after a failure (an unusable kubeconfig), closed once."""

from __future__ import annotations

import pathlib

import pytest

from meshd.wiring.cluster import ClusterApi
from tests.kubeapi import FakeApiServer


async def test_one_client_for_every_user_opened_after_a_failure(tmp_path: pathlib.Path) -> None:
    kubeconfig = tmp_path / "kubeconfig"
    cluster = ClusterApi(kubeconfig=kubeconfig)
    with pytest.raises(Exception):  # noqa: B017 - whatever kubernetes_asyncio raises for a missing file
        await cluster.get()
    server = FakeApiServer()
    await server.start()
    try:
        server.write_kubeconfig(kubeconfig)
        first = await cluster.get()
        assert await cluster.get() is first
        await cluster.close()
        await cluster.close()  # idempotent
    finally:
        await server.stop()
