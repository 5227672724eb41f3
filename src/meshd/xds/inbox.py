"""One ADS stream's pending work: the requests its client sent, and whether a new generation is waiting.

Bounded: when `capacity` requests wait, the reader waits too, and so (through HTTP/2 flow control) does
the client. The hub's side, `push()`, never waits and never grows anything: pushes coalesce into one
flag, so however slowly a stream is served, it holds at most one pending push and `capacity` requests.
"""

from __future__ import annotations

import asyncio
import collections
from typing import Any

PUSH = object()  # what get() returns for a pending push
CLOSED = object()  # what get() returns once the client half-closed the stream and every request is taken

DEFAULT_CAPACITY = 64


class Inbox:
    def __init__(self, *, capacity: int = DEFAULT_CAPACITY) -> None:
        self._requests: collections.deque[Any] = collections.deque()
        self._capacity = capacity
        self.push_pending = False
        self.closed = False
        self._ready = asyncio.Event()
        self._space = asyncio.Event()
        self._space.set()

    def __len__(self) -> int:
        return len(self._requests)

    async def put(self, request: Any) -> None:
        """The reader's side: waits while `capacity` requests are waiting."""
        while len(self._requests) >= self._capacity:
            self._space.clear()
            await self._space.wait()
        self._requests.append(request)
        self._ready.set()

    def push(self) -> None:
        """The hub's side: never waits; pushes not yet taken coalesce."""
        self.push_pending = True
        self._ready.set()

    def close(self) -> None:
        self.closed = True
        self._ready.set()

    async def get(self) -> Any:
        """The next request, else PUSH if one is pending, else CLOSED once closed; waits for one of them."""
        while True:
            if self._requests:
                self._space.set()
                return self._requests.popleft()
            if self.push_pending:
                self.push_pending = False
                return PUSH
            if self.closed:
                return CLOSED
            self._ready.clear()
            await self._ready.wait()
