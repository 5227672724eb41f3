"""How many processes serve xDS when `meshd serve --workers auto` (the default) is asked for.

- The CPUs meshd may use: its CPU affinity, bounded by its cgroup's CPU quota (`cpu.max`, a container's
  CPU limit), rounded up.
- Fewer than `MIN_CPUS`: one process (the main process serves both xDS ports). On a 2-core machine two
  workers did not converge the cold storm reliably sooner in Kubernetes mode (the load, the API server
  and meshd's own main process share the cores) and doubled meshd's memory (`docs/architecture.md`,
  "Using every core").
- Otherwise one worker per CPU, at most `MAX_WORKERS`, and at most one process per `PROCESS_MEMORY` of
  the cgroup's memory limit (`memory.max`), the main process included: each worker holds a replica of
  the config and the generation state of the scopes its proxies use, so memory grows with the count.
`--workers N` sets the count outright."""

from __future__ import annotations

import contextlib
import math
import os
import pathlib

MIN_CPUS = 4
MAX_WORKERS = 8
PROCESS_MEMORY = 256 * 1024 * 1024
CGROUP = pathlib.Path("/sys/fs/cgroup")


def auto_workers(*, cpus: int, memory_limit: int | None) -> int:
    """The processes serving xDS for `cpus` usable CPUs and a memory limit in bytes (None: none).
    1 means the main process serves alone."""
    if cpus < MIN_CPUS:
        return 1
    count = min(cpus, MAX_WORKERS)
    if memory_limit is not None:
        count = min(count, memory_limit // PROCESS_MEMORY - 1)
    return max(1, count)


def usable_cpus(cgroup: pathlib.Path = CGROUP) -> int:
    """The CPUs this process may run on: its affinity, bounded by its cgroup v2 CPU quota."""
    cpus = len(os.sched_getaffinity(0))
    quota = _read(cgroup / "cpu.max")
    if quota is not None:
        parts = quota.split()
        if len(parts) == 2 and parts[0] != "max":
            with contextlib.suppress(ValueError, ZeroDivisionError):
                cpus = min(cpus, math.ceil(int(parts[0]) / int(parts[1])))
    return max(1, cpus)


def memory_limit(cgroup: pathlib.Path = CGROUP) -> int | None:
    """This process's cgroup v2 memory limit in bytes, or None."""
    value = _read(cgroup / "memory.max")
    if value is None or value == "max":
        return None
    try:
        return int(value)
    except ValueError:
        return None


def _read(path: pathlib.Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None
