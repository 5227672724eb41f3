"""ClusterLoadAssignments for EDS clusters: all endpoints of a service port, and per subset the
endpoints whose labels match."""

from __future__ import annotations

from envoy.config.endpoint.v3 import endpoint_components_pb2, endpoint_pb2
from google.protobuf import wrappers_pb2

from meshd.model.services import Endpoint
from meshd.model.world import World
from meshd.translate import naming
from meshd.translate.clusters import socket_address


def _assignment(
    name: str, endpoints: list[Endpoint], *, sidecar_port: int | None
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


def build_load_assignments(
    world: World, *, sidecar_port: int | None
) -> list[endpoint_pb2.ClusterLoadAssignment]:
    out = []
    for service in world.services.values():
        if service.resolution != "EDS":
            continue
        rule = world.destination_rules.get(service.hostname)
        for port in service.ports:
            eps = list(world.endpoints.get((service.hostname, port.number), ()))
            name = naming.outbound_cluster(port=port.number, host=service.hostname)
            out.append(_assignment(name, eps, sidecar_port=sidecar_port))
            for subset in rule.spec.subsets if rule else []:
                name = naming.outbound_cluster(port=port.number, host=service.hostname, subset=subset.name)
                selected = [e for e in eps if e.matches(subset.labels)]
                out.append(_assignment(name, selected, sidecar_port=sidecar_port))
    return out
