"""Measure what idle TLS connections cost a running meshd (issue 20, defect 12): open `--count`
TLS connections to the secure port on loopback that complete the handshake and then send nothing,
report meshd's RSS and open fds before and with them open, then how many meshd still holds after
`--hold` seconds. Bounded: every connection is closed at the end, each step has a timeout.

    python tools/idle_tls_probe.py --pid <meshd pid> --port 15012 --count 300 --hold 15
"""

from __future__ import annotations

import argparse
import asyncio
import os
import ssl
import time


def _rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def _fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


async def _open(port: int, context: ssl.SSLContext) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | str:
    try:
        return await asyncio.wait_for(
            asyncio.open_connection("127.0.0.1", port, ssl=context, server_hostname="localhost"), 10
        )
    except (OSError, TimeoutError, ssl.SSLError) as exc:
        return type(exc).__name__


async def _closed_by_server(reader: asyncio.StreamReader) -> bool:
    try:
        return await asyncio.wait_for(reader.read(1), 0.05) == b""
    except TimeoutError:
        return False
    except (OSError, ssl.SSLError):
        return True


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--pid", type=int, required=True)
    parser.add_argument("--port", type=int, default=15012)
    parser.add_argument("--count", type=int, default=300)
    parser.add_argument("--hold", type=float, default=15.0)
    args = parser.parse_args()
    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    context.set_alpn_protocols(["h2"])
    rss0, fds0 = _rss_kb(args.pid), _fds(args.pid)
    results = []
    for start in range(0, args.count, 50):
        results += await asyncio.gather(*(_open(args.port, context) for _ in range(start, min(start + 50, args.count))))
    opened = [r for r in results if not isinstance(r, str)]
    failed = [r for r in results if isinstance(r, str)]
    await asyncio.sleep(1.0)  # let meshd settle (the probe's own pacing, not a test)
    rss1, fds1 = _rss_kb(args.pid), _fds(args.pid)
    n = max(1, len(opened))
    print(f"connections: asked {args.count}, open {len(opened)}, refused/failed {len(failed)} {sorted(set(failed))}")
    print(f"meshd before: rss {rss0} KB, fds {fds0}")
    each = f"+{(rss1 - rss0) / n:.1f} KB, +{(fds1 - fds0) / n:.2f} fds each"
    print(f"meshd with them open: rss {rss1} KB, fds {fds1} ({each})")
    deadline = time.monotonic() + args.hold
    closed = 0
    while time.monotonic() < deadline:
        closed = sum([await _closed_by_server(r) for r, _ in opened])
        if closed == len(opened):
            break
        await asyncio.sleep(1.0)
    rss2, fds2 = _rss_kb(args.pid), _fds(args.pid)
    held = time.monotonic() - deadline + args.hold
    print(f"after {held:.1f}s idle: meshd closed {closed}/{len(opened)}; rss {rss2} KB, fds {fds2}")
    for _, writer in opened:
        writer.transport.abort()


if __name__ == "__main__":
    asyncio.run(main())
