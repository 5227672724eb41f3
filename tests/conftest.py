"""Shared pytest options: `--update-golden` rewrites golden files (and removes orphans). Shared
fixtures: the fake Kubernetes API server (`server`) and a kubernetes-asyncio client of it (`api`)."""

from __future__ import annotations

import pytest

pytest_plugins = ["tests.kubeapi.fixtures"]


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--update-golden", action="store_true", help="rewrite tests/golden/testdata outputs")


@pytest.fixture
def update_golden(request: pytest.FixtureRequest) -> bool:
    return bool(request.config.getoption("--update-golden"))
