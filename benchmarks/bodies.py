"""Decoding one xDS resource body once: its name and what it points at (EDS service names of a
cluster, RDS names of a listener's HTTP connection managers, virtual hosts of a route configuration,
addresses of a load assignment)."""

from __future__ import annotations

from dataclasses import dataclass

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2

from benchmarks.wire import T_CDS, T_EDS, T_LDS

ABSENT = b""  # a held name with no body: delta, a subscribed name the server says does not exist
_HCM = "type.googleapis.com/" + hcm_pb2.HttpConnectionManager.DESCRIPTOR.full_name


@dataclass(frozen=True, slots=True)
class BodyInfo:
    name: str
    refs: str  # what expectations match on: "\n"-framed route vhost names, " "-framed endpoint addresses
    wants: tuple[str, ...]  # EDS service names (cluster) or RDS names (listener) it references


def decode_body(ti: int, body: bytes) -> BodyInfo:
    if ti == T_CDS:
        c = cluster_pb2.Cluster.FromString(body)
        eds = c.WhichOneof("cluster_discovery_type") == "type" and c.type == cluster_pb2.Cluster.EDS
        return BodyInfo(c.name, c.name, (c.eds_cluster_config.service_name or c.name,) if eds else ())
    if ti == T_EDS:
        a = endpoint_pb2.ClusterLoadAssignment.FromString(body)
        addrs = [lb.endpoint.address.socket_address.address for loc in a.endpoints for lb in loc.lb_endpoints]
        return BodyInfo(a.cluster_name, " " + " ".join(addrs) + " ", ())
    if ti == T_LDS:
        listener = listener_pb2.Listener.FromString(body)
        chains = [*listener.filter_chains]
        if listener.HasField("default_filter_chain"):
            chains.append(listener.default_filter_chain)
        rds = []
        for chain in chains:
            for f in chain.filters:
                if f.typed_config.type_url == _HCM:
                    hcm = hcm_pb2.HttpConnectionManager.FromString(f.typed_config.value)
                    if hcm.HasField("rds"):
                        rds.append(hcm.rds.route_config_name)
        return BodyInfo(listener.name, listener.name, tuple(rds))
    r = route_pb2.RouteConfiguration.FromString(body)
    return BodyInfo(r.name, "\n" + "\n".join(vh.name for vh in r.virtual_hosts) + "\n", ())
