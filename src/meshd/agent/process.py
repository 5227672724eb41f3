"""Child processes that never outlive their parent: spawn with output to a log file, stop for sure.

Children get their own session (a terminal's Ctrl-C reaches only the parent, which then stops them
in order). No Python code runs between fork and exec (no `preexec_fn`), so CPython spawns with
vfork: gRPC's fork handlers never run in a process that serves gRPC, where a full fork could abort
the child. The parent stops its children on every exit it can catch (SIGTERM, SIGINT, errors).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pathlib
from collections.abc import Mapping, Sequence


async def spawn(
    *,
    argv: Sequence[str],
    log_path: pathlib.Path,
    env: Mapping[str, str] | None = None,
    cwd: pathlib.Path | None = None,
) -> asyncio.subprocess.Process:
    """Start `argv` with stdout and stderr appended to `log_path` and stdin from /dev/null."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log:
        return await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=log,
            stderr=asyncio.subprocess.STDOUT,
            env=dict(env) if env is not None else None,
            cwd=cwd,
            start_new_session=True,
        )


async def terminate(*, process: asyncio.subprocess.Process, timeout_s: float) -> int:
    """SIGTERM, wait up to `timeout_s`, then SIGKILL; returns the exit code. Safe to call twice.

    If the caller is cancelled while waiting, the process is killed before the cancellation
    propagates, so it never survives its supervisor.
    """
    if process.returncode is not None:
        return process.returncode
    try:
        with contextlib.suppress(ProcessLookupError):
            process.terminate()
        try:
            return await asyncio.wait_for(process.wait(), timeout=timeout_s)
        except TimeoutError:
            pass
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        return await process.wait()
    finally:
        if process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                process.kill()


def tail(*, path: pathlib.Path, lines: int = 30) -> str:
    """The last `lines` lines of a (log) file, or a note that it does not exist yet."""
    try:
        with path.open("rb") as handle:
            handle.seek(0, os.SEEK_END)
            size = handle.tell()
            handle.seek(max(0, size - 64 * 1024))
            data = handle.read()
    except FileNotFoundError:
        return f"({path} does not exist)"
    text = data.decode("utf-8", errors="replace")
    return "\n".join(text.splitlines()[-lines:])
