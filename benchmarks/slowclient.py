"""The never-reading attacker (issue 20, defect 4), a child process of the benchmark driver:

    python -m benchmarks.slowclient --target 127.0.0.1:15010 --streams 100 --seconds 120

opens N unauthenticated plaintext ADS streams (one HTTP/2 connection per 10 streams, BDP probing off
so each stream's flow-control window stays at 64 KiB), asks each for every cluster and listener, and
never reads a response; a stream that meshd ends is opened again at once. Bounded in count (N streams)
and time (--seconds). Driven over stdin/stdout JSON lines like the load client: `stats`, `quit`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import time
from typing import Any

import grpc
from envoy.config.core.v3 import base_pb2

from benchmarks import wire


class Attack:
    def __init__(self, *, target: str, streams: int, per_channel: int) -> None:
        self.target, self.streams, self.per_channel = target, streams, per_channel
        self.opened = self.ended = 0
        self.codes: dict[str, int] = {}
        self.channels: list[grpc.aio.Channel] = []
        self.tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        options = [("grpc.use_local_subchannel_pool", 1), ("grpc.http2.bdp_probe", 0)]
        n = -(-self.streams // self.per_channel)
        self.channels = [grpc.aio.insecure_channel(self.target, options=options) for _ in range(n)]
        await asyncio.wait_for(asyncio.gather(*(c.channel_ready() for c in self.channels)), 30)
        self.tasks = [asyncio.create_task(self._run(i)) for i in range(self.streams)]

    async def _run(self, i: int) -> None:
        node = base_pb2.Node(id=f"sidecar~10.66.{i // 250}.{i % 250}~evil-{i}.attack~attack.svc.cluster.local")
        first = wire.field(2, node.SerializeToString()) + wire.field(4, wire.CDS)
        while True:
            call = self.channels[i // self.per_channel].stream_stream(wire.SOTW_METHOD)()
            try:
                await call.write(first)
                await call.write(wire.field(4, wire.LDS))
                self.opened += 1
                code = await call.code()  # waits for the end of the call without reading a message
                self.codes[code.name] = self.codes.get(code.name, 0) + 1
            except asyncio.CancelledError:
                call.cancel()
                raise
            except Exception as exc:  # refused or reset: count it and open again
                name = type(exc).__name__
                self.codes[name] = self.codes.get(name, 0) + 1
            self.ended += 1
            await asyncio.sleep(0.05)

    async def stop(self) -> None:
        for task in self.tasks:
            task.cancel()
        for task in self.tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        for channel in self.channels:
            await channel.close()

    def stats(self) -> dict[str, Any]:
        return {"opened": self.opened, "ended": self.ended, "codes": self.codes}


async def _main(args: argparse.Namespace) -> None:
    attack = Attack(target=args.target, streams=args.streams, per_channel=args.per_channel)
    await attack.start()
    print(json.dumps({"streams": args.streams}), flush=True)
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    deadline = time.time() + args.seconds
    try:
        while time.time() < deadline:
            try:
                line = await asyncio.wait_for(reader.readline(), max(0.1, deadline - time.time()))
            except TimeoutError:
                break
            if not line:
                break
            cmd = json.loads(line)["cmd"]
            if cmd == "quit":
                break
            print(json.dumps(attack.stats()), flush=True)
    finally:
        await attack.stop()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.slowclient", description=__doc__)
    parser.add_argument("--target", required=True)
    parser.add_argument("--streams", type=int, default=100)
    parser.add_argument("--per-channel", type=int, default=10)
    parser.add_argument("--seconds", type=float, default=120.0, help="the attack ends by itself after this")
    asyncio.run(_main(parser.parse_args()))


if __name__ == "__main__":
    main()
