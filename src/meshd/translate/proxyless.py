"""Proxyless gRPC clients: applications whose gRPC library is itself the xDS client (grpcio, grpc-go,
grpc-java with `GRPC_XDS_BOOTSTRAP` and a target `xds:///<host>:<port>`), as Istio serves them.

Istio recognises them by node metadata `GENERATOR: grpc` (the bootstrap its agent writes for them; node
id `sidecar~<ip>~<pod>.<ns>~<ns>.svc.<domain>`). Such a client asks by name, over SotW ADS, for:
- the Listener `<host>:<port>` it dials: an `api_listener` holding an HTTP connection manager (RDS
  `<host>:<port>`, HTTP filters fault then router, the only ones gRPC runs here). Served for the
  service's FQDN and its `<name>.<namespace>[.svc]` forms (and the short name from its own namespace);
- the RouteConfiguration: the routes a sidecar of the same scope gets for that service and port (weights,
  header and path matches, retries, fault injection), with what gRPC reads instead of Envoy's fields:
  the route timeout becomes `max_stream_duration` (gRPC ignores `timeout`), and the CORS per-route
  config, which gRPC would refuse (no such filter), is left out;
- Clusters `outbound|<port>|<subset>|<host>`: EDS over ADS, ROUND_ROBIN (RING_HASH for a
  DestinationRule consistentHash), outlier detection and the maximum requests of its DestinationRule;
- ClusterLoadAssignments: the same ones sidecars get (localities with their weights; gRPC ignores a
  locality without one).

What gRPC cannot be given is left out: services Envoy resolves by DNS and ORIGINAL_DST (PASSTHROUGH)
clusters, which gRPC refuses; Istio mTLS (the client has no SDS; it reaches servers whose sidecars
admit plaintext).
"""

from __future__ import annotations

from collections.abc import Iterator
from functools import partial

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.listener.v3 import api_listener_pb2, listener_pb2
from envoy.config.route.v3 import route_components_pb2, route_pb2
from envoy.extensions.filters.http.fault.v3 import fault_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2

from meshd.model.services import MeshService, ServicePort
from meshd.translate import naming
from meshd.translate.cluster_policy import outlier_detection
from meshd.translate.clusters import CONNECT_TIMEOUT, ads_config_source
from meshd.translate.http_filters import CORS, FAULT, router
from meshd.translate.http_match import MatchContext
from meshd.translate.policy import effective_policy
from meshd.translate.proto import pack
from meshd.translate.routes import host_routes
from meshd.translate.scope import Scope
from meshd.translate.spec import Spec, ident


def listener_names(service: MeshService, port: int, *, proxy_namespace: str) -> list[str]:
    """The names a client may dial the service port by (`xds:///<name>:<port>`)."""
    names = [service.hostname]
    suffix = f".{service.namespace}.svc."
    if suffix in service.hostname:
        short = service.hostname.split(".", 1)[0]
        names += [f"{short}.{service.namespace}", f"{short}.{service.namespace}.svc"]
        if proxy_namespace == service.namespace:
            names.append(short)
    return [f"{name}:{port}" for name in names]


def route_name(service: MeshService, port: int) -> str:
    return f"{service.hostname}:{port}"


def _api_listener(name: str, routes: str) -> listener_pb2.Listener:
    hcm = hcm_pb2.HttpConnectionManager(
        stat_prefix=name,
        rds=hcm_pb2.Rds(config_source=ads_config_source(), route_config_name=routes),
        http_filters=[
            hcm_pb2.HttpFilter(name=FAULT, typed_config=pack(fault_pb2.HTTPFault())),
            router(),
        ],
    )
    return listener_pb2.Listener(name=name, api_listener=api_listener_pb2.ApiListener(api_listener=pack(hcm)))


def _for_grpc(route: route_components_pb2.Route) -> route_components_pb2.Route:
    """A sidecar's route as gRPC reads it."""
    if CORS in route.typed_per_filter_config:
        del route.typed_per_filter_config[CORS]
    if route.HasField("route"):
        action = route.route
        if action.HasField("timeout") and (action.timeout.seconds or action.timeout.nanos):
            action.max_stream_duration.max_stream_duration.CopyFrom(action.timeout)
    return route


def _route_configuration(scope: Scope, service: MeshService, port: int) -> route_pb2.RouteConfiguration:
    match = MatchContext(port=port, namespace=scope.namespace, source_matches=scope.source_matches)
    routes, _ = host_routes(  # rejections are reported once per World (routes.validate_host_routes)
        scope.world, service, match, scope.virtual_services(service.hostname), scope.destination_rule
    )
    vhost = route_components_pb2.VirtualHost(
        name=f"{service.hostname}:{port}", domains=["*"], routes=[_for_grpc(r) for r in routes]
    )
    return route_pb2.RouteConfiguration(name=route_name(service, port), virtual_hosts=[vhost])


def _cluster(scope: Scope, service: MeshService, port: ServicePort, subset: str) -> cluster_pb2.Cluster:
    name = naming.outbound_cluster(port=port.number, host=service.hostname, subset=subset)
    cluster = cluster_pb2.Cluster(name=name, type=cluster_pb2.Cluster.EDS, connect_timeout=CONNECT_TIMEOUT)
    cluster.eds_cluster_config.eds_config.CopyFrom(ads_config_source())
    cluster.eds_cluster_config.service_name = name
    policy = effective_policy(scope.destination_rule(service.hostname), port=port.number, subset=subset)
    lb = policy.load_balancer
    cluster.lb_policy = cluster_pb2.Cluster.ROUND_ROBIN
    if lb is not None and lb.consistent_hash is not None:
        cluster.lb_policy = cluster_pb2.Cluster.RING_HASH
    if policy.outlier_detection is not None:
        cluster.outlier_detection.CopyFrom(outlier_detection(policy.outlier_detection))
    pool = policy.connection_pool
    if pool is not None and pool.http is not None and pool.http.http2_max_requests:
        thresholds = cluster.circuit_breakers.thresholds.add()
        thresholds.max_requests.value = pool.http.http2_max_requests
    return cluster


def servable(scope: Scope, service: MeshService, port: ServicePort) -> bool:
    """gRPC takes EDS clusters only: not services Envoy resolves by DNS, nor PASSTHROUGH ones."""
    if service.resolution != "EDS":
        return False
    return not effective_policy(scope.destination_rule(service.hostname), port=port.number).passthrough


def proxyless_specs(scope: Scope) -> Iterator[Spec]:
    """Listeners, route configurations and clusters for the proxyless clients of a scope."""
    for service, ports in scope.services:
        rule = scope.destination_rule(service.hostname)
        subsets = [""] + ([s.name for s in rule.spec.subsets] if rule else [])
        for port in ports:
            if not servable(scope, service, port):
                continue
            routes = route_name(service, port.number)
            for name in listener_names(service, port.number, proxy_namespace=scope.namespace):
                yield Spec(name, ("grpc-lds", name, routes), partial(_api_listener, name, routes))
            yield Spec(
                routes,
                ("grpc-rds", service, port.number, scope.namespace),
                partial(_route_configuration, scope, service, port.number),
            )
            for subset in subsets:
                name = naming.outbound_cluster(port=port.number, host=service.hostname, subset=subset)
                yield Spec(
                    name,
                    ("grpc-cds", service, port, subset, ident(rule)),
                    partial(_cluster, scope, service, port, subset),
                )
