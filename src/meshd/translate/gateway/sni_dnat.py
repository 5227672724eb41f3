"""AUTO_PASSTHROUGH servers (Istio's multi-network east-west gateway): the client's mTLS passes through
untouched and the SNI it sends, `outbound_.<port>_.<subset>_.<host>`, names the destination. Each such
destination (every EDS service port the server's hosts cover, and each subset of its DestinationRule)
gets a filter chain for that SNI and a cluster of that very name (Istio's SNI-DNAT clusters): plain
TCP towards the endpoints (the TLS is the client's), the rule's other policies applied, endpoints as
for `outbound|<port>|<subset>|<host>`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from functools import partial

from envoy.config.cluster.v3 import cluster_pb2

from meshd.model.services import MeshService, ServicePort
from meshd.translate.cluster_policy import apply_policy
from meshd.translate.clusters import CONNECT_TIMEOUT, ads_config_source
from meshd.translate.endpoints import service_assignment_specs
from meshd.translate.gateway.hosts import covers
from meshd.translate.mtls import sni
from meshd.translate.naming import outbound_cluster
from meshd.translate.policy import effective_policy
from meshd.translate.scope import Scope
from meshd.translate.spec import Spec, ident

SniTarget = tuple[MeshService, ServicePort, str]  # (service, port, subset)


def sni_targets(scope: Scope, hosts: Sequence[str]) -> list[tuple[str, SniTarget]]:
    """(SNI, destination) for every EDS service port the hosts cover and each subset of its rule."""
    out = []
    for service, ports in scope.services:
        if service.resolution != "EDS" or not any(covers(h, service.hostname) for h in hosts):
            continue
        rule = scope.destination_rule(service.hostname)
        subsets = ["", *(s.name for s in rule.spec.subsets)] if rule is not None else [""]
        for port in ports:
            for subset in subsets:
                out.append((sni(port=port.number, subset=subset, host=service.hostname), (service, port, subset)))
    return out


def _cluster(
    name: str, service: MeshService, port: ServicePort, subset: str, scope_rule: object
) -> cluster_pb2.Cluster:
    cluster = cluster_pb2.Cluster(name=name, type=cluster_pb2.Cluster.EDS, connect_timeout=CONNECT_TIMEOUT)
    cluster.eds_cluster_config.eds_config.CopyFrom(ads_config_source())
    cluster.eds_cluster_config.service_name = name
    policy = effective_policy(scope_rule, port=port.number, subset=subset)  # type: ignore[arg-type]
    # the bytes are the client's TLS: the cluster neither originates TLS nor speaks HTTP
    apply_policy(
        cluster, dataclasses.replace(policy, tls=None), service=service, port=dataclasses.replace(port, protocol="TCP")
    )
    return cluster


def sni_specs(scope: Scope, targets: Sequence[SniTarget], *, sidecar_port: int | None) -> Iterator[Spec]:
    """The SNI-named clusters and their ClusterLoadAssignments (the outbound ones, renamed)."""
    for service, port, subset in targets:
        name = sni(port=port.number, subset=subset, host=service.hostname)
        rule = scope.destination_rule(service.hostname)
        yield Spec(
            name, ("sni-cds", name, service, port, ident(rule)), partial(_cluster, name, service, port, subset, rule)
        )
        outbound = outbound_cluster(port=port.number, host=service.hostname, subset=subset)
        for spec in service_assignment_specs(scope, service, (port,), sidecar_port=sidecar_port):
            if spec.name == outbound:
                yield Spec(name, ("sni-eds", name, spec.key), partial(_renamed, spec, name))


def _renamed(spec: Spec, name: str) -> object:
    assignment = spec.build()
    assignment.cluster_name = name
    return assignment
