"""Outbound clusters (one per service port and DestinationRule subset, each with the rule's effective
traffic policy for that port and subset) and inbound clusters."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from functools import partial

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import address_pb2, base_pb2, config_source_pb2
from envoy.config.endpoint.v3 import endpoint_components_pb2, endpoint_pb2
from google.protobuf import duration_pb2

from meshd.api.destinationrule import DestinationRule
from meshd.model.services import Endpoint, MeshService, ServicePort
from meshd.translate import naming
from meshd.translate.client_mtls import ClusterMtls, cluster_mtls, service_identities
from meshd.translate.cluster_policy import apply_policy, inbound_pool
from meshd.translate.headless import pods
from meshd.translate.locality import locality_groups
from meshd.translate.metrics import service_metadata
from meshd.translate.mtls import ISTIO_MUTUAL_MATCH
from meshd.translate.peer_exchange import add_exchange, exchanges_on
from meshd.translate.policy import EffectivePolicy, effective_policy
from meshd.translate.proto import pack
from meshd.translate.protocol import HTTP_OPTIONS_KEY, upstream_http_options
from meshd.translate.proxy_protocol import apply_proxy_protocol
from meshd.translate.scope import Scope
from meshd.translate.spec import Ident, Spec, ident
from meshd.translate.upstream_tls import sds_names, tls_files

CONNECT_TIMEOUT = duration_pb2.Duration(seconds=10)


def ads_config_source() -> config_source_pb2.ConfigSource:
    return config_source_pb2.ConfigSource(
        ads=config_source_pb2.AggregatedConfigSource(), resource_api_version=config_source_pb2.V3
    )


def set_upstream_protocol(cluster: cluster_pb2.Cluster, protocol: str) -> None:
    """The cluster speaks HTTP to its upstream in the port's protocol (h2c for HTTP2/gRPC, the
    downstream's for a sniffed port)."""
    options = upstream_http_options(protocol)
    if options is not None:
        cluster.typed_extension_protocol_options[HTTP_OPTIONS_KEY].CopyFrom(pack(options))


def socket_address(address: str, port: int) -> address_pb2.Address:
    return address_pb2.Address(socket_address=address_pb2.SocketAddress(address=address, port_value=port))


def _outbound(
    service: MeshService, port: ServicePort, subset: str, rule: DestinationRule | None, mtls: ClusterMtls | None
) -> cluster_pb2.Cluster:
    cluster = _plain_outbound(service, port, subset)
    policy = _with_policy(cluster, service, port, subset, rule)
    if mtls is not None:
        mtls.apply(cluster)
        if policy.proxy_protocol is None and exchanges_on(port.protocol):
            # our identity to captured sidecars, in a PROXY header ahead of mTLS (translate/peer_exchange.py)
            add_exchange(cluster, tls=_istio_mutual_socket(cluster, auto=mtls.auto))
    apply_proxy_protocol(cluster, policy.proxy_protocol)
    return cluster


def _istio_mutual_socket(cluster: cluster_pb2.Cluster, *, auto: bool) -> base_pb2.TransportSocket:
    if not auto:
        return cluster.transport_socket
    return next(m.transport_socket for m in cluster.transport_socket_matches if m.name == ISTIO_MUTUAL_MATCH)


def _with_policy(
    cluster: cluster_pb2.Cluster, service: MeshService, port: ServicePort, subset: str, rule: DestinationRule | None
) -> EffectivePolicy:
    policy = effective_policy(rule, port=port.number, subset=subset)
    apply_policy(cluster, policy, service=service, port=port)
    if service.resolution == "NONE":
        original_destination(cluster)
    return policy


def original_destination(cluster: cluster_pb2.Cluster) -> None:
    """ServiceEntry resolution NONE: the connection goes to the address the application dialled (what
    iptables captured), whatever load balancer a rule asks for."""
    cluster.type = cluster_pb2.Cluster.ORIGINAL_DST
    cluster.lb_policy = cluster_pb2.Cluster.CLUSTER_PROVIDED
    cluster.ClearField("eds_cluster_config")
    cluster.ClearField("load_assignment")
    cluster.ClearField("lb_config")  # least-request / round-robin / ring-hash / Maglev settings
    cluster.common_lb_config.ClearField("locality_weighted_lb_config")


def _plain_outbound(service: MeshService, port: ServicePort, subset: str) -> cluster_pb2.Cluster:
    name = naming.outbound_cluster(port=port.number, host=service.hostname, subset=subset)
    cluster = cluster_pb2.Cluster(name=name, connect_timeout=CONNECT_TIMEOUT)
    # the destination_service labels of Istio's metrics (translate/metrics.py)
    cluster.metadata.CopyFrom(service_metadata(host=service.hostname, name=service.name, namespace=service.namespace))
    if service.dns:
        # DNS_ROUND_ROBIN: Envoy's LOGICAL_DNS (connections to the first address the name resolves to)
        logical = service.resolution == "DNS_ROUND_ROBIN"
        cluster.type = cluster_pb2.Cluster.LOGICAL_DNS if logical else cluster_pb2.Cluster.STRICT_DNS
        cluster.dns_lookup_family = cluster_pb2.Cluster.V4_ONLY
        cluster.load_assignment.cluster_name = name
        # DNS endpoints are the service's declared hosts/addresses; resolved by Envoy.
    elif service.resolution == "NONE":
        original_destination(cluster)
    else:
        cluster.type = cluster_pb2.Cluster.EDS
        cluster.eds_cluster_config.eds_config.CopyFrom(ads_config_source())
        cluster.eds_cluster_config.service_name = name
    set_upstream_protocol(cluster, port.protocol)
    return cluster


def _dns_cluster(
    service: MeshService,
    port: ServicePort,
    subset: str,
    endpoints: tuple[Endpoint, ...],
    rule: DestinationRule | None,
    mtls: ClusterMtls | None,
) -> cluster_pb2.Cluster:
    cluster = _plain_outbound(service, port, subset)
    if service.resolution == "DNS_ROUND_ROBIN":
        endpoints = endpoints[:1]  # LOGICAL_DNS takes exactly one name
    pairs = [
        (
            ep,
            endpoint_components_pb2.LbEndpoint(
                endpoint=endpoint_components_pb2.Endpoint(address=socket_address(ep.address, ep.port))
            ),
        )
        for ep in endpoints
    ]
    cluster.load_assignment.endpoints.extend(locality_groups(pairs, None))
    policy = _with_policy(cluster, service, port, subset, rule)
    if mtls is not None:
        mtls.apply(cluster)
    apply_proxy_protocol(cluster, policy.proxy_protocol)
    return cluster


def outbound_cluster_specs(scope: Scope) -> Iterator[Spec]:
    """Every visible service port gets `outbound|port||host`; each subset of the DestinationRule
    that applies in this scope adds `outbound|port|subset|host`. DNS clusters carry their
    endpoints inline."""
    for service, ports in scope.services:
        yield from service_cluster_specs(scope, service, ports)


def service_cluster_specs(scope: Scope, service: MeshService, ports: Sequence[ServicePort]) -> Iterator[Spec]:
    """The outbound clusters of one service, as seen from a scope (resolution NONE: original-destination
    clusters, which only scopes with traffic capture see)."""
    rule = scope.destination_rule(service.hostname)
    subsets = [""] + ([s.name for s in rule.spec.subsets] if rule else [])
    # SANs of Istio mTLS: every workload behind the service (the endpoints of all its ports)
    identities = service_identities(scope, service, ports) if scope.key.sds else ()
    for port in ports:
        dns = scope.world.endpoints.get((service.hostname, port.number), ()) if service.dns else ()
        for subset in subsets:
            name = naming.outbound_cluster(port=port.number, host=service.hostname, subset=subset)
            mtls = None
            if scope.key.sds:  # only proxies with the agent's SDS get Istio mTLS
                policy = effective_policy(rule, port=port.number, subset=subset)
                mtls = cluster_mtls(scope, service, port, subset, policy, identities=identities)
            key = ("cds", service, port, subset, ident(rule), dns, mtls)
            if service.dns:
                yield Spec(name, key, partial(_dns_cluster, service, port, subset, dns, rule, mtls))
            else:
                yield Spec(name, key, partial(_outbound, service, port, subset, rule, mtls))
        for pod, _ in pods(scope.world, service, port.number):  # a headless service's pods, one by one
            name = naming.outbound_cluster(port=port.number, host=pod.hostname)
            mtls = None
            if scope.key.sds:
                policy = effective_policy(rule, port=port.number)
                mtls = cluster_mtls(scope, pod, port, "", policy, identities=identities)
            key = ("cds", pod, port, "", ident(rule), (), mtls)
            yield Spec(name, key, partial(_outbound, pod, port, "", rule, mtls))


def service_secret_names(scope: Scope, service: MeshService, ports: Sequence[ServicePort]) -> frozenset[str]:
    """The SDS resources (credentialName) the outbound clusters of one service ask for."""
    rule = scope.destination_rule(service.hostname)
    if rule is None:
        return frozenset()
    subsets = [""] + [s.name for s in rule.spec.subsets]
    return frozenset(
        name
        for port in ports
        for subset in subsets
        for name in sds_names(effective_policy(rule, subset=subset, port=port.number).tls)
    )


def clusters_opening(
    rule: DestinationRule, service: MeshService, ports: Sequence[ServicePort], files: frozenset[str]
) -> set[str]:
    """Names of a service's outbound clusters whose TLS settings open one of `files`."""
    subsets = [""] + [s.name for s in rule.spec.subsets]
    return {
        naming.outbound_cluster(port=port.number, host=service.hostname, subset=subset)
        for port in ports
        for subset in subsets
        if any(path in files for _, path in tls_files(effective_policy(rule, subset=subset, port=port.number).tls))
    }


def _inbound_cluster(address: str, port: int, protocol: str = "TCP", pool: Ident | None = None) -> cluster_pb2.Cluster:
    name = naming.inbound_cluster(port=port)
    cluster = cluster_pb2.Cluster(
        name=name,
        type=cluster_pb2.Cluster.STATIC,
        connect_timeout=CONNECT_TIMEOUT,
        load_assignment=endpoint_pb2.ClusterLoadAssignment(
            cluster_name=name,
            endpoints=[
                endpoint_components_pb2.LocalityLbEndpoints(
                    lb_endpoints=[
                        endpoint_components_pb2.LbEndpoint(
                            endpoint=endpoint_components_pb2.Endpoint(address=socket_address(address, port))
                        )
                    ]
                )
            ],
        ),
    )
    set_upstream_protocol(cluster, protocol)
    inbound_pool(cluster, pool, port=port, protocol=protocol)
    return cluster


def inbound_cluster_specs(
    *,
    address: str,
    target_ports: Iterable[int],
    protocols: Mapping[int, str] | None = None,
    pool: Ident | None = None,
) -> Iterator[Spec]:
    """`inbound|<port>||`: a static cluster to the local app at <workload address>:<port>, speaking the
    port's protocol (`protocols`: per target port; TCP where not given), with the Sidecar's
    inboundConnectionPool, if any."""
    for port in sorted(set(target_ports)):
        protocol = (protocols or {}).get(port, "TCP")
        yield Spec(
            naming.inbound_cluster(port=port),
            ("cds-in", address, port, protocol, pool),
            partial(_inbound_cluster, address, port, protocol, pool),
        )
