"""How `make test` shares the tests among its pytest-xdist workers (`-n N --dist loadfile`).

A test file is one unit of work, run by one worker from start to end, so that a module's fixtures (a mesh
set up once per module) are set up once. Two refinements:
- SPLIT files hold independent CPU-heavy tests (no module fixture): each of their tests is a unit of its
  own, so that several workers share them;
- the HEAVY tests (CPU-bound, a minute or more each) and the LONG files (mostly waiting on real processes)
  are handed out before the others, one of each in turn: a long unit started last would end the run alone,
  and CPU-bound work overlaps best with work that waits. The scheduler hands out units in the order the
  workers collected them, so each worker reorders its collection that way (whole files: a module's tests
  stay together).
Without xdist (or with another --dist) this module changes nothing.
"""

from __future__ import annotations

from typing import Any

import pytest

SPLIT = frozenset({"tests/unit/test_parse_properties.py", "tests/unit/test_cache.py"})
HEAVY = (
    "tests/unit/test_parse_properties.py::test_exhaustive_type_confusion_crashes_nothing_at_parse_or_generation",
    "tests/unit/test_cache.py::test_every_connection_holds_what_a_fresh_build_gives_after_random_changes",
)
LONG = (
    "tests/deploy/test_image_install.py",
    "tests/e2e/test_routing.py",
    "tests/e2e/test_mtls.py",
    "tests/e2e/test_capture_netns.py",
    "tests/e2e/test_debug_cli.py",
    "tests/e2e/test_kube_scenarios.py",
    "tests/e2e/test_telemetry.py",
    "tests/e2e/test_envoyfilter.py",
    "tests/e2e/test_metrics.py",
)


def _file(nodeid: str) -> str:
    return nodeid.split("::", 1)[0]


def heavy_first(items: list[pytest.Item]) -> list[pytest.Item]:
    """HEAVY tests and LONG files first, alternately; then the rest in collection order."""
    heavy = [item for item in items if item.nodeid.startswith(HEAVY)]
    long = [[item for item in items if _file(item.nodeid) == file] for file in LONG]
    first = {id(item) for item in heavy} | {id(item) for group in long for item in group}
    ordered: list[pytest.Item] = []
    for index in range(max(len(heavy), len(long))):
        ordered += heavy[index : index + 1]
        ordered += long[index] if index < len(long) else []
    return ordered + [item for item in items if id(item) not in first]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if hasattr(config, "workerinput"):  # an xdist worker (whose own --dist reads "no")
        items[:] = heavy_first(items)


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
