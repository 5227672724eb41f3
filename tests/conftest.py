"""Shared pytest options: `--update-golden` rewrites golden files (and removes orphans). Shared
fixtures: the fake Kubernetes API server (`server`) and a kubernetes-asyncio client of it (`api`).

Leaked asyncio tasks fail the run: after every async test (and its fixtures) has finished, no task
other than the checker's own may still be pending on the test's event loop. A test on a module-scoped
loop (`pytest.mark.asyncio(loop_scope="module")`, with long-lived module fixtures) is checked once,
when the module's fixtures have been torn down."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

pytest_plugins = ["tests.kubeapi.fixtures", "tests.kubereal.fixtures", "tests.xdist_scheduling"]

# Loop iterations a task that is already finishing (e.g. cancelled, not yet run) gets to complete.
_SETTLE_ITERATIONS = 20


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--update-golden", action="store_true", help="rewrite tests/golden/testdata outputs")


@pytest.fixture
def update_golden(request: pytest.FixtureRequest) -> bool:
    return bool(request.config.getoption("--update-golden"))


async def _fail_on_pending_tasks(where: str) -> None:
    me = asyncio.current_task()
    pending: list[asyncio.Task[object]] = []
    for _ in range(_SETTLE_ITERATIONS):
        pending = [task for task in asyncio.all_tasks() if task is not me]
        if not pending:
            return
        await asyncio.sleep(0)  # one loop iteration, not a wait: lets a finishing task finish
    listing = "\n".join(f"  - {task!r}" for task in sorted(pending, key=lambda task: task.get_name()))
    pytest.fail(
        f"{len(pending)} asyncio task(s) still pending after {where} (cancel and await what a test or "
        f"fixture starts):\n{listing}",
        pytrace=False,
    )


@pytest_asyncio.fixture(loop_scope="function")
async def _function_loop_task_check(request: pytest.FixtureRequest) -> AsyncIterator[None]:
    yield
    await _fail_on_pending_tasks(f"test {request.node.nodeid}")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def _module_loop_task_check(request: pytest.FixtureRequest) -> AsyncIterator[None]:
    yield
    await _fail_on_pending_tasks(f"the module-loop tests of {request.node.nodeid} and their fixtures")


def _loop_scope(item: pytest.Item) -> str:
    marker = item.get_closest_marker("asyncio")
    scope = marker.kwargs.get("loop_scope") or marker.kwargs.get("scope") if marker is not None else None
    return str(scope or item.config.getini("asyncio_default_test_loop_scope") or "function")


def _is_async_test(item: pytest.Item) -> bool:
    return inspect.iscoroutinefunction(getattr(item, "obj", None))


@pytest.fixture(scope="module", autouse=True)
def _no_leaked_asyncio_tasks_in_module(request: pytest.FixtureRequest) -> None:
    """For a module with tests on a module-scoped loop. Autouse, so set up before the module's other
    module-scoped fixtures (pytest sets up wider scopes first, and autouse first within a scope): the
    check it pulls in runs after they are torn down."""
    module = request.node
    if any(
        item.getparent(pytest.Module) is module and _is_async_test(item) and _loop_scope(item) == "module"
        for item in request.session.items
    ):
        request.getfixturevalue("_module_loop_task_check")


@pytest.fixture(autouse=True)
def _no_leaked_asyncio_tasks(request: pytest.FixtureRequest) -> None:
    """For a test on a function-scoped loop. Autouse, so set up before the test's other function-scoped
    fixtures: the check it pulls in runs after they are torn down."""
    if not _is_async_test(request.node):
        return
    scope = _loop_scope(request.node)
    if scope == "function":
        request.getfixturevalue("_function_loop_task_check")
    elif scope != "module":  # module: _no_leaked_asyncio_tasks_in_module
        pytest.fail(f"no leaked-task check for loop_scope={scope!r}: add one in tests/conftest.py")
