"""Outbound clusters (one per service port and DestinationRule subset) and inbound clusters."""

from __future__ import annotations

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import address_pb2, config_source_pb2, protocol_pb2
from envoy.config.endpoint.v3 import endpoint_components_pb2, endpoint_pb2
from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2
from google.protobuf import any_pb2, duration_pb2

from meshd.model.services import MeshService, ServicePort
from meshd.model.world import World
from meshd.translate import naming

CONNECT_TIMEOUT = duration_pb2.Duration(seconds=10)
_HTTP_OPTIONS_KEY = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"


def ads_config_source() -> config_source_pb2.ConfigSource:
    return config_source_pb2.ConfigSource(
        ads=config_source_pb2.AggregatedConfigSource(), resource_api_version=config_source_pb2.V3
    )


def _h2_options() -> any_pb2.Any:
    options = http_protocol_options_pb2.HttpProtocolOptions(
        explicit_http_config=http_protocol_options_pb2.HttpProtocolOptions.ExplicitHttpConfig(
            http2_protocol_options=protocol_pb2.Http2ProtocolOptions()
        )
    )
    packed = any_pb2.Any()
    packed.Pack(options)
    return packed


def socket_address(address: str, port: int) -> address_pb2.Address:
    return address_pb2.Address(socket_address=address_pb2.SocketAddress(address=address, port_value=port))


def _outbound(service: MeshService, port: ServicePort, subset: str) -> cluster_pb2.Cluster:
    name = naming.outbound_cluster(port=port.number, host=service.hostname, subset=subset)
    cluster = cluster_pb2.Cluster(
        name=name, connect_timeout=CONNECT_TIMEOUT, lb_policy=cluster_pb2.Cluster.ROUND_ROBIN
    )
    if service.resolution == "DNS":
        cluster.type = cluster_pb2.Cluster.STRICT_DNS
        cluster.dns_lookup_family = cluster_pb2.Cluster.V4_ONLY
        cluster.load_assignment.cluster_name = name
        # DNS endpoints are the service's declared hosts/addresses; resolved by Envoy.
    else:
        cluster.type = cluster_pb2.Cluster.EDS
        cluster.eds_cluster_config.eds_config.CopyFrom(ads_config_source())
        cluster.eds_cluster_config.service_name = name
    if port.protocol in ("HTTP2", "GRPC"):
        cluster.typed_extension_protocol_options[_HTTP_OPTIONS_KEY].CopyFrom(_h2_options())
    return cluster


def build_outbound_clusters(world: World) -> list[cluster_pb2.Cluster]:
    """Every service port gets `outbound|port||host`; each DestinationRule subset adds
    `outbound|port|subset|host`. DNS clusters carry their endpoints inline."""
    clusters: list[cluster_pb2.Cluster] = []
    for service in world.services.values():
        if service.resolution == "NONE":
            continue
        rule = world.destination_rules.get(service.hostname)
        subsets = [""] + ([s.name for s in rule.spec.subsets] if rule else [])
        for port in service.ports:
            for subset in subsets:
                cluster = _outbound(service, port, subset)
                if service.resolution == "DNS":
                    eps = world.endpoints.get((service.hostname, port.number), ())
                    locality = cluster.load_assignment.endpoints.add()
                    for ep in eps:
                        locality.lb_endpoints.append(
                            endpoint_components_pb2.LbEndpoint(
                                endpoint=endpoint_components_pb2.Endpoint(
                                    address=socket_address(ep.address, ep.port)
                                )
                            )
                        )
                clusters.append(cluster)
    return clusters


def build_inbound_clusters(*, address: str, target_ports: list[int]) -> list[cluster_pb2.Cluster]:
    """`inbound|<port>||`: a static cluster to the local app at <workload address>:<port>."""
    out = []
    for port in sorted(set(target_ports)):
        name = naming.inbound_cluster(port=port)
        out.append(
            cluster_pb2.Cluster(
                name=name,
                type=cluster_pb2.Cluster.STATIC,
                connect_timeout=CONNECT_TIMEOUT,
                load_assignment=endpoint_pb2.ClusterLoadAssignment(
                    cluster_name=name,
                    endpoints=[
                        endpoint_components_pb2.LocalityLbEndpoints(
                            lb_endpoints=[
                                endpoint_components_pb2.LbEndpoint(
                                    endpoint=endpoint_components_pb2.Endpoint(
                                        address=socket_address(address, port)
                                    )
                                )
                            ]
                        )
                    ],
                ),
            )
        )
    return out
