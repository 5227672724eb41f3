"""What a port's protocol (Istio's protocol selection, `model.services.protocol_of`) means for the
sidecar's listeners and clusters, as Istio lays it out:

- declared HTTP (`http`, `http2`, `grpc`, `grpc-web`, `h2c`, appProtocol...): the HTTP connection manager
  on every connection, with WebSocket upgrades allowed (Istio's default);
- sniffed (a port whose name and appProtocol say nothing): the `http_inspector` listener filter reads the
  first bytes; HTTP/1.x and HTTP/2 prior knowledge (`h2c`) go through the HTTP connection manager, anything
  else through the TCP proxy. The detection waits `protocolDetectionTimeout` (Istio's default 0s: no
  timeout), then falls back to TCP;
- TCP, TLS, HTTPS, mysql, redis: the TCP proxy; `mongo`: the Mongo proxy filter in front of it (Istio's
  default; its mysql and redis filters are off by default, and so they are here);
- UDP and SCTP: not proxied (iptables captures TCP only); reported.

Upstream, the app is spoken to in its protocol: HTTP/2 (h2c) for HTTP2/gRPC ports, HTTP/1.1 for HTTP,
the downstream's protocol for sniffed ports (`inbound|<port>||` and outbound clusters alike).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from envoy.config.core.v3 import protocol_pb2
from envoy.config.listener.v3 import listener_components_pb2, listener_pb2
from envoy.extensions.filters.listener.http_inspector.v3 import http_inspector_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2
from envoy.extensions.filters.network.mongo_proxy.v3 import mongo_proxy_pb2
from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2
from envoy.type.v3 import range_pb2
from google.protobuf import duration_pb2

from meshd.api.meta import InvalidResource, ResourceKey
from meshd.model.services import UNKNOWN, is_http, is_http2, is_sniffed
from meshd.model.world import World
from meshd.translate.proto import pack

HTTP_INSPECTOR = "envoy.filters.listener.http_inspector"
MONGO_PROXY = "envoy.filters.network.mongo_proxy"
# What http_inspector reports for a plaintext HTTP connection (its `application_protocols`)
SNIFFED_HTTP = ("http/1.0", "http/1.1", "h2c")
HTTP_OPTIONS_KEY = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
UPGRADES = ("websocket",)


def http_inspector() -> listener_components_pb2.ListenerFilter:
    return listener_components_pb2.ListenerFilter(
        name=HTTP_INSPECTOR, typed_config=pack(http_inspector_pb2.HttpInspector())
    )


def any_port(ports: Sequence[int]) -> listener_components_pb2.ListenerFilterChainMatchPredicate:
    ranges = [
        listener_components_pb2.ListenerFilterChainMatchPredicate(
            destination_port_range=range_pb2.Int32Range(start=port, end=port + 1)
        )
        for port in sorted(set(ports))
    ]
    if len(ranges) == 1:
        return ranges[0]
    return listener_components_pb2.ListenerFilterChainMatchPredicate(
        or_match=listener_components_pb2.ListenerFilterChainMatchPredicate.MatchSet(rules=ranges)
    )


def sniff(
    listener: listener_pb2.Listener, *, timeout_s: float, ports: Sequence[int] = (), skip_ports: Sequence[int] = ()
) -> None:
    """Add protocol detection to a listener: http_inspector, waiting at most `timeout_s` (0: no limit) for
    the client's first bytes, then carrying on as TCP (Istio's protocolDetectionTimeout). With `ports`, only
    for connections to those destination ports (as Istio's inbound listener does): a TCP protocol whose
    first bytes could start an HTTP request line must not wait for detection on a port that needs none.
    With `skip_ports`, for every port but those (undeclared ports are sniffed too)."""
    inspector = http_inspector()
    if ports:
        inspector.filter_disabled.not_match.CopyFrom(any_port(ports))
    elif skip_ports:
        inspector.filter_disabled.CopyFrom(any_port(skip_ports))
    listener.listener_filters.append(inspector)
    seconds = int(timeout_s)
    listener.listener_filters_timeout.CopyFrom(
        duration_pb2.Duration(seconds=seconds, nanos=round((timeout_s - seconds) * 1e9))
    )
    listener.continue_on_listener_filters_timeout = True


def match_sniffed_http(chain: listener_components_pb2.FilterChain) -> listener_components_pb2.FilterChain:
    """The chain takes connections http_inspector found to be HTTP."""
    chain.filter_chain_match.application_protocols.extend(SNIFFED_HTTP)
    return chain


def allow_upgrades(hcm: hcm_pb2.HttpConnectionManager) -> None:
    """WebSocket upgrades through the connection manager (Istio allows them on every HTTP port)."""
    for upgrade in UPGRADES:
        hcm.upgrade_configs.append(hcm_pb2.HttpConnectionManager.UpgradeConfig(upgrade_type=upgrade))


def mongo_filter(stat_prefix: str) -> listener_components_pb2.Filter:
    config = mongo_proxy_pb2.MongoProxy(stat_prefix=stat_prefix)
    return listener_components_pb2.Filter(name=MONGO_PROXY, typed_config=pack(config))


def port_protocol(protocols: Iterable[str]) -> str:
    """The protocol of a port several services declare: declared HTTP wins (HTTP/2 over HTTP/1.1),
    then sniffed, then the first other one (TCP if none)."""
    found = list(protocols)
    http = [p for p in found if is_http(p)]
    if http:
        return next((p for p in http if is_http2(p)), http[0])
    if any(is_sniffed(p) for p in found):
        return UNKNOWN
    return found[0] if found else "TCP"


def upstream_http_options(protocol: str) -> http_protocol_options_pb2.HttpProtocolOptions | None:
    """How a cluster speaks HTTP to an upstream of this protocol: HTTP/2 (h2c) for HTTP2/gRPC, the
    downstream's protocol for a sniffed port, HTTP/1.1 (Envoy's default: None) otherwise."""
    options = http_protocol_options_pb2.HttpProtocolOptions
    if is_http2(protocol):
        return options(
            explicit_http_config=options.ExplicitHttpConfig(http2_protocol_options=protocol_pb2.Http2ProtocolOptions())
        )
    if is_sniffed(protocol):
        return options(
            use_downstream_protocol_config=options.UseDownstreamHttpConfig(
                http_protocol_options=protocol_pb2.Http1ProtocolOptions(),
                http2_protocol_options=protocol_pb2.Http2ProtocolOptions(),
            )
        )
    return None


def bound_inbound_errors(world: World, *, only: tuple[str, int] | None = None) -> list[InvalidResource]:
    """Service ports whose endpoints include workloads with a sidecar but no traffic capture, on a port that
    is not declared HTTP: such a sidecar's one inbound port (shared by every service port) speaks HTTP only,
    so TCP there is not served (an unnamed port: its HTTP is). Reported once per Service port.
    `only`: just this (host, port)."""
    errors: list[InvalidResource] = []
    items = world.endpoints.items() if only is None else [(only, world.endpoints.get(only, ()))]
    for (host, number), endpoints in items:
        service = world.services.get(host)
        port = service.port(number) if service is not None else None
        if service is None or port is None or is_http(port.protocol) or service.resolution != "EDS":
            continue
        if any(ep.has_sidecar and not ep.captured for ep in endpoints):
            what = "TCP" if is_sniffed(port.protocol) else port.protocol
            declared = "no protocol declared" if is_sniffed(port.protocol) else port.protocol
            errors.append(
                InvalidResource(
                    ResourceKey("Service", service.namespace, service.name),
                    "spec.ports",
                    f"port {number} ({declared}): its workloads with a sidecar without traffic capture are"
                    f" reached through the sidecar's HTTP-only inbound port: {what} to them is not served",
                    severity="warning",
                )
            )
    return errors
