"""Heavy parsing off the serving event loop (issue 20, defect 9): while meshd parses a 10 MB config file
(seconds of work), /ready keeps answering at once, because reading and parsing run in a worker thread;
a file over --max-config-file-bytes is refused with an error naming it, and what it held before stays."""

from __future__ import annotations

import asyncio
import pathlib
import time
from collections.abc import AsyncIterator

import pytest

from tests.e2e.harness import Meshd, eventually

pytestmark = pytest.mark.e2e

WEB = (
    "apiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: default}\n"
    "spec: {ports: [{name: http, port: 80}]}\n"
)


def _big_service(annotations: int) -> str:
    notes = "".join(f"    note-{i}: value-{i}-xxxxxxxxxxxxxxxxxxxxxxxx\n" for i in range(annotations))
    head = "apiVersion: v1\nkind: Service\nmetadata:\n  name: big\n  namespace: default\n  annotations:\n"
    return head + notes + "spec: {ports: [{name: http, port: 80}]}\n"


@pytest.fixture
async def meshd(tmp_path: pathlib.Path) -> AsyncIterator[Meshd]:
    config = tmp_path / "config"
    config.mkdir()
    (config / "web.yaml").write_text(WEB)
    server = Meshd(
        config_dir=config, log_path=tmp_path / "meshd.log", extra_args=("--max-config-file-bytes", "12000000")
    )
    try:
        await server.start()
        yield server
    finally:
        await server.close()


async def test_ready_answers_while_a_large_file_is_parsed(meshd: Meshd, tmp_path: pathlib.Path) -> None:
    assert meshd.config_dir is not None
    staged = tmp_path / "big.yaml"
    staged.write_text(_big_service(200_000))  # about 10.8 MB: seconds to parse
    staged.rename(meshd.config_dir / "big.yaml")
    started = time.monotonic()
    slowest = 0.0
    deadline = started + 120
    while "file=" + str(meshd.config_dir / "big.yaml") + " resources=1" not in meshd.log():
        assert time.monotonic() < deadline, "the large file was never loaded"
        t0 = time.monotonic()
        assert await asyncio.wait_for(meshd.ready(), 10)
        slowest = max(slowest, time.monotonic() - t0)
    loaded_after = time.monotonic() - started
    assert loaded_after > 1.0, f"the file took {loaded_after:.2f}s: too small to show anything"
    # parsed on the event loop, one /ready would wait for (nearly) the whole parse; a loaded machine slows
    # both alike, so the bound follows the parse time
    bound = max(0.5, loaded_after / 4)
    assert slowest < bound, f"/ready took {slowest:.2f}s while the file was parsed ({loaded_after:.2f}s)"


async def test_a_file_over_the_size_limit_is_refused_and_named(meshd: Meshd, tmp_path: pathlib.Path) -> None:
    assert meshd.config_dir is not None
    path = meshd.config_dir / "web.yaml"
    staged = tmp_path / "web.yaml"
    staged.write_text(WEB + "#" * 12_000_001)
    staged.rename(path)

    async def reported() -> bool:
        errors = await meshd.get_json("/debug/config_errors")
        return any(str(path) in str(e) and "larger than 12000000 bytes" in str(e) for e in errors)

    await eventually(reported, timeout=20, what="the oversized file reported")
    assert "event=file_removed" not in meshd.log()  # what it held before stays (unit-tested in test_yaml_bounds)
