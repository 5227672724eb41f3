"""`meshd serve` flags of leader election, status writing, the webhooks and sidecar injection."""

from __future__ import annotations

import argparse
import pathlib
from typing import Any

from meshd.settings import Settings


def add_leader_flags(serve: argparse.ArgumentParser, defaults: Settings) -> None:
    group = serve.add_argument_group("leader election, status and validation webhook")
    group.add_argument(
        "--no-leader-election",
        dest="leader_election",
        action="store_false",
        help="never take the Lease, so never write status",
    )
    group.add_argument("--lease-name", default=defaults.lease_name)
    group.add_argument("--lease-namespace", help="namespace of the Lease (default: meshd's namespace)")
    group.add_argument("--lease-duration", type=float, default=defaults.lease_duration_s, help="seconds")
    group.add_argument("--leader-identity", help="holder identity (default: hostname + random suffix)")
    group.add_argument("--no-status", dest="write_status", action="store_false", help="lead, but write no status")
    group.add_argument("--status-interval", type=float, default=defaults.status_interval_s, help="seconds")
    group.add_argument("--webhook-cert", help="PEM certificate of the validating webhook (enables it)")
    group.add_argument("--webhook-key", help="PEM private key of the validating webhook")
    group.add_argument("--webhook-host", default=defaults.webhook_host)
    group.add_argument("--webhook-port", type=int, default=defaults.webhook_port)
    inject = serve.add_argument_group("sidecar injection (/inject) and webhook configurations")
    inject.add_argument("--no-inject", dest="inject_enabled", action="store_false", help="do not serve /inject")
    inject.add_argument("--inject-image", default=defaults.inject_image, help="image of istio-init and istio-proxy")
    inject.add_argument("--inject-image-pull-policy", default=defaults.inject_image_pull_policy)
    inject.add_argument("--inject-xds-address", help="what sidecars dial (default: istiod.<namespace>.svc:15012)")
    inject.add_argument("--inject-ca-address", help="the CA sidecars dial (default: the xDS address)")
    inject.add_argument(
        "--webhook-service", default=defaults.webhook_service, help="Service name in the CA-issued webhook cert"
    )
    inject.add_argument(
        "--injector-webhook-config",
        default=defaults.injector_webhook_config,
        help='MutatingWebhookConfiguration whose caBundle the leader sets ("" = none)',
    )
    inject.add_argument(
        "--validator-webhook-config",
        default=defaults.validator_webhook_config,
        help='ValidatingWebhookConfiguration: caBundle, failurePolicy Fail once ready ("" = none)',
    )


def leader_settings(args: argparse.Namespace) -> dict[str, Any]:
    def path(value: str | None) -> pathlib.Path | None:
        return pathlib.Path(value) if value else None

    return {
        "leader_election": args.leader_election,
        "lease_name": args.lease_name,
        "lease_namespace": args.lease_namespace,
        "lease_duration_s": args.lease_duration,
        "leader_identity": args.leader_identity,
        "write_status": args.write_status,
        "status_interval_s": args.status_interval,
        "webhook_cert": path(args.webhook_cert),
        "webhook_key": path(args.webhook_key),
        "webhook_host": args.webhook_host,
        "webhook_port": args.webhook_port,
        "inject_enabled": args.inject_enabled,
        "inject_image": args.inject_image,
        "inject_image_pull_policy": args.inject_image_pull_policy,
        "inject_xds_address": args.inject_xds_address,
        "inject_ca_address": args.inject_ca_address,
        "webhook_service": args.webhook_service,
        "injector_webhook_config": args.injector_webhook_config,
        "validator_webhook_config": args.validator_webhook_config,
    }
