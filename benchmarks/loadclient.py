"""Load client: N simulated sidecars, each one ADS stream over real gRPC, behaving like Envoy.

    python -m benchmarks.loadclient --proxies nodes.json [--metadata m.json] [--delta] [--record] [--per-channel 100]

Each proxy subscribes wildcard CDS and LDS, then EDS for the EDS clusters it received and RDS for
the route configurations its listeners name, and ACKs every response at once (SotW: version,
nonce and resource names; delta: the nonce). Bookkeeping is in holdings.Tracker.

Driven by the benchmark over stdin/stdout, one JSON object per line each way:
  {"cmd": "connect", "target": "127.0.0.1:15010"}   open every stream at once -> {"t0": time}
  {"cmd": "cold"}                                    convergence of that storm so far
  {"cmd": "mark"}                                    -> {"mark": id, "t": time}
  {"cmd": "stats", "mark": id, "expect": {...}}      responses since the mark (Tracker.stats)
  {"cmd": "first", "mark": id}                       per proxy, first response time per type since the mark
  {"cmd": "responses", "proxy": i, "mark": id}       one proxy's response log
  {"cmd": "check", "items": [[eds name, text]]}      which proxies hold endpoints containing text
  {"cmd": "dump", "path": p, "mark": id | null}      record for the reference server
  {"cmd": "record", "on": false}                     stop recording bodies (frees them)
  {"cmd": "totals"} | {"cmd": "disconnect"} | {"cmd": "quit"}
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import sys
import time
from typing import Any

import grpc
from envoy.config.core.v3 import base_pb2
from google.protobuf import struct_pb2

from benchmarks import wire
from benchmarks.holdings import Tracker
from benchmarks.wire import T_CDS, T_EDS, T_LDS, T_RDS

_SOTW_TYPE = [wire.field(4, url) for url in wire.TYPE_URLS]
_DELTA_TYPE = [wire.field(2, url) for url in wire.TYPE_URLS]
_EMPTY: frozenset[str] = frozenset()
_MAX_ATTEMPTS = 8
_BACKOFF_BASE_S, _BACKOFF_MAX_S = 0.5, 30.0


class _Blobs:
    """Encoded resource-name lists, shared by every proxy asking for the same names."""

    def __init__(self) -> None:
        self._names: dict[frozenset[str], bytes] = {}
        self._diffs: dict[tuple[frozenset[str], frozenset[str]], bytes] = {}

    def names(self, names: frozenset[str] | None) -> bytes:
        if not names:
            return b""
        blob = self._names.get(names)
        if blob is None:
            blob = self._names[names] = wire.repeated(3, sorted(names))
        return blob

    def diff(self, old: frozenset[str], new: frozenset[str]) -> bytes:
        blob = self._diffs.get((old, new))
        if blob is None:
            blob = wire.repeated(3, sorted(new - old)) + wire.repeated(4, sorted(old - new))
            self._diffs[(old, new)] = blob
        return blob


def _node(node_id: str, metadata: dict[str, Any] | None) -> bytes:
    pod_ns = node_id.split("~")[2]
    node = base_pb2.Node(id=node_id, cluster=pod_ns, user_agent_name="meshd-bench")
    if metadata:
        fields = struct_pb2.Struct()
        fields.update(metadata)
        node.metadata.CopyFrom(fields)
    return node.SerializeToString()


class LoadClient:
    def __init__(
        self,
        *,
        node_ids: list[str],
        delta: bool,
        record: bool,
        per_channel: int,
        metadata: list[dict[str, Any]] | None = None,
    ) -> None:
        self.tracker = Tracker(node_ids=node_ids, delta=delta, record=record)
        self.node_ids = node_ids
        self.metadata = metadata  # per proxy: node metadata (NAMESPACE, LABELS, ...), as a sidecar sends
        self.delta = delta
        self.per_channel = per_channel
        self.blobs = _Blobs()
        self.channels: list[grpc.aio.Channel] = []
        self.tasks: list[asyncio.Task[None]] = []
        self.subs: list[list[frozenset[str]]] = [[_EMPTY] * 4 for _ in node_ids]  # EDS/RDS names asked for
        self.t0 = 0.0

    async def connect(self, target: str) -> float:
        await self.disconnect()
        self.t0 = time.time()
        options = [
            ("grpc.use_local_subchannel_pool", 1),  # one TCP connection per channel
            ("grpc.max_receive_message_length", -1),
            ("grpc.max_send_message_length", -1),
        ]
        n_channels = -(-len(self.node_ids) // self.per_channel)
        self.channels = [grpc.aio.insecure_channel(target, options=options) for _ in range(n_channels)]
        await asyncio.wait_for(asyncio.gather(*(c.channel_ready() for c in self.channels)), 30)
        self.tasks = [asyncio.create_task(self._run(p)) for p in range(len(self.node_ids))]
        return self.t0

    async def disconnect(self) -> None:
        for task in self.tasks:
            task.cancel()
        for task in self.tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        for channel in self.channels:
            await channel.close()
        self.tasks, self.channels = [], []

    async def _run(self, p: int) -> None:
        """One proxy's ADS stream; like Envoy, reopen it after a failure with jittered exponential
        backoff (base 0.5 s), keeping what the proxy holds and asking again for what it subscribes."""
        method = wire.DELTA_METHOD if self.delta else wire.SOTW_METHOD
        node = _node(self.node_ids[p], self.metadata[p] if self.metadata else None)
        for attempt in range(_MAX_ATTEMPTS):
            call = self.channels[p // self.per_channel].stream_stream(method)()  # bytes in, bytes out
            try:
                if self.delta:
                    await self._delta(p, call, node)
                else:
                    await self._sotw(p, call, node)
            except asyncio.CancelledError:
                call.cancel()
                raise
            except grpc.aio.AioRpcError as exc:
                self.tracker.stream_errors.append(f"{self.node_ids[p]}: {exc.code().name} {exc.details()}")
            except Exception as exc:
                self.tracker.stream_errors.append(f"{self.node_ids[p]}: {exc!r}")
            if attempt + 1 < _MAX_ATTEMPTS:
                self.tracker.reconnects += 1
                await asyncio.sleep(random.uniform(0, min(_BACKOFF_MAX_S, _BACKOFF_BASE_S * 2**attempt)))
        self.tracker.gave_up += 1

    async def _sotw(self, p: int, call: Any, node: bytes) -> None:
        tr, blobs, write, read = self.tracker, self.blobs, call.write, call.read
        subs = self.subs[p]
        await write(wire.field(2, node) + wire.field(1, tr.versions[p][T_CDS]) + _SOTW_TYPE[T_CDS])
        await write(wire.field(1, tr.versions[p][T_LDS]) + _SOTW_TYPE[T_LDS])
        for ti in (T_EDS, T_RDS):  # after a reconnect: what the proxy subscribed to before
            if subs[ti]:
                await write(wire.field(1, tr.versions[p][ti]) + blobs.names(subs[ti]) + _SOTW_TYPE[ti])
        while True:
            raw = await read()
            if raw is grpc.aio.EOF:
                tr.stream_errors.append(f"{self.node_ids[p]}: server closed the stream")
                return
            ti, msg, st, eds_changed = tr.on_sotw(p, raw, time.time())
            await write(
                wire.field(1, msg.version_info) + blobs.names(subs[ti]) + _SOTW_TYPE[ti] + wire.field(5, msg.nonce)
            )
            if ti in (T_CDS, T_LDS):
                dep = T_EDS if ti == T_CDS else T_RDS
                want = st.wants or _EMPTY
                # Envoy asks for EDS again when clusters are added or updated (they warm anew).
                if want != subs[dep] or eds_changed:
                    old, subs[dep] = subs[dep], want
                    if old - want:
                        tr.unsubscribe(p, dep, old - want)
                    await write(
                        wire.field(1, tr.versions[p][dep])
                        + blobs.names(want)
                        + _SOTW_TYPE[dep]
                        + wire.field(5, tr.nonces[p][dep])
                    )
            tr.check_converged(p, time.time())

    async def _delta(self, p: int, call: Any, node: bytes) -> None:
        tr, blobs, write, read = self.tracker, self.blobs, call.write, call.read
        subs = self.subs[p]
        await write(wire.field(1, node) + _DELTA_TYPE[T_CDS])
        await write(_DELTA_TYPE[T_LDS])
        for ti in (T_EDS, T_RDS):
            if subs[ti]:
                await write(_DELTA_TYPE[ti] + blobs.diff(_EMPTY, subs[ti]))
        while True:
            raw = await read()
            if raw is grpc.aio.EOF:
                tr.stream_errors.append(f"{self.node_ids[p]}: server closed the stream")
                return
            ti, msg, st, _ = tr.on_delta(p, raw, time.time())
            await write(_DELTA_TYPE[ti] + wire.field(6, msg.nonce))
            if ti in (T_CDS, T_LDS):
                dep = T_EDS if ti == T_CDS else T_RDS
                want = st.wants or _EMPTY
                if want != subs[dep]:
                    old, subs[dep] = subs[dep], want
                    await write(_DELTA_TYPE[dep] + blobs.diff(old, want))
                    if old - want:
                        tr.unsubscribe(p, dep, old - want)
            tr.check_converged(p, time.time())

    async def handle(self, cmd: dict[str, Any]) -> dict[str, Any]:
        tr = self.tracker
        name = cmd["cmd"]
        if name == "connect":
            return {"t0": await self.connect(cmd["target"])}
        if name == "cold":
            return {"t0": self.t0, **tr.cold()}
        if name == "mark":
            mark, t = tr.mark(time.time())
            return {"mark": mark, "t": t}
        if name == "stats":
            return tr.stats(cmd["mark"], cmd.get("expect"), bool(cmd.get("detail")))
        if name == "check":
            return tr.check([(n, s) for n, s in cmd["items"]])
        if name == "dump":
            return tr.dump(cmd["path"], cmd.get("mark"))
        if name == "record":
            tr.record = bool(cmd["on"])
            if not tr.record:
                tr.bodies.clear()
            return {"record": tr.record}
        if name == "first":
            return tr.first(cmd["mark"])
        if name == "responses":
            return {"responses": tr.responses(int(cmd["proxy"]), cmd.get("mark"))}
        if name == "totals":
            return tr.totals()
        if name == "disconnect":
            await self.disconnect()
            return {"ok": True}
        raise ValueError(f"unknown command {name!r}")


async def serve_commands(client: LoadClient) -> None:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=1 << 24)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)

    def reply(data: dict[str, Any]) -> None:
        sys.stdout.write(json.dumps(data) + "\n")
        sys.stdout.flush()

    reply({"ready": True})
    try:
        while line := await reader.readline():
            cmd = json.loads(line)
            if cmd.get("cmd") == "quit":
                break
            try:
                reply(await client.handle(cmd))
            except Exception as exc:
                reply({"error": repr(exc)})
    finally:
        await client.disconnect()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.loadclient")
    parser.add_argument("--proxies", required=True, help="JSON file: list of node ids")
    parser.add_argument("--metadata", help="JSON file: per proxy, its node metadata (a map)")
    parser.add_argument("--delta", action="store_true")
    parser.add_argument("--record", action="store_true", help="keep resource bodies for `dump`")
    parser.add_argument("--per-channel", type=int, default=100, help="streams per gRPC channel")
    args = parser.parse_args()
    with open(args.proxies) as f:
        node_ids = json.load(f)
    metadata = None
    if args.metadata:
        with open(args.metadata) as f:
            metadata = json.load(f)
    client = LoadClient(
        node_ids=node_ids, delta=args.delta, record=args.record, per_channel=args.per_channel, metadata=metadata
    )
    asyncio.run(serve_commands(client))


if __name__ == "__main__":
    main()
