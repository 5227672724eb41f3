"""The webhook server of `meshd serve` (`/validate`, `/inject`) and its certificate: the
`--webhook-cert`/`--webhook-key` files when given (needs no cluster; their CA is the operator's
business), else, in Kubernetes mode with the CA on, a certificate from meshd's CA plus the leader duty
that makes the API server trust it (caBundle, then failurePolicy Fail once ready)."""

from __future__ import annotations

import dataclasses
import logging
import ssl
from collections.abc import Callable
from dataclasses import dataclass

from kubernetes_asyncio.client import ApiClient

from meshd.api.mesh import MeshConfig
from meshd.api.proxyconfig import ProxyConfig
from meshd.ca.renewal import RenewedCertificate
from meshd.ca.serving import issue_serving_cert, webhook_ssl_context
from meshd.clock import Clock
from meshd.kube.inject_proxyconfig import ProxyConfigs, ProxySettings
from meshd.kube.inject_template import InjectionConfig
from meshd.kube.leading import LeaderDuty
from meshd.kube.webhook import serve_webhook
from meshd.kube.webhook_certs import webhook_sans
from meshd.kube.webhook_patcher import WebhookConfigPatcher
from meshd.model.store import ConfigStore
from meshd.obs.metrics import Metrics
from meshd.settings import Settings
from meshd.wiring.authority import Authority
from meshd.wiring.grpc_servers import gated_listener
from meshd.wiring.leading import DutyFactory, PassOnLeading


def injection_config(
    settings: Settings, *, discovery_address: str = "", proxy_configs: ProxyConfigs | None = None
) -> InjectionConfig | None:
    """What injected sidecars get (None: injection is off)."""
    if not settings.inject_enabled:
        return None
    config = proxy_config(settings, discovery_address=discovery_address)
    return config if proxy_configs is None else dataclasses.replace(config, proxy_configs=proxy_configs)


def current_proxy_configs(mesh: MeshConfig | None, store: ConfigStore) -> ProxyConfigs:
    """The mesh's defaultConfig and the ProxyConfigs in the store (Kubernetes mode; standalone refuses them)."""
    configs = tuple(c for c in store.of_kind("ProxyConfig") if isinstance(c, ProxyConfig))
    if mesh is None:
        return ProxyConfigs(configs=configs)
    defaults = ProxySettings(mesh.proxy_concurrency, mesh.proxy_metadata)
    return ProxyConfigs(mesh=defaults, configs=configs, root_namespace=mesh.root_namespace)


def proxy_config(settings: Settings, *, discovery_address: str = "") -> InjectionConfig:
    """What meshd's proxies run and dial, injected sidecars and the gateways it deploys alike; their xDS address:
    the mesh config's `defaultConfig.discoveryAddress`, else `--inject-xds-address`, else
    istiod.<namespace>.svc:15012 (a pod's proxy.istio.io/config wins over all)."""
    ns = settings.namespace
    return InjectionConfig(
        image=settings.inject_image,
        image_pull_policy=settings.inject_image_pull_policy,
        # the Service port, whatever meshd binds
        xds_address=discovery_address or settings.inject_xds_address or f"istiod.{ns}.svc:15012",
        xds_server_name=f"istiod.{ns}.svc",
        ca_address=settings.inject_ca_address,
        trust_domain=settings.trust_domain,
        cluster_id=settings.cluster_id,
    )


@dataclass(frozen=True)
class Webhook:
    """How the webhook server runs: `ssl_context` None means the --webhook-cert files; with a
    CA-issued certificate, `certificate` renews it in `ssl_context`."""

    settings: Settings
    ssl_context: ssl.SSLContext | None
    log: logging.Logger
    metrics: Metrics
    certificate: RenewedCertificate | None = None
    # the mesh config's defaultConfig.discoveryAddress, read at each injection ("": not set)
    discovery_address: Callable[[], str] = lambda: ""
    # the mesh's defaultConfig proxy settings and the ProxyConfigs, read at each injection
    proxy_configs: Callable[[], ProxyConfigs] = ProxyConfigs

    async def serve(self) -> None:
        """Until cancelled. A webhook that cannot start (unreadable certificate, port taken) is reported;
        xDS keeps serving."""
        settings = self.settings
        try:
            listener = gated_listener(
                "webhook",
                settings.webhook_host,
                settings.webhook_port,
                settings.webhook_max_connections,
                metrics=self.metrics,
                log=self.log,
            )
        except OSError as exc:
            self.log.error("event=webhook_failed error=%s", exc)
            return
        try:
            await serve_webhook(
                log=self.log,
                host=settings.webhook_host,
                port=settings.webhook_port,
                cert=settings.webhook_cert,
                key=settings.webhook_key,
                ssl_context=self.ssl_context,
                injection=self._injection() if settings.inject_enabled else None,
                sock=listener.socket,
            )
        except (OSError, ValueError) as exc:
            self.log.error("event=webhook_failed error=%s", exc)
        finally:
            listener.close()

    def _injection(self) -> Callable[[], InjectionConfig]:
        def current() -> InjectionConfig:
            found = injection_config(
                self.settings, discovery_address=self.discovery_address(), proxy_configs=self.proxy_configs()
            )
            assert found is not None  # (injection is on)
            return found

        return current


def _has_files(settings: Settings) -> bool:
    return settings.webhook_cert is not None and settings.webhook_key is not None


def webhook_server(
    *,
    settings: Settings,
    ca_issued: bool,
    authority: Authority | None,
    clock: Clock,
    metrics: Metrics,
    log: logging.Logger,
    discovery_address: Callable[[], str] = lambda: "",
    proxy_configs: Callable[[], ProxyConfigs] = ProxyConfigs,
) -> Webhook | None:
    """The webhook to serve, if any: with the files, or (`ca_issued`: Kubernetes mode with the CA) a
    certificate from `authority`. `discovery_address`: the mesh config's, read at each injection."""
    if _has_files(settings):
        return Webhook(
            settings=settings,
            ssl_context=None,
            log=log,
            metrics=metrics,
            discovery_address=discovery_address,
            proxy_configs=proxy_configs,
        )
    if authority is None or not ca_issued:
        return None
    signer, sans = authority.signer, webhook_sans(settings)
    ttl_s = settings.serving_cert_ttl_s or settings.ca_max_ttl_s
    cert = issue_serving_cert(signer, sans=sans, ttl_s=ttl_s)
    context = webhook_ssl_context(cert=cert)
    certificate = RenewedCertificate(
        server="webhook",
        context=context,
        current=cert,
        issue=lambda: issue_serving_cert(signer, sans=sans, ttl_s=ttl_s),
        clock=clock,
        wall=authority.wall,
        metrics=metrics.ca,
        log=log,
    )
    log.info("event=webhook_cert_issued sans=%s expires=%s", ",".join(sans), cert.not_after.isoformat())
    return Webhook(
        settings=settings,
        ssl_context=context,
        log=log,
        metrics=metrics,
        certificate=certificate,
        discovery_address=discovery_address,
        proxy_configs=proxy_configs,
    )


def webhook_patcher(
    *, settings: Settings, root_pem: str, is_ready: Callable[[], bool], clock: Clock, log: logging.Logger
) -> DutyFactory:
    """The leader keeps the webhook configurations' caBundle on meshd's root (and failurePolicy Fail once ready)."""

    def build(api: ApiClient, is_leader: Callable[[], bool]) -> LeaderDuty:
        patcher = WebhookConfigPatcher(
            api=api,
            root_pem=root_pem,
            mutating=settings.injector_webhook_config or None,
            validating=settings.validator_webhook_config or None,
            is_leader=is_leader,
            is_ready=is_ready,
            log=log,
        )
        return PassOnLeading(target=patcher, clock=clock)

    return build
