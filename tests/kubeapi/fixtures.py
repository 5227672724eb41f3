"""pytest fixtures, available to every test (tests/conftest.py): a running fake API server (`server`)
and a kubernetes-asyncio client of it (`api`). A module may override `server` (e.g. other options)."""

from __future__ import annotations

import pathlib
from collections.abc import AsyncIterator

import pytest
from kubernetes_asyncio import client

from meshd.kube.client import new_api_client
from tests.kubeapi.server import FakeApiServer


@pytest.fixture
async def server() -> AsyncIterator[FakeApiServer]:
    fake = FakeApiServer()
    await fake.start()
    yield fake
    await fake.stop()


@pytest.fixture
async def api(server: FakeApiServer, tmp_path: pathlib.Path) -> AsyncIterator[client.ApiClient]:
    api_client = await new_api_client(server.write_kubeconfig(tmp_path / "kubeconfig"))
    yield api_client
    await api_client.close()
