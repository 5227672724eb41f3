"""ClusterLoadAssignments for EDS clusters: all endpoints of a service port, and per subset the
endpoints whose labels match."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from functools import partial

from envoy.config.endpoint.v3 import endpoint_components_pb2, endpoint_pb2
from google.protobuf import wrappers_pb2

from meshd.model.services import Endpoint, MeshService, ServicePort
from meshd.translate import naming
from meshd.translate.clusters import socket_address
from meshd.translate.scope import Scope
from meshd.translate.spec import Spec


def _assignment(
    name: str, endpoints: Sequence[Endpoint], *, sidecar_port: int | None
) -> endpoint_pb2.ClusterLoadAssignment:
    locality = endpoint_components_pb2.LocalityLbEndpoints()
    for ep in endpoints:
        # Without traffic capture, a workload with a sidecar is reached through the sidecar's
        # inbound listener rather than at the app's own port.
        port = sidecar_port if sidecar_port is not None and ep.has_sidecar else ep.port
        lb = endpoint_components_pb2.LbEndpoint(
            endpoint=endpoint_components_pb2.Endpoint(address=socket_address(ep.address, port))
        )
        if ep.weight:
            lb.load_balancing_weight.CopyFrom(wrappers_pb2.UInt32Value(value=ep.weight))
        locality.lb_endpoints.append(lb)
    assignment = endpoint_pb2.ClusterLoadAssignment(cluster_name=name)
    if endpoints:
        assignment.endpoints.append(locality)
    return assignment


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
    for port in ports:
        eps = scope.world.endpoints.get((service.hostname, port.number), ())
        name = naming.outbound_cluster(port=port.number, host=service.hostname)
        build = partial(_assignment, name, eps, sidecar_port=sidecar_port)
        yield Spec(name, ("eds", name, eps, sidecar_port), build)
        for subset in rule.spec.subsets if rule else []:
            name = naming.outbound_cluster(port=port.number, host=service.hostname, subset=subset.name)
            selected = tuple(e for e in eps if e.matches(subset.labels))
            yield Spec(
                name,
                ("eds", name, selected, sidecar_port),
                partial(_assignment, name, selected, sidecar_port=sidecar_port),
            )
