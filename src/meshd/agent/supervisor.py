"""Envoy supervision: start it, restart it with exponential backoff when it dies, stop it on request.

Policy (documented in README):
- the agent is asked to stop (SIGTERM/SIGINT): Envoy gets SIGTERM (then SIGKILL), exit code 0;
- Envoy exits with 0 on its own (e.g. admin `/quitquitquit`): it is done for good, exit code 0;
- Envoy exits non-zero or is killed by a signal: restarted after base, 2*base, 4*base... (capped);
  a run that lasted `stable_after_s` resets the count. After `max_restarts` consecutive failed runs
  the agent gives up with Envoy's exit code (128+N for signal N).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from meshd.agent.envoy import EnvoyProcess
from meshd.clock import Clock


@dataclass(frozen=True)
class RestartPolicy:
    base_s: float = 0.5
    max_s: float = 30.0
    max_restarts: int = 5
    stable_after_s: float = 30.0

    def delay(self, failures: int) -> float:
        """Backoff before restart number `failures` (1-based)."""
        return float(min(self.max_s, self.base_s * 2 ** (failures - 1)))


def exit_code(returncode: int) -> int:
    """A process exit code as a shell reports it: signal N -> 128 + N."""
    return 128 - returncode if returncode < 0 else returncode


@dataclass
class SupervisorStats:
    starts: list[float] = field(default_factory=list)  # clock time of each start
    exits: list[int] = field(default_factory=list)  # Envoy's return codes


class EnvoySupervisor:
    def __init__(
        self,
        *,
        make_envoy: Callable[[], EnvoyProcess],
        policy: RestartPolicy,
        clock: Clock,
        log: logging.Logger,
    ) -> None:
        self._make_envoy = make_envoy
        self._policy = policy
        self._clock = clock
        self._log = log
        self.envoy: EnvoyProcess | None = None
        self.stats = SupervisorStats()

    async def run(self, stop: asyncio.Event) -> int:
        """Supervise until stopped or given up; returns the agent's exit code."""
        failures = 0
        stopping = asyncio.create_task(stop.wait())
        try:
            while True:
                envoy = self._make_envoy()
                self.envoy = envoy
                started = self._clock.now()
                self.stats.starts.append(started)
                await envoy.start()
                self._log.info(
                    "event=envoy_started pid=%s attempt=%d t=%.3f", envoy.pid, len(self.stats.starts), started
                )
                exited = asyncio.create_task(envoy.wait())
                await asyncio.wait({exited, stopping}, return_when=asyncio.FIRST_COMPLETED)
                if stopping.done():
                    exited.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await exited
                    code = await envoy.stop()
                    self._log.info("event=envoy_stopped pid=%s returncode=%s", envoy.pid, code)
                    return 0
                returncode = exited.result()
                await envoy.stop()  # closes its admin session
                self.stats.exits.append(returncode)
                if returncode == 0:
                    self._log.info("event=envoy_exited pid=%s returncode=0 action=exit", envoy.pid)
                    return 0
                failures = 1 if self._clock.now() - started >= self._policy.stable_after_s else failures + 1
                if failures > self._policy.max_restarts:
                    self._log.error(
                        "event=envoy_gave_up pid=%s returncode=%d failures=%d log=%s\n%s",
                        envoy.pid, returncode, failures, envoy.log_path, envoy.log_tail(lines=10),
                    )  # fmt: skip
                    return exit_code(returncode)
                delay = self._policy.delay(failures)
                self._log.warning(
                    "event=envoy_exited pid=%s returncode=%d failures=%d restart_in_s=%.2f",
                    envoy.pid, returncode, failures, delay,
                )  # fmt: skip
                sleeping = asyncio.create_task(self._clock.sleep(delay))
                await asyncio.wait({sleeping, stopping}, return_when=asyncio.FIRST_COMPLETED)
                if stopping.done():
                    sleeping.cancel()
                    return 0
        finally:
            stopping.cancel()
            if self.envoy is not None:
                await self.envoy.stop()
