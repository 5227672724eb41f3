"""Reference ADS server: the physical limit meshd is compared with.

    python -m benchmarks.reference_server --base base.pkl [--change c1.pkl ...] --port P

It serves, per proxy, exactly the resources meshd served that proxy (recorded by the load client,
holdings.Tracker.dump), pre-serialised at start-up: a response is one bytes.join of ready-made
parts plus its nonce. No translation, no versioning work, no per-message protobuf building: what is
left is gRPC, HTTP/2 and the xDS request/ACK exchange, for the same load client.

Control over stdin/stdout, one JSON object per line:
  {"cmd": "push", "change": k}   toggle every proxy of recorded change k between its before and
                                 after state, and push the types that differ -> {"t": time, "proxies": n}
  {"cmd": "quit"}
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import pickle
import sys
import time
from typing import Any

import grpc
from envoy.service.discovery.v3 import discovery_pb2
from google.protobuf import any_pb2

from benchmarks import wire

Entry = tuple[str, tuple[bytes, ...]]  # (version_info, resource digests in order)
_PUSH = object()
_CLOSED = object()


class Library:
    """Every recorded response part, serialised once."""

    def __init__(self, *, delta: bool, bodies: dict[bytes, tuple[int, str, str, bytes]]) -> None:
        self.delta = delta
        self.names = {d: b[1] for d, b in bodies.items()}
        self.parts: dict[bytes, bytes] = {}
        for d, (ti, name, version, body) in bodies.items():
            packed = wire.any_bytes(wire.TYPE_URLS[ti], body)
            if delta:
                message = discovery_pb2.Resource(
                    name=name,
                    version=version or d.hex(),
                    resource=any_pb2.Any(type_url=wire.TYPE_URLS[ti], value=body),
                )
                self.parts[d] = wire.field(2, message.SerializeToString())
            else:
                self.parts[d] = wire.field(2, packed)
        self._blobs: dict[tuple[bytes, ...], bytes] = {}

    def blob(self, digests: tuple[bytes, ...]) -> bytes:
        blob = self._blobs.get(digests)
        if blob is None:
            blob = self._blobs[digests] = b"".join(self.parts[d] for d in digests)
        return blob


def _entry(raw: Any) -> Entry | None:
    return None if raw is None else (raw[0], tuple(raw[1]))


class RefStream:
    def __init__(self, *, node: str, target: list[Entry | None], delta: bool) -> None:
        self.node = node
        self.target = target  # what this proxy should hold, per type
        self.delta = delta
        self.queue: asyncio.Queue[Any] = asyncio.Queue()
        self.nonces = (str(i) for i in itertools.count(1))
        self.names: list[tuple[str, ...] | None] = [None] * 4  # SotW: names last requested
        self.subscribed = [False] * 4
        self.sent: list[dict[str, bytes]] = [{}, {}, {}, {}]  # name -> digest, per type

    def respond(self, lib: Library, ti: int, *, full: bool) -> bytes | None:
        """The response bringing the proxy to its target for one type, None if it has it already.
        SotW CDS/LDS (and any SotW reply to a request, `full`) carry every resource; otherwise only
        what changed, as meshd sends it."""
        entry = self.target[ti]
        if entry is None or not self.subscribed[ti]:
            return None
        sent = self.sent[ti]
        version, digests = entry
        want = {lib.names[d]: d for d in digests}
        changed = tuple(d for n, d in want.items() if sent.get(n) != d)
        removed = [n for n in sent if n not in want] if self.delta else []
        self.sent[ti] = want
        if not self.delta and (full or ti in (wire.T_CDS, wire.T_LDS)):
            if not full and not changed and len(want) == len(sent):
                return None
            changed = digests
        elif not changed and not removed:
            return None
        if self.delta:
            return b"".join(
                (
                    wire.field(1, version),
                    lib.blob(changed),
                    wire.field(4, wire.TYPE_URLS[ti]),
                    wire.field(5, next(self.nonces)),
                    wire.repeated(6, removed),
                )
            )
        return b"".join(
            (
                wire.field(1, version),
                lib.blob(changed),
                wire.field(4, wire.TYPE_URLS[ti]),
                wire.field(5, next(self.nonces)),
            )
        )


class ReferenceServer:
    def __init__(self, *, base: dict[str, Any], changes: list[dict[str, Any]]) -> None:
        bodies = dict(base["bodies"])
        for change in changes:
            bodies.update(change["bodies"])
        self.delta = bool(base["delta"])
        self.lib = Library(delta=self.delta, bodies=bodies)
        self.base = {node: [_entry(e) for e in entries] for node, entries in base["proxies"].items()}
        self.changes = [
            {node: {ti: (_entry(b), _entry(a)) for ti, (b, a) in types.items()} for node, types in c["changes"].items()}
            for c in changes
        ]
        self.streams: dict[str, RefStream] = {}
        for entries in self.base.values():  # serialise every full state now, not on first use
            for e in entries:
                if e is not None:
                    self.lib.blob(e[1])

    async def serve(self, requests: Any, context: Any) -> Any:
        queue: asyncio.Queue[Any] = asyncio.Queue()
        parse = (
            discovery_pb2.DeltaDiscoveryRequest.FromString if self.delta else discovery_pb2.DiscoveryRequest.FromString
        )

        async def read() -> None:
            try:
                async for raw in requests:
                    queue.put_nowait(parse(raw))
            except (asyncio.CancelledError, grpc.aio.AioRpcError):
                pass
            finally:
                queue.put_nowait(_CLOSED)

        reader = asyncio.create_task(read())
        stream: RefStream | None = None
        try:
            while True:
                item = await queue.get()
                if item is _CLOSED:
                    return
                if stream is None:
                    node = item.node.id
                    if node not in self.base:
                        await context.abort(grpc.StatusCode.NOT_FOUND, f"no recording for {node}")
                    stream = RefStream(node=node, target=list(self.base[node]), delta=self.delta)
                    stream.queue = queue
                    self.streams[node] = stream
                if item is _PUSH:
                    for ti in range(4):
                        out = stream.respond(self.lib, ti, full=False)
                        if out is not None:
                            yield out
                    continue
                ti = wire.TYPE_INDEX[item.type_url]
                if self.delta:
                    if item.resource_names_subscribe or not stream.subscribed[ti]:
                        stream.subscribed[ti] = True
                        out = stream.respond(self.lib, ti, full=False)
                        if out is not None:
                            yield out
                    continue
                names = tuple(item.resource_names)
                first = not stream.subscribed[ti]
                stream.subscribed[ti] = True
                if first or not item.response_nonce or names != stream.names[ti]:
                    stream.names[ti] = names
                    out = stream.respond(self.lib, ti, full=True)
                    if out is not None:
                        yield out
        finally:
            reader.cancel()
            if stream is not None and self.streams.get(stream.node) is stream:
                del self.streams[stream.node]

    def push(self, k: int) -> int:
        touched = 0
        for node, types in self.changes[k].items():
            stream = self.streams.get(node)
            if stream is None:
                continue
            for ti, (before, after) in types.items():
                stream.target[ti] = before if stream.target[ti] == after else after
            touched += 1
            stream.queue.put_nowait(_PUSH)
        return touched


def _load(path: str) -> Any:
    with open(path, "rb") as f:
        return pickle.load(f)


async def run(args: argparse.Namespace) -> None:
    ref = ReferenceServer(base=_load(args.base), changes=[_load(path) for path in args.change])
    method = wire.DELTA_METHOD if ref.delta else wire.SOTW_METHOD
    service, _, name = method[1:].partition("/")
    handler = grpc.method_handlers_generic_handler(service, {name: grpc.stream_stream_rpc_method_handler(ref.serve)})
    server = grpc.aio.server(
        options=[
            ("grpc.so_reuseport", 0),
            ("grpc.max_receive_message_length", -1),
            ("grpc.max_send_message_length", -1),
        ]
    )
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port(f"127.0.0.1:{args.port}")
    await server.start()
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)

    def reply(data: dict[str, Any]) -> None:
        sys.stdout.write(json.dumps(data) + "\n")
        sys.stdout.flush()

    reply({"ready": True, "target": f"127.0.0.1:{port}", "proxies": len(ref.base)})
    try:
        while line := await reader.readline():
            cmd = json.loads(line)
            if cmd["cmd"] == "quit":
                break
            if cmd["cmd"] == "push":
                t = time.time()
                reply({"t": t, "proxies": ref.push(int(cmd["change"]))})
            else:
                reply({"error": f"unknown command {cmd['cmd']!r}"})
    finally:
        await server.stop(grace=0.5)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.reference_server")
    parser.add_argument("--base", required=True)
    parser.add_argument("--change", action="append", default=[])
    parser.add_argument("--port", type=int, default=0)
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
