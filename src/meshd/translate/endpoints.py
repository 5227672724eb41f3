"""ClusterLoadAssignments for EDS clusters: all endpoints of a service port, and per subset the
endpoints whose labels match, grouped by locality (and prioritised or weighted by the proxy's
locality where the DestinationRule asks for it: `translate/locality.py`)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from functools import partial

from envoy.config.endpoint.v3 import endpoint_components_pb2, endpoint_pb2
from google.protobuf import wrappers_pb2

from meshd.model.services import Endpoint, MeshService, ServicePort, is_http
from meshd.translate import naming
from meshd.translate.clusters import socket_address
from meshd.translate.headless import pods
from meshd.translate.locality import LocalityPlan, locality_groups, plan_for
from meshd.translate.mtls import tls_mode_metadata
from meshd.translate.peer_exchange import mark_endpoint
from meshd.translate.policy import effective_policy
from meshd.translate.scope import Scope
from meshd.translate.spec import Spec


def _assignment(
    name: str,
    endpoints: Sequence[Endpoint],
    *,
    sidecar_port: int | None,
    plan: LocalityPlan | None = None,
    tls_mode: bool = False,
    identity: tuple[str, str] | None = None,
) -> endpoint_pb2.ClusterLoadAssignment:
    """`identity`: (namespace, cluster id) of the workloads, to put in the metadata of the endpoints with a
    sidecar (a TCP port's: `translate/peer_exchange.py`)."""
    pairs = []
    for ep in endpoints:
        # Without traffic capture, a workload with a sidecar is reached through the sidecar's
        # inbound listener rather than at the app's own port; with capture, at its own port
        # (iptables redirects it to the sidecar's 15006).
        port = sidecar_port if sidecar_port is not None and ep.has_sidecar and not ep.captured else ep.port
        lb = endpoint_components_pb2.LbEndpoint(
            endpoint=endpoint_components_pb2.Endpoint(address=socket_address(ep.address, port))
        )
        if ep.weight:
            lb.load_balancing_weight.CopyFrom(wrappers_pb2.UInt32Value(value=ep.weight))
        if tls_mode and ep.has_sidecar:  # auto mTLS picks the cluster's TLS socket for this endpoint
            lb.metadata.CopyFrom(tls_mode_metadata())
            if identity is not None:
                mark_endpoint(lb.metadata, ep, namespace=identity[0], cluster_id=identity[1])
        pairs.append((ep, lb))
    return endpoint_pb2.ClusterLoadAssignment(cluster_name=name, endpoints=locality_groups(pairs, plan))


def load_assignment_specs(scope: Scope, *, sidecar_port: int | None) -> Iterator[Spec]:
    """A ClusterLoadAssignment per EDS cluster of the scope."""
    for service, ports in scope.services:
        yield from service_assignment_specs(scope, service, ports, sidecar_port=sidecar_port)


def service_assignment_specs(
    scope: Scope, service: MeshService, ports: Sequence[ServicePort], *, sidecar_port: int | None
) -> Iterator[Spec]:
    """For one service: all endpoints of each port, and per subset (of the DestinationRule that
    applies in this scope) the endpoints whose labels match."""
    if service.resolution != "EDS":
        return
    rule = scope.destination_rule(service.hostname)
    proxy_locality, proxy_labels = scope.key.locality, dict(scope.key.failover_labels)
    for port in ports:
        eps = scope.world.endpoints.get((service.hostname, port.number), ())
        for subset in [None, *(rule.spec.subsets if rule else [])]:
            policy = effective_policy(rule, port=port.number, subset=subset.name if subset else "")
            if policy.passthrough:
                continue  # an original-destination cluster has no endpoints
            name = naming.outbound_cluster(
                port=port.number, host=service.hostname, subset=subset.name if subset else ""
            )
            selected = eps if subset is None else tuple(e for e in eps if e.matches(subset.labels))
            plan = plan_for(policy, proxy_locality=proxy_locality, proxy_labels=proxy_labels)
            tls_mode = scope.key.sds  # only proxies that can do mTLS need to tell endpoints apart
            # TCP can carry no identity headers: the endpoint tells it (HTTP ports need none)
            identity = None if is_http(port.protocol) else (service.namespace, scope.cluster_id)
            yield Spec(
                name,
                ("eds", name, selected, sidecar_port, plan, tls_mode, identity),
                partial(
                    _assignment,
                    name,
                    selected,
                    sidecar_port=sidecar_port,
                    plan=plan,
                    tls_mode=tls_mode,
                    identity=identity,
                ),
            )
        if effective_policy(rule, port=port.number).passthrough:
            continue
        for pod, endpoint in pods(scope.world, service, port.number):  # a headless service's pods, one by one
            name = naming.outbound_cluster(port=port.number, host=pod.hostname)
            tls_mode = scope.key.sds
            yield Spec(
                name,
                ("eds", name, (endpoint,), sidecar_port, None, tls_mode),
                partial(_assignment, name, (endpoint,), sidecar_port=sidecar_port, tls_mode=tls_mode),
            )
