"""The `meshd proxy-status` command line."""

from __future__ import annotations

import argparse
import asyncio
import pathlib
import sys

from meshd.ctl.proxy_status import parse_syncz, render_json, render_table, select
from meshd.ctl.xds_client import SYNCZ, XdsClientError, ask


def add_ctl_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser], *, xds_port: int) -> None:
    status = sub.add_parser(
        "proxy-status", help="per proxy and xDS type: SYNCED, NOT SENT, STALE or NACKED (with Envoy's error)"
    )
    status.add_argument("proxy", nargs="?", help="one proxy: pod.namespace or its full node id")
    _xds_arguments(status, xds_port=xds_port)
    status.add_argument("-o", "--output", choices=["table", "json"], default="table")
    status.set_defaults(func=_proxy_status)


def _xds_arguments(parser: argparse.ArgumentParser, *, xds_port: int) -> None:
    parser.add_argument("--xds-address", default=f"127.0.0.1:{xds_port}", help="meshd's xDS address (host:port)")
    parser.add_argument(
        "--cert-dir",
        type=pathlib.Path,
        help="client certificate directory for the secure port (cert-chain.pem, key.pem, root-cert.pem)",
    )
    parser.add_argument(
        "--authority", help="the server name to verify on the secure port (e.g. istiod.istio-system.svc)"
    )
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for meshd's answer")


def _proxy_status(args: argparse.Namespace) -> int:
    try:
        response = asyncio.run(
            ask(args.xds_address, SYNCZ, cert_dir=args.cert_dir, authority=args.authority, timeout_s=args.timeout)
        )
    except XdsClientError as exc:
        sys.stderr.write(f"meshd proxy-status: {exc}\n")
        return 1
    statuses = select(parse_syncz(response), args.proxy)
    if args.proxy is not None and not statuses:
        sys.stderr.write(f"meshd proxy-status: no proxy {args.proxy!r} is connected to {args.xds_address}\n")
        return 1
    sys.stdout.write(render_json(statuses) if args.output == "json" else render_table(statuses))
    return 0
