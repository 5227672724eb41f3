"""What a proxy group's own layer (its listeners and inbound clusters) is built from: the key of the
generator's `proxies` cache, computed from the generation's derived values (`Queries`)."""

from __future__ import annotations

from typing import NamedTuple

from meshd.generate.queries import Queries
from meshd.translate.authz.inbound import InboundAuthz
from meshd.translate.jwt_authn import JwtProviders
from meshd.translate.listener_plan import ListenerPlan
from meshd.translate.listeners import InboundEntry
from meshd.translate.peer_auth import InboundMtls
from meshd.translate.proxy import Proxy
from meshd.translate.scope import ScopeKey
from meshd.translate.sidecar_ingress import SidecarInbound
from meshd.translate.telemetry.resolve import WorkloadTelemetry


class OwnInputs(NamedTuple):
    proxy: tuple[str, bool, bool]  # the proxy's fields the build reads besides its address (own_proxy_fields)
    plan: ListenerPlan
    served: tuple[InboundEntry, ...]
    modes: InboundMtls
    jwt: JwtProviders
    outbound_mode: str | None  # captured proxies only
    authz: InboundAuthz
    inbound: SidecarInbound
    telemetry: WorkloadTelemetry


def own_proxy_fields(proxy: Proxy) -> tuple[str, bool, bool]:
    return (proxy.namespace, proxy.sds, proxy.capture)


def own_inputs(queries: Queries, proxy: Proxy, key: ScopeKey) -> OwnInputs:
    return OwnInputs(
        proxy=own_proxy_fields(proxy),
        plan=queries.plan(key),
        served=queries.served(proxy.ip),
        modes=queries.inbound_mtls(proxy.namespace, proxy.ip),
        jwt=queries.jwt_providers(proxy.namespace, proxy.ip),
        outbound_mode=queries.outbound_mode(key) if proxy.capture else None,
        authz=queries.authorization(proxy.namespace, proxy.ip),
        inbound=queries.sidecar_inbound(key),
        telemetry=queries.workload_telemetry(proxy.namespace, proxy.ip),
    )
