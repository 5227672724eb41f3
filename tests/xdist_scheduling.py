"""How `make test` shares the tests among its pytest-xdist workers (`-n N --dist loadfile`).

A test file is one unit of work, run by one worker from start to end, so that a module's fixtures (a mesh
set up once per module) are set up once. Two refinements:
- SPLIT files hold independent CPU-heavy tests (no module fixture): each test is a unit of its own, so
  that several workers share them;
- FIRST files are handed out before the others, the longest first: a long unit started last would end
  the run alone. The scheduler hands out units in the order the workers collected them, so each worker
  moves those files to the front of its collection (whole files: a module's tests stay together).
Without xdist (or with another --dist) this module changes nothing.
"""

from __future__ import annotations

from typing import Any

import pytest

SPLIT = frozenset({"tests/unit/test_parse_properties.py", "tests/unit/test_cache.py"})
FIRST = (
    "tests/unit/test_parse_properties.py",
    "tests/unit/test_cache.py",
    "tests/deploy/test_image_install.py",
    "tests/e2e/test_routing.py",
    "tests/e2e/test_mtls.py",
    "tests/e2e/test_capture_netns.py",
    "tests/e2e/test_debug_cli.py",
    "tests/e2e/test_kube_scenarios.py",
)


def _file(nodeid: str) -> str:
    return nodeid.split("::", 1)[0]


def _rank(item: pytest.Item) -> int:
    file = _file(item.nodeid)
    return FIRST.index(file) if file in FIRST else len(FIRST)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if hasattr(config, "workerinput"):  # an xdist worker (whose own --dist reads "no")
        items.sort(key=_rank)  # stable: the order within a file, and of the other files, is kept


@pytest.hookimpl(optionalhook=True, tryfirst=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    if config.getvalue("dist") != "loadfile":
        return None
    from xdist.scheduler import LoadFileScheduling

    class Scheduling(LoadFileScheduling):  # type: ignore[misc]
        def __init__(self, config: pytest.Config, log: Any) -> None:
            super().__init__(config, log)
            # units in the order of the workers' collection, not by their number of tests
            config.option.loadscopereorder = False

        def _split_scope(self, nodeid: str) -> str:
            return nodeid if _file(nodeid) in SPLIT else _file(nodeid)

    return Scheduling(config, log)
