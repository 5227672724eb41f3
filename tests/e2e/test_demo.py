"""`meshd demo` end to end: meshd, six sidecars, traffic, and every canary shift observed."""

from __future__ import annotations

import io
import os

import pytest

from meshd.demo.runner import run_demo

pytestmark = pytest.mark.e2e


def _children() -> list[int]:
    me = str(os.getpid())
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/stat") as stat:
                parent = stat.read().rsplit(")", 1)[1].split()[1]
        except OSError:
            continue
        if parent == me:
            found.append(int(pid))
    return found


async def test_demo_shifts_traffic() -> None:
    before = set(_children())
    out = io.StringIO()
    code = await run_demo(duration_s=3.0, delta=False, out=out)
    assert code == 0, out.getvalue()
    assert "traffic flowed and every shift was observed" in out.getvalue()
    assert set(_children()) <= before, "the demo left a child process behind"
