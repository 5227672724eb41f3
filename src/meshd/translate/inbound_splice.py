"""virtualInbound in two parts: a skeleton shared by the proxies that serve the same ports the same way,
and the route configurations of the services a proxy serves, set into it.

Every HTTP chain of the skeleton (`virtual_inbound._virtual_inbound`) has a connection manager whose route
configuration holds only its name, `inbound|<target>||`; nothing else in the listener names a service.
So the skeleton is built, checked by the proto guard and serialised once per distinct set of served
ports, modes and policies (the memo shares it across proxies and pushes), and a proxy's listener is
the skeleton parsed back with its routes set in: per proxy, only the route configurations are built in
Python and walked by the guard, the rest is the protobuf runtime's copying. The result is the listener
a direct build gave: the golden files' virtualInbound listeners (bookinfo, capture-peer-auth, vs-match,
sidecar-ingress, wasmplugin-network) did not change when this came in; `tests/unit/test_inbound_splice.py`
tests the sharing, the telemetry and the refusals."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2

from meshd.api.meta import InvalidResource
from meshd.translate.listeners import InboundEntry, inbound_route_config
from meshd.translate.proto_guard import violations
from meshd.translate.spec import Partial, Spec, refusal

LISTENER_TYPE = "type.googleapis.com/envoy.config.listener.v3.Listener"
_HCM = "envoy.filters.network.http_connection_manager"

# A skeleton serialised, or why the proto guard refused it
SkeletonBody = bytes | tuple[InvalidResource, ...]
# Builds (or finds) the skeleton a spec declares
Skeletons = Callable[[Spec], SkeletonBody]


def build_skeleton(spec: Spec) -> SkeletonBody:
    """The skeleton built directly (nothing shared): checked by the proto guard, serialised."""
    listener = spec.build()
    found = violations(listener)
    if found:
        return (refusal("lds", spec.name, found),)
    body: bytes = listener.SerializeToString(deterministic=True)
    return body


def assemble(skeleton: Spec, skeletons: Skeletons, routes: Mapping[str, Sequence[InboundEntry]]) -> bytes | Partial:
    """The listener: the skeleton with, in each connection manager whose route configuration is a name in
    `routes`, that name's services' routes. Refused whole (as a direct build would be) when the skeleton
    or one of the route configurations breaks a rule of Envoy's protos."""
    body = skeletons(skeleton)
    if not isinstance(body, bytes):
        return Partial(None, body)
    if not routes:
        return body
    listener = listener_pb2.Listener.FromString(body)
    found: list[str] = []
    configs: dict[str, route_pb2.RouteConfiguration] = {}  # by name (a port's mTLS and plaintext chains share it)
    for i, chain in enumerate(listener.filter_chains):
        for j, network_filter in enumerate(chain.filters):
            if network_filter.name != _HCM:
                continue
            hcm = hcm_pb2.HttpConnectionManager()
            network_filter.typed_config.Unpack(hcm)
            name = hcm.route_config.name
            served = routes.get(name)
            if served is None or hcm.route_config.virtual_hosts:
                continue
            config = configs.get(name)
            if config is None:
                config = configs[name] = inbound_route_config(name, served)
                where = f"filter_chains[{i}].filters[{j}].typed_config(HttpConnectionManager).route_config"
                found += [f"{where}.{violation}" for violation in violations(config)]
            hcm.route_config.CopyFrom(config)
            network_filter.typed_config.Pack(hcm)
    if found:
        return Partial(None, (refusal("lds", listener.name, found),))
    assembled: bytes = listener.SerializeToString(deterministic=True)
    return assembled
