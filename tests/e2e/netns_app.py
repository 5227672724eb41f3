"""Run one demo app (meshd.demo.apps) inside a network namespace: `netns_app.py SERVICE VERSION POD PORT`.
Listens on 0.0.0.0:PORT (capture-mode sidecars deliver inbound traffic from 127.0.0.6 to the pod's address),
prints `ready`, serves until killed."""

from __future__ import annotations

import asyncio
import sys

from meshd.demo.apps import start_app


async def main(service: str, version: str, pod: str, port: int) -> None:
    server = await start_app(service=service, version=version, pod=pod, host="0.0.0.0", port=port)
    print("ready", flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await server.stop()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])))
