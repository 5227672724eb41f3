"""The Gateway API automated deployment leader duty (`kube/gateway_deployer.py`), wired to the store: it plans
from the Gateways and GatewayClasses meshd holds (the last accepted version of each) and is woken by every
store change."""

from __future__ import annotations

import logging
from collections.abc import Callable

from kubernetes_asyncio.client import ApiClient

from meshd.api.gateway_api import CONTROLLER_NAMES, GatewayClass, KubernetesGateway
from meshd.api.meta import KUBERNETES_GATEWAY
from meshd.clock import Clock
from meshd.kube.gateway_deploy import DeployRefusal, GatewayDeployment, managed_value, plan
from meshd.kube.gateway_deployer import GatewayDeployer
from meshd.kube.inject_template import InjectionConfig
from meshd.kube.leading import LeaderDuty
from meshd.model.store import ConfigStore
from meshd.wiring.leading import DutyFactory


def gateway_deployer(
    *,
    store: ConfigStore,
    config: Callable[[], InjectionConfig],
    interval_s: float,
    clock: Clock,
    log: logging.Logger,
) -> DutyFactory:
    """`config`: what the gateway proxies run and dial, read at each pass (the mesh config's discoveryAddress)."""

    def planned() -> tuple[list[GatewayDeployment], list[DeployRefusal]]:
        gateways = [g for g in store.of_kind(KUBERNETES_GATEWAY) if isinstance(g, KubernetesGateway)]
        classes = [c for c in store.of_kind("GatewayClass") if isinstance(c, GatewayClass)]
        return plan(gateways, classes, config=config())

    def build(api: ApiClient, is_leader: Callable[[], bool]) -> LeaderDuty:
        deployer = GatewayDeployer(
            api=api,
            plan=planned,
            managed_values=tuple(managed_value(c) for c in CONTROLLER_NAMES),
            is_leader=is_leader,
            clock=clock,
            log=log,
            interval_s=interval_s,
        )
        store.subscribe(deployer.trigger)
        return deployer

    return build
