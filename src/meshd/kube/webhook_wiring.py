"""How `meshd serve` sets up its webhooks (called from app.py): the injection settings, the serving
certificate from meshd's CA when no `--webhook-cert` files are given (Kubernetes mode), and the leader's
caBundle/failurePolicy patcher."""

from __future__ import annotations

import logging
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from meshd.ca.runtime import Security
from meshd.kube.inject_template import InjectionConfig
from meshd.kube.webhook_certs import webhook_sans, webhook_ssl_context
from meshd.kube.webhook_patcher import WebhookConfigPatcher
from meshd.settings import Settings

# Builds the leader-only webhook configuration patcher, given the elector's `is_leader`.
PatcherFactory = Callable[[Callable[[], bool]], WebhookConfigPatcher]


def injection_config(settings: Settings) -> InjectionConfig | None:
    if not settings.inject_enabled:
        return None
    ns = settings.namespace
    return InjectionConfig(
        image=settings.inject_image,
        image_pull_policy=settings.inject_image_pull_policy,
        xds_address=settings.inject_xds_address or f"istiod.{ns}.svc:15012",  # the Service port, whatever meshd binds
        xds_server_name=f"istiod.{ns}.svc",
        ca_address=settings.inject_ca_address,
        trust_domain=settings.trust_domain,
        cluster_id=settings.cluster_id,
    )


@dataclass(frozen=True)
class WebhookSetup:
    ssl_context: ssl.SSLContext | None  # None: the --webhook-cert files, if any
    patcher: PatcherFactory | None


def webhook_setup(
    settings: Settings, security: Security | None, *, is_ready: Callable[[], bool], log: logging.Logger
) -> WebhookSetup:
    """Kubernetes mode with the CA on and no --webhook-cert files: a certificate from the CA, and the
    patcher that makes the API server trust it. With files, their CA is the operator's business."""
    files = settings.webhook_cert is not None and settings.webhook_key is not None
    if security is None or security.api is None or files:
        return WebhookSetup(ssl_context=None, patcher=None)
    sans = webhook_sans(settings)
    context = webhook_ssl_context(security.signer, sans=sans, ttl_s=settings.ca_max_ttl_s)
    log.info("event=webhook_cert_issued sans=%s", ",".join(sans))
    api, root = security.api, security.root_pem

    def build(is_leader: Callable[[], bool]) -> WebhookConfigPatcher:
        return WebhookConfigPatcher(
            api=api,
            root_pem=root,
            mutating=settings.injector_webhook_config or None,
            validating=settings.validator_webhook_config or None,
            is_leader=is_leader,
            is_ready=is_ready,
            log=log,
        )

    return WebhookSetup(ssl_context=context, patcher=build)


def webhook_duties(
    settings: Settings, security: Security | None, *, is_ready: Callable[[], bool], log: logging.Logger
) -> dict[str, Any]:
    """The `Duties` fields of the webhook setup (`webhook_ssl`, `webhook_patcher`)."""
    setup = webhook_setup(settings, security, is_ready=is_ready, log=log)
    return {"webhook_ssl": setup.ssl_context, "webhook_patcher": setup.patcher}
