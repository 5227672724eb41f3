"""The `meshd proxy-status` command line."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import pathlib
import sys
from dataclasses import asdict
from typing import Any

from meshd.ctl.analyze import analyze_cluster, analyze_paths
from meshd.ctl.explain import Explanation, Request, explain
from meshd.ctl.explain_inbound import Call, client_transport, explain_inbound, first_endpoint
from meshd.ctl.proxy_config import KINDS, NoSuchProxy, resources
from meshd.ctl.proxy_config import render_json as config_json
from meshd.ctl.proxy_config import render_table as config_table
from meshd.ctl.proxy_status import parse_syncz, render_json, render_table, select
from meshd.ctl.xds_client import CONFIG_DUMP, SYNCZ, XdsClientError, ask
from meshd.settings import Settings


def add_ctl_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser], *, xds_port: int) -> None:
    status = sub.add_parser(
        "proxy-status", help="per proxy and xDS type: SYNCED, NOT SENT, STALE or NACKED (with Envoy's error)"
    )
    status.add_argument("proxy", nargs="?", help="one proxy: pod.namespace or its full node id")
    _xds_arguments(status, xds_port=xds_port)
    status.add_argument("-o", "--output", choices=["table", "json"], default="table")
    status.set_defaults(func=_proxy_status)

    config = sub.add_parser("proxy-config", help="what meshd serves one proxy: clusters, listeners, routes, ...")
    config.add_argument("kind", choices=KINDS)
    config.add_argument("proxy", help="pod.namespace of a connected proxy, or any proxy's full node id")
    _xds_arguments(config, xds_port=xds_port)
    config.add_argument("-o", "--output", choices=["table", "json"], default="table")
    config.set_defaults(func=_proxy_config)

    why = sub.add_parser(
        "explain", help="the listener, route, VirtualService rule, destinations and endpoints a request takes"
    )
    why.add_argument("--from", dest="source", required=True, help="the calling proxy: pod.namespace or node id")
    why.add_argument("--to", dest="target", required=True, help="HOST[:PORT] as the app calls it (port default 80)")
    why.add_argument("--path", default="/")
    why.add_argument("--method", default="GET")
    why.add_argument("--header", action="append", default=[], metavar="K=V", help="a request header (repeatable)")
    why.add_argument(
        "--from-identity", help="the SPIFFE identity the caller presents over mTLS (for authorization by principal)"
    )
    _xds_arguments(why, xds_port=xds_port)
    why.add_argument("-o", "--output", choices=["text", "json"], default="text")
    why.set_defaults(func=_explain)

    analyze = sub.add_parser(
        "analyze",
        help="report every problem in a directory of Istio/Kubernetes YAML without serving (exit 1 on errors)",
    )
    analyze.add_argument("paths", nargs="*", type=pathlib.Path, help="directories (read recursively) or files")
    analyze.add_argument("--kubeconfig", type=pathlib.Path, help="analyze the cluster of this kubeconfig instead")
    analyze.add_argument("-n", "--namespace", default="default", help="report this namespace's resources (cluster)")
    analyze.add_argument("-A", "--all-namespaces", action="store_true", help="report every namespace (cluster)")
    analyze.add_argument("-o", "--output", choices=["text", "json"], default="text")
    analyze.set_defaults(func=_analyze)


def _proxy_config(args: argparse.Namespace) -> int:
    try:
        response = asyncio.run(
            ask(
                args.xds_address,
                CONFIG_DUMP,
                names=(args.proxy,),
                cert_dir=args.cert_dir,
                authority=args.authority,
                timeout_s=args.timeout,
            )
        )
        items = resources(response, args.kind)
    except XdsClientError as exc:
        sys.stderr.write(f"meshd proxy-config: {exc}\n")
        return 1
    except NoSuchProxy:
        sys.stderr.write(
            f"meshd proxy-config: {args.proxy!r} is neither a connected proxy (pod.namespace) nor a node id\n"
        )
        return 1
    sys.stdout.write(config_json(items) if args.output == "json" else config_table(args.kind, items))
    return 0


def _explain(args: argparse.Namespace) -> int:
    host, _, port = args.target.rpartition(":") if ":" in args.target else (args.target, "", "80")
    if not port.isdigit():
        sys.stderr.write(f"meshd explain: --to {args.target!r}: the port must be a number\n")
        return 2
    headers = dict(h.split("=", 1) for h in args.header if "=" in h)
    try:
        response = asyncio.run(
            ask(
                args.xds_address,
                CONFIG_DUMP,
                names=(args.source,),
                cert_dir=args.cert_dir,
                authority=args.authority,
                timeout_s=args.timeout,
            )
        )
        config = {kind: resources(response, kind) for kind in ("listeners", "routes", "clusters", "endpoints")}
    except XdsClientError as exc:
        sys.stderr.write(f"meshd explain: {exc}\n")
        return 1
    except NoSuchProxy:
        sys.stderr.write(f"meshd explain: {args.source!r} is neither a connected proxy (pod.namespace) nor a node id\n")
        return 1
    request = Request(host=host, port=int(port), path=args.path, method=args.method.upper(), headers=headers)
    found = explain(config, request)
    try:
        asyncio.run(_server_side(args, config, request, found))
    except XdsClientError as exc:
        found.add("server", "unknown", f"meshd did not answer for the server proxy: {exc}")
    sys.stdout.write(json.dumps(found.as_dict(), indent=2) + "\n" if args.output == "json" else found.render())
    return 0


async def _server_side(args: argparse.Namespace, config: Any, request: Request, found: Explanation) -> None:
    """The destination's side: the server proxy of the first destination's first endpoint, its peer
    authentication and authorization of this request (ctl/explain_inbound.py)."""
    chosen = next((d for d in found.destinations if d["endpoints"]), None)
    if chosen is None or not found.outcome.startswith("forwarded"):
        return
    cluster, endpoint = first_endpoint(config, chosen["cluster"])
    if endpoint is None:
        return
    address = endpoint.endpoint.address.socket_address
    statuses = parse_syncz(
        await ask(args.xds_address, SYNCZ, cert_dir=args.cert_dir, authority=args.authority, timeout_s=args.timeout)
    )
    ips = {s.name: s.node_id.split("~")[1] for s in statuses if s.node_id.count("~") >= 3}
    client_ip = ips.get(args.source) or (args.source.split("~")[1] if args.source.count("~") >= 3 else "")
    server = next((name for name, ip in ips.items() if ip == address.address), None)
    if server is None:
        found.add("server", "none", f"no proxy connected to meshd has the endpoint's address {address.address}")
        return
    dump = await ask(
        args.xds_address, CONFIG_DUMP, names=(server,), cert_dir=args.cert_dir, authority=args.authority,
        timeout_s=args.timeout,
    )  # fmt: skip
    server_config = {kind: resources(dump, kind) for kind in ("listeners",)}
    mtls, sni = client_transport(cluster, endpoint)
    call = Call(
        host=request.host, path=request.path, method=request.method, headers=request.headers,
        server_ip=address.address, server_port=address.port_value, client_ip=client_ip,
        client_identity=args.from_identity, mtls=mtls, sni=sni, service_port=request.port,
    )  # fmt: skip
    found.add("server", server, f"the proxy at the endpoint {address.address}:{address.port_value}")
    inbound = explain_inbound(server_config, call)
    for step in inbound.steps:
        found.add(*step)
    if inbound.outcome:
        found.outcome = inbound.outcome


def _analyze(args: argparse.Namespace) -> int:
    if bool(args.paths) == (args.kubeconfig is not None):
        sys.stderr.write("meshd analyze: give either files/directories or --kubeconfig\n")
        return 2
    missing = [str(p) for p in args.paths if not p.exists()]
    if missing:
        sys.stderr.write(f"meshd analyze: no such file or directory: {', '.join(missing)}\n")
        return 2
    log = logging.getLogger("meshd.analyze")
    log.setLevel(logging.CRITICAL)  # findings are the output; the readers' own log lines are not
    if args.kubeconfig is not None:
        settings = Settings(kubeconfig=args.kubeconfig, leader_election=False)
        try:
            findings = asyncio.run(analyze_cluster(args.kubeconfig, settings=settings, log=log))
        except Exception as exc:
            sys.stderr.write(f"meshd analyze: cannot read the cluster: {type(exc).__name__}: {exc}\n")
            return 2
        if not args.all_namespaces:
            findings = [f for f in findings if f.resource.split(" ", 1)[-1].startswith(f"{args.namespace}/")]
        where = "the cluster" if args.all_namespaces else f"namespace {args.namespace}"
    else:
        findings = analyze_paths(args.paths, settings=Settings(), log=log)
        where = ", ".join(map(str, args.paths))
    if args.output == "json":
        sys.stdout.write(json.dumps([asdict(f) for f in findings], indent=2) + "\n")
    elif findings:
        sys.stdout.write("".join(f.render() + "\n" for f in findings))
    else:
        sys.stdout.write(f"\u2714 No validation issues found when analyzing {where}.\n")
    return 1 if any(f.level == "Error" for f in findings) else 0


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
