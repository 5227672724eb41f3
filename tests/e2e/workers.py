"""Address slots for test processes that run side by side: `make test` runs the suite on several pytest-xdist
workers (processes `gw0`, `gw1`, ...), and each worker allocates loopback subnets and network-namespace
prefixes of its own. A worker's slots are those congruent to its index modulo the number of workers, so two
workers of one run never hold the same slot at the same time, however far apart their counters are. Outside
xdist (one process) a slot is just `(start + index) % span`, as before.

`MESHD_E2E_SUBNET_BASE` still separates runs side by side (several worktrees on one machine): it picks the
second octet of the network-namespace prefixes and where the loopback subnets start.
"""

from __future__ import annotations

import os


def xdist_worker() -> tuple[int, int]:
    """(this worker's index, the number of workers): (0, 1) outside pytest-xdist."""
    name = os.environ.get("PYTEST_XDIST_WORKER", "")
    count = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1") or "1")
    if not name.startswith("gw") or count < 1:
        return 0, 1
    return int(name[2:]) % count, count


def worker_slot(index: int, *, span: int, start: int = 0) -> int:
    """The `index`-th slot of this worker among `span` slots (0 .. span-1), counting from `start`."""
    worker, workers = xdist_worker()
    usable = span - span % workers
    return ((start + index) * workers + worker) % usable
