"""`meshd serve` flags of leader election, status writing, the webhooks and sidecar injection
(cli.py maps them onto Settings)."""

from __future__ import annotations

import argparse

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
    group.add_argument(
        "--root-cert-resync",
        type=float,
        default=defaults.root_cert_resync_s,
        help="seconds between the leader's passes over every namespace's istio-ca-root-cert (besides a watch)",
    )
    group.add_argument(
        "--no-gateway-deploy",
        dest="gateway_deploy",
        action="store_false",
        help="deploy no gateway proxy for Gateway API Gateways (manual deployment only)",
    )
    group.add_argument(
        "--gateway-deploy-resync",
        type=float,
        default=defaults.gateway_deploy_resync_s,
        help="seconds between the leader's full passes over the Gateways' generated objects",
    )
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
