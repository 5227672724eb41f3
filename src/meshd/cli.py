"""Command line: `meshd serve | bootstrap | agent | iptables | demo`.

This is one of the two places (with settings.py) that reads the process environment;
everything below receives explicit arguments.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import logging
import pathlib
import sys

from meshd.ca.cli import add_ca_arguments
from meshd.gcpolicy import importing
from meshd.kube.flags import add_leader_flags
from meshd.settings import Settings
from meshd.sources.jwks_cli import add_jwks_arguments


def _path(value: str | None) -> pathlib.Path | None:
    return pathlib.Path(value) if value else None


def serve_settings(args: argparse.Namespace) -> Settings:
    """The `meshd serve` flags as Settings, field by field (typed: no dict splatted in)."""
    return Settings(
        config_dir=_path(args.config_dir),
        xds_host=args.xds_host,
        xds_port=args.xds_port,
        http_host=args.http_host,
        http_port=args.http_port,
        debug_expose=args.debug_expose,
        debounce_quiet_s=args.debounce_quiet,
        debounce_calm_quiet_s=args.debounce_calm_quiet,
        debounce_max_s=args.debounce_max,
        file_poll_interval_s=args.poll_interval,
        file_watch=args.file_watch,
        max_config_file_bytes=args.max_config_file_bytes,
        send_timeout_s=args.send_timeout,
        max_xds_streams=args.max_xds_streams,
        max_xds_streams_per_peer=args.max_xds_streams_per_peer,
        workers=args.workers,
        worker_placement=args.worker_placement,
        enable_test_hooks=args.enable_test_hooks,
        enable_auto_mtls=not args.disable_auto_mtls,
        outbound_traffic_policy=args.outbound_traffic_policy,
        mesh_config=_path(args.mesh_config),
        scope_gateway_to_namespace=args.scope_gateway_to_namespace,
        gateway_bind=args.gateway_bind,
        protocol_detection_timeout_s=args.protocol_detection_timeout,
        kubeconfig=_path(args.kubeconfig),
        namespace=args.namespace,
        kube_watch_timeout_s=args.kube_watch_timeout,
        kube_crd_recheck_s=args.kube_crd_recheck,
        # leader election, status, webhooks and injection (kube/flags.py)
        leader_election=args.leader_election,
        lease_name=args.lease_name,
        lease_namespace=args.lease_namespace,
        lease_duration_s=args.lease_duration,
        leader_identity=args.leader_identity,
        write_status=args.write_status,
        status_interval_s=args.status_interval,
        root_cert_resync_s=args.root_cert_resync,
        gateway_deploy=args.gateway_deploy,
        gateway_deploy_resync_s=args.gateway_deploy_resync,
        webhook_cert=_path(args.webhook_cert),
        webhook_key=_path(args.webhook_key),
        webhook_host=args.webhook_host,
        webhook_port=args.webhook_port,
        inject_enabled=args.inject_enabled,
        inject_image=args.inject_image,
        inject_image_pull_policy=args.inject_image_pull_policy,
        inject_xds_address=args.inject_xds_address,
        inject_ca_address=args.inject_ca_address,
        webhook_service=args.webhook_service,
        injector_webhook_config=args.injector_webhook_config,
        validator_webhook_config=args.validator_webhook_config,
        # the CA and the secure port (ca/cli.py)
        ca_enabled=not args.no_ca,
        ca_dir=pathlib.Path(args.ca_dir),
        ca_token_file=_path(args.ca_token_file),
        trust_domain=args.trust_domain,
        cluster_id=args.cluster_id,
        secure_host=args.secure_host,
        secure_port=args.secure_port,
        secure_sans=tuple(args.secure_san) if args.secure_san else Settings().secure_sans,
        ca_default_ttl_s=args.ca_default_ttl,
        ca_max_ttl_s=args.ca_max_ttl,
        serving_cert_ttl_s=args.serving_cert_ttl,
        secure_max_connections=args.secure_max_connections,
        tls_handshake_timeout_s=args.tls_handshake_timeout,
        first_request_timeout_s=args.first_request_timeout,
        xds_max_connections=args.xds_max_connections,
        webhook_max_connections=args.webhook_max_connections,
        # RequestAuthentication key sets (sources/jwks_cli.py)
        jwks_refresh_s=args.jwks_refresh_interval,
        jwks_retry_s=args.jwks_retry_interval,
        jwks_fetch_timeout_s=args.jwks_fetch_timeout,
        jwks_max_bytes=args.jwks_max_bytes,
        jwks_allow_loopback=args.jwks_allow_loopback,
        jwks_allow_link_local=args.jwks_allow_link_local,
    )


def _workers(value: str) -> int:
    """`--workers`: a number, or `auto` (from the CPUs and memory this process may use: wiring/worker_count.py)."""
    if value == "auto":
        from meshd.wiring.worker_count import auto_workers, memory_limit, usable_cpus

        return auto_workers(cpus=usable_cpus(), memory_limit=memory_limit())
    try:
        count = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--workers takes a number or 'auto', not {value!r}") from None
    if count < 1:
        raise argparse.ArgumentTypeError("--workers must be at least 1")
    return count


def _worker(args: argparse.Namespace) -> int:
    from meshd.wiring.worker import run_worker, set_parent_death_signal

    set_parent_death_signal()
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(run_worker(control=args.control, dispatch_fd=args.dispatch_fd))
    return 0


def _serve(args: argparse.Namespace) -> int:
    from meshd.app import run_server

    settings = serve_settings(args)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(run_server(settings))
    return 0


def _bootstrap(args: argparse.Namespace) -> int:
    from meshd.agent.bootstrap import build_bootstrap, render

    host, _, port = args.xds_address.rpartition(":")
    if args.proxyless:
        from meshd.agent.grpc_bootstrap import build_grpc_bootstrap
        from meshd.translate.proxy import InvalidNodeId

        labels = dict(item.split("=", 1) for item in args.labels.split(",") if "=" in item)
        try:
            grpc_config = build_grpc_bootstrap(
                node_id=args.node_id, xds_host=host or "127.0.0.1", xds_port=int(port), labels=labels
            )
        except InvalidNodeId as exc:
            sys.stderr.write(f"meshd bootstrap: {exc}\n")
            return 2
        sys.stdout.write(render(grpc_config, fmt=args.format))
        return 0
    if args.cluster is None:
        sys.stderr.write("meshd bootstrap: --cluster is required for an Envoy bootstrap\n")
        return 2
    config = build_bootstrap(
        node_id=args.node_id,
        cluster=args.cluster,
        xds_host=host or "127.0.0.1",
        xds_port=int(port),
        admin_host=args.admin_host,
        admin_port=args.admin_port,
        delta=args.delta,
    )
    sys.stdout.write(render(config, fmt=args.format))
    return 0


def _demo(args: argparse.Namespace) -> int:
    from meshd.demo.runner import run_demo

    try:
        return asyncio.run(run_demo(duration_s=args.duration, delta=args.delta))
    except KeyboardInterrupt:
        return 130


def build_parser() -> argparse.ArgumentParser:
    defaults = Settings()
    parser = argparse.ArgumentParser(prog="meshd", description=__doc__)
    parser.add_argument("--log-level", default="INFO")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the control plane")
    serve.add_argument("--config-dir", help="directory of Istio/Kubernetes YAML (standalone mode)")
    serve.add_argument("--xds-host", default=defaults.xds_host)
    serve.add_argument("--xds-port", type=int, default=defaults.xds_port)
    serve.add_argument(
        "--xds-max-connections", type=int, default=defaults.xds_max_connections, help="open connections on --xds-port"
    )
    serve.add_argument(
        "--webhook-max-connections",
        type=int,
        default=defaults.webhook_max_connections,
        help="open connections on --webhook-port",
    )
    serve.add_argument("--http-host", default=defaults.http_host)
    serve.add_argument("--http-port", type=int, default=defaults.http_port)
    serve.add_argument(
        "--debug-expose",
        action="store_true",
        help="answer /debug/* on the ops port from other addresses, to authenticated callers only: Kubernetes mode, "
        "a service-account token RBAC lets get the path (nonResourceURLs /debug/*); standalone, a --ca-token-file "
        "token of meshd's namespace (default: loopback clients only)",
    )
    serve.add_argument(
        "--debounce-quiet",
        type=float,
        default=defaults.debounce_quiet_s,
        help="seconds without a change before a burst of changes is pushed (Istio's PILOT_DEBOUNCE_AFTER)",
    )
    serve.add_argument(
        "--debounce-calm-quiet",
        type=float,
        default=defaults.debounce_calm_quiet_s,
        help="the same for a change arriving --debounce-quiet or more after the last push: pushed after this "
        "quiet period; set it to --debounce-quiet to make every change wait that",
    )
    serve.add_argument("--debounce-max", type=float, default=defaults.debounce_max_s)
    serve.add_argument("--poll-interval", type=float, default=defaults.file_poll_interval_s)
    serve.add_argument(
        "--file-watch", choices=["events", "poll"], default=defaults.file_watch, help="how --config-dir is watched"
    )
    serve.add_argument(
        "--max-config-file-bytes",
        type=int,
        default=defaults.max_config_file_bytes,
        help="a config file larger than this is refused",
    )
    serve.add_argument(
        "--send-timeout", type=float, default=defaults.send_timeout_s, help="disconnect a proxy stuck this long"
    )
    serve.add_argument(
        "--max-xds-streams", type=int, default=defaults.max_xds_streams, help="ADS streams per gRPC server"
    )
    serve.add_argument(
        "--max-xds-streams-per-peer",
        type=int,
        default=defaults.max_xds_streams_per_peer,
        help="ADS streams per peer address on the plaintext port",
    )
    serve.add_argument(
        "--workers",
        type=_workers,
        default="auto",
        help="processes serving the xDS ports 15010 and 15012 (SO_REUSEPORT), fed by this one; 1: this process"
        " serves them; 'auto' (default): one per CPU from 4 CPUs up (at most 8, one per 256 MiB of the memory"
        " limit), else 1",
    )
    serve.add_argument(
        "--worker-placement",
        choices=["namespace", "kernel"],
        default=defaults.worker_placement,
        help="with workers and the CA, who picks the worker of a connection to 15012: 'namespace' (default):"
        " this process, by the namespace of the pod at the caller's address, so each namespace's config is"
        " built in one worker; 'kernel': SO_REUSEPORT spreads them",
    )
    serve.add_argument("--enable-test-hooks", action="store_true", help=argparse.SUPPRESS)
    serve.add_argument(
        "--disable-auto-mtls", action="store_true", help="no automatic mTLS toward sidecars (Istio's enableAutoMtls)"
    )
    serve.add_argument(
        "--outbound-traffic-policy",
        choices=["ALLOW_ANY", "REGISTRY_ONLY"],
        default=defaults.outbound_traffic_policy,
        help="capture mode: where unknown destinations go (a Sidecar's outboundTrafficPolicy wins)",
    )
    serve.add_argument(
        "--mesh-config",
        help="standalone: a MeshConfig YAML file (as istiod's --meshConfig), watched for changes: rootNamespace, "
        "trustDomain, extensionProviders, pathNormalization... (Kubernetes mode reads the `istio` ConfigMap)",
    )
    serve.add_argument(
        "--scope-gateway-to-namespace",
        action="store_true",
        help="a Gateway selects gateway workloads of its own namespace only (Istio's PILOT_SCOPE_GATEWAY_TO_NAMESPACE)",
    )
    serve.add_argument(
        "--gateway-bind",
        choices=["auto", "any", "proxy-ip"],
        default=defaults.gateway_bind,
        help="gateway listeners bind 0.0.0.0 (any) or the gateway proxy's address (proxy-ip); auto: proxy-ip"
        " standalone, any in Kubernetes mode",
    )
    serve.add_argument(
        "--protocol-detection-timeout",
        type=float,
        default=defaults.protocol_detection_timeout_s,
        help="seconds a port without a declared protocol waits for the client's first bytes before TCP (0: no limit)",
    )
    serve.add_argument("--kubeconfig", help="read the cluster with this kubeconfig (no --config-dir: in-cluster)")
    serve.add_argument("--namespace", default=defaults.namespace, help="meshd's namespace (mesh ConfigMap `istio`)")
    serve.add_argument("--kube-watch-timeout", type=float, default=defaults.kube_watch_timeout_s)
    serve.add_argument(
        "--kube-crd-recheck", type=float, default=defaults.kube_crd_recheck_s, help="seconds between CRD lookups"
    )
    add_leader_flags(serve, defaults)
    add_ca_arguments(serve, defaults)
    add_jwks_arguments(serve, defaults)
    serve.set_defaults(func=_serve, imports=("meshd.app",))

    worker = sub.add_parser("worker")  # started by `serve --workers N`, never by hand
    worker.add_argument("--control", required=True, help=argparse.SUPPRESS)
    worker.add_argument("--dispatch-fd", type=int, help=argparse.SUPPRESS)  # the secure port's connections
    worker.set_defaults(func=_worker, imports=("meshd.wiring.worker",))

    boot = sub.add_parser("bootstrap", help="print an Envoy bootstrap for a sidecar (or a gRPC one: --proxyless)")
    boot.add_argument("--node-id", required=True)
    boot.add_argument("--cluster", help="Envoy's cluster name (Envoy bootstraps only)")
    boot.add_argument(
        "--proxyless",
        action="store_true",
        help="a gRPC xDS bootstrap (GRPC_XDS_BOOTSTRAP) for a proxyless gRPC client, as Istio's agent writes it",
    )
    boot.add_argument("--labels", default="", help="the workload's labels, k=v,k=v (--proxyless)")
    boot.add_argument("--xds-address", default=f"127.0.0.1:{defaults.xds_port}")
    boot.add_argument("--admin-host", default="127.0.0.1")
    boot.add_argument("--admin-port", type=int, default=15000)
    boot.add_argument("--delta", action="store_true", help="use delta (incremental) ADS")
    boot.add_argument("--format", choices=["json", "yaml"], default="json")
    boot.set_defaults(func=_bootstrap)

    from meshd.agent.cli import add_agent_parser

    add_agent_parser(sub)

    from meshd.capture.cli import add_iptables_parser

    add_iptables_parser(sub)

    from meshd.ctl.cli import add_ctl_parsers

    add_ctl_parsers(sub, xds_port=defaults.xds_port)

    demo = sub.add_parser("demo", help="run the bundled example mesh with real Envoy sidecars")
    demo.add_argument("--duration", type=float, default=15.0, help="seconds per phase")
    demo.add_argument("--delta", action="store_true")
    demo.set_defaults(func=_demo)
    return parser


def main(argv: list[str] | None = None) -> None:
    with importing():  # the parser's modules and the command's (`imports`) are most of a start-up's CPU
        args = build_parser().parse_args(argv)
        for module in getattr(args, "imports", ()):
            importlib.import_module(module)
    logging.basicConfig(
        level=args.log_level.upper(),
        format="%(asctime)s level=%(levelname)s logger=%(name)s %(message)s",
    )
    raise SystemExit(args.func(args))
