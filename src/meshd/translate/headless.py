"""Headless Kubernetes Services (clusterIP None), as clients of a StatefulSet use them: besides the
service's own name (load balanced over its pods like any service), each pod is reached on its own, by
the hostname its EndpointSlice gives it (`<pod>.<service>.<ns>.svc.<domain>`, StatefulSet pods) and by
its address.

Each such pod gets, per service port, a cluster `outbound|<port>||<pod>.<service host>` holding only
that pod (EDS; the service's DestinationRule and Istio mTLS apply as to the service's own cluster), and
in the port's route table a virtual host whose domains are the pod's names and address, routing to it.
(Istio sends captured traffic to such a pod to its original destination; naming the pod's cluster works
for proxies with and without capture alike.)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

from envoy.config.route.v3 import route_components_pb2

from meshd.model.services import Endpoint, MeshService
from meshd.model.world import World
from meshd.translate import naming
from meshd.translate.http_route import destination_action, set_timeout
from meshd.translate.retries import default_retry_policy


def pods(world: World, service: MeshService, port: int) -> list[tuple[MeshService, Endpoint]]:
    """The pods of a headless service port reachable on their own: (the pod as a service, its endpoint)."""
    if not service.headless:
        return []
    out = []
    for endpoint in world.endpoints.get((service.hostname, port), ()):
        if endpoint.hostname:
            host = f"{endpoint.hostname}.{service.hostname}"
            out.append((dataclasses.replace(service, hostname=host, headless=False), endpoint))
    return out


def pod_domains(pod: MeshService, endpoint: Endpoint, *, port: int) -> list[str]:
    names = [pod.hostname, endpoint.address]
    suffix = f".{pod.namespace}.svc."
    if suffix in pod.hostname:
        short = pod.hostname.split(suffix, 1)[0]  # <pod>.<service>
        names += [f"{short}.{pod.namespace}", f"{short}.{pod.namespace}.svc"]
    return [d for name in names for d in (name, f"{name}:{port}")]


def pod_virtual_hosts(world: World, service: MeshService, port: int) -> Iterator[route_components_pb2.VirtualHost]:
    """Per pod of a headless service port: a virtual host to its own cluster."""
    for pod, endpoint in pods(world, service, port):
        action = destination_action(naming.outbound_cluster(port=port, host=pod.hostname))
        set_timeout(action, None)
        action.retry_policy.CopyFrom(default_retry_policy())
        yield route_components_pb2.VirtualHost(
            name=f"{pod.hostname}:{port}",
            domains=pod_domains(pod, endpoint, port=port),
            routes=[
                route_components_pb2.Route(
                    name="default", match=route_components_pb2.RouteMatch(prefix="/"), route=action
                )
            ],
        )
