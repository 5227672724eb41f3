"""Load generator for the demo: requests at a bounded rate, each one recorded as a Sample.

A request succeeds when it answers 200 with the whole chain entry -> canary service -> its upstream;
the sample keeps which canary version served it.
"""

from __future__ import annotations

import asyncio
import collections
import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import aiohttp


@dataclass(frozen=True)
class Sample:
    """One request: when it was sent, and the canary version that served it or the error."""

    sent_at: float
    version: str | None
    error: str | None
    # per hop of the chain (entry, canary, its upstream): the caller identity that app saw (None: plaintext)
    peers: tuple[str | None, ...] = ()


@dataclass
class Tally:
    """Counts over a set of samples."""

    by_version: collections.Counter[str] = field(default_factory=collections.Counter)
    errors: collections.Counter[str] = field(default_factory=collections.Counter)
    peers: collections.Counter[tuple[str | None, ...]] = field(default_factory=collections.Counter)

    @property
    def ok(self) -> int:
        return sum(self.by_version.values())

    @property
    def failed(self) -> int:
        return sum(self.errors.values())

    @property
    def total(self) -> int:
        return self.ok + self.failed

    def share(self, version: str) -> float:
        return self.by_version[version] / self.ok if self.ok else 0.0


def tally(*, samples: Iterable[Sample], since: float, until: float = float("inf")) -> Tally:
    """Count the samples sent in [since, until)."""
    result = Tally()
    for sample in samples:
        if since <= sample.sent_at < until:
            if sample.version is not None:
                result.by_version[sample.version] += 1
                result.peers[sample.peers] += 1
            else:
                result.errors[sample.error or "unknown"] += 1
    return result


def hop_peers(*, text: str) -> tuple[str | None, ...]:
    """The `peer` of each app along a successful chain's answer, entry first."""
    try:
        hop: Any = json.loads(text)
    except ValueError:
        return ()
    peers: list[str | None] = []
    while isinstance(hop, dict):
        peer = hop.get("peer")
        peers.append(peer if isinstance(peer, str) else None)
        hop = hop.get("upstream")
    return tuple(peers)


def classify(*, status: int, text: str, canary_service: str) -> tuple[str | None, str | None]:
    """(version, None) for a complete successful chain, else (None, short error)."""
    try:
        answer: Any = json.loads(text)
    except ValueError:
        answer = None
    if status != 200:
        detail = answer.get("error") if isinstance(answer, dict) else text.strip()
        return None, f"HTTP {status}: {str(detail)[:120]}"
    hop = answer.get("upstream") if isinstance(answer, dict) else None
    if not isinstance(hop, dict) or hop.get("service") != canary_service:
        return None, f"200 without a {canary_service} hop"
    if not isinstance(hop.get("upstream"), dict):
        return None, f"200 without {canary_service}'s upstream hop"
    return str(hop.get("version")), None


class LoadGenerator:
    """Sends GET `url` with `Host: host_header` about `rate_per_s` times a second while `run()` runs."""

    def __init__(
        self,
        *,
        url: str,
        host_header: str,
        canary_service: str,
        rate_per_s: float,
        clock: Callable[[], float],
        max_in_flight: int = 64,
        request_timeout_s: float = 5.0,
    ) -> None:
        self.samples: list[Sample] = []
        self._url = url
        self._host_header = host_header
        self._canary_service = canary_service
        self._interval = 1.0 / rate_per_s
        self._clock = clock
        self._max_in_flight = max_in_flight
        self._timeout = aiohttp.ClientTimeout(total=request_timeout_s)
        self._in_flight = 0
        self.first_success_at: float | None = None
        self._first_success = asyncio.Event()
        self._stopping = False
        self._stopped = asyncio.Event()

    async def wait_first_success(self) -> float:
        """The clock time of the first successful request (waits for it)."""
        await self._first_success.wait()
        assert self.first_success_at is not None
        return self.first_success_at

    async def stop(self) -> None:
        """Send no more requests and wait for those in flight to be answered (or time out), so that every
        request sent is in `samples`; `run()` then returns."""
        self._stopping = True
        await self._stopped.wait()

    async def run(self) -> None:
        """Generate load until `stop()` or cancelled; in-flight requests are cancelled with it."""
        connector = aiohttp.TCPConnector(limit=self._max_in_flight)
        async with (
            aiohttp.ClientSession(connector=connector, timeout=self._timeout) as session,
            asyncio.TaskGroup() as group,
        ):
            next_at = self._clock()
            while not self._stopping:
                if self._in_flight < self._max_in_flight:
                    group.create_task(self._one(session=session))
                now = self._clock()
                next_at = max(next_at + self._interval, now - 1.0)
                await asyncio.sleep(max(0.0, next_at - now))
        self._stopped.set()

    async def _one(self, *, session: aiohttp.ClientSession) -> None:
        sent_at = self._clock()
        self._in_flight += 1
        try:
            async with session.get(self._url, headers={"Host": self._host_header}) as response:
                status, text = response.status, await response.text()
            version, error = classify(status=status, text=text, canary_service=self._canary_service)
            peers = hop_peers(text=text) if version is not None else ()
        except (aiohttp.ClientError, TimeoutError, OSError) as err:
            version, error, peers = None, f"{type(err).__name__}: {str(err)[:120]}", ()
        finally:
            self._in_flight -= 1
        self.samples.append(Sample(sent_at=sent_at, version=version, error=error, peers=peers))
        if version is not None and self.first_success_at is None:
            self.first_success_at = self._clock()
            self._first_success.set()
