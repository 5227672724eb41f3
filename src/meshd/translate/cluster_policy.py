"""An effective DestinationRule policy applied to an outbound Envoy Cluster, as Istio maps it:
load balancer (simple, consistent hash, warmup), connection pool (circuit breakers, connect timeout,
TCP keepalive, HTTP protocol options), outlier detection, locality-weighted balancing and TLS.

Every outbound cluster gets Istio's defaults even without a rule: LEAST_REQUEST balancing and
circuit-breaker thresholds at the uint32 maximum (Envoy's own defaults, e.g. 3 parallel retries,
surprise people)."""

from __future__ import annotations

from typing import TypeAlias

from envoy.config.cluster.v3 import circuit_breaker_pb2, cluster_pb2, outlier_detection_pb2
from envoy.config.core.v3 import base_pb2, protocol_pb2
from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2
from envoy.type.v3 import percent_pb2
from google.protobuf import wrappers_pb2

from meshd.api.destinationrule import ConnectionPoolSettings, LoadBalancerSettings, OutlierDetection
from meshd.api.values import parse_duration
from meshd.model.services import MeshService, ServicePort, routes_http
from meshd.translate.policy import EffectivePolicy
from meshd.translate.proto import duration, pack
from meshd.translate.upstream_tls import apply_upstream_tls

UINT32_MAX = 4_294_967_295
DEFAULT_MIN_RING_SIZE = 1024  # Envoy's default, which Istio writes out for the deprecated field
HTTP_OPTIONS_KEY = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
_AGGRESSION_RUNTIME_KEY = "upstream.slow_start.aggression"
_Cluster: TypeAlias = cluster_pb2.Cluster
_HttpOptions: TypeAlias = http_protocol_options_pb2.HttpProtocolOptions


def _u32(value: int) -> wrappers_pb2.UInt32Value:
    return wrappers_pb2.UInt32Value(value=value)


def default_thresholds() -> circuit_breaker_pb2.CircuitBreakers.Thresholds:
    return circuit_breaker_pb2.CircuitBreakers.Thresholds(
        max_connections=_u32(UINT32_MAX),
        max_pending_requests=_u32(UINT32_MAX),
        max_requests=_u32(UINT32_MAX),
        max_retries=_u32(UINT32_MAX),
        track_remaining=True,
    )


def _slow_start(lb: LoadBalancerSettings) -> cluster_pb2.Cluster.SlowStartConfig | None:
    if lb.warmup_duration_secs is not None:
        return _Cluster.SlowStartConfig(slow_start_window=duration(lb.warmup_duration_secs))
    if lb.warmup is not None:
        config = _Cluster.SlowStartConfig(slow_start_window=duration(lb.warmup.duration))
        if lb.warmup.aggression is not None:
            config.aggression.CopyFrom(
                base_pb2.RuntimeDouble(default_value=lb.warmup.aggression, runtime_key=_AGGRESSION_RUNTIME_KEY)
            )
        if lb.warmup.minimum_percent is not None:
            config.min_weight_percent.CopyFrom(percent_pb2.Percent(value=lb.warmup.minimum_percent))
        return config
    return None


def _apply_load_balancer(cluster: _Cluster, lb: LoadBalancerSettings | None) -> None:
    chash = lb.consistent_hash if lb is not None else None
    if chash is not None:
        if chash.maglev is not None:
            cluster.lb_policy = _Cluster.MAGLEV
            if chash.maglev.table_size:
                cluster.maglev_lb_config.table_size.value = chash.maglev.table_size
        else:
            size = chash.ring_hash.minimum_ring_size if chash.ring_hash is not None else chash.minimum_ring_size
            cluster.lb_policy = _Cluster.RING_HASH
            cluster.ring_hash_lb_config.minimum_ring_size.value = size or DEFAULT_MIN_RING_SIZE
        return
    simple = (lb.simple if lb is not None else None) or "UNSPECIFIED"
    if simple == "PASSTHROUGH":
        # As Istio: an original-destination cluster (the address the client connected to).
        cluster.type = _Cluster.ORIGINAL_DST
        cluster.lb_policy = _Cluster.CLUSTER_PROVIDED
        cluster.ClearField("eds_cluster_config")
        cluster.ClearField("load_assignment")
        return
    if simple == "RANDOM":
        cluster.lb_policy = _Cluster.RANDOM
        return
    slow_start = _slow_start(lb) if lb is not None else None
    if simple == "ROUND_ROBIN":
        cluster.lb_policy = _Cluster.ROUND_ROBIN
        if slow_start is not None:
            cluster.round_robin_lb_config.slow_start_config.CopyFrom(slow_start)
        return
    # LEAST_REQUEST, the deprecated LEAST_CONN, and UNSPECIFIED (Istio's default is LEAST_REQUEST).
    cluster.lb_policy = _Cluster.LEAST_REQUEST
    if slow_start is not None:
        cluster.least_request_lb_config.slow_start_config.CopyFrom(slow_start)


def _http_options(cluster: _Cluster) -> _HttpOptions:
    options = _HttpOptions()
    packed = cluster.typed_extension_protocol_options.get(HTTP_OPTIONS_KEY)
    if packed is not None:
        packed.Unpack(options)
    else:
        options.explicit_http_config.http_protocol_options.SetInParent()
    return options


def _store_http_options(cluster: _Cluster, options: _HttpOptions) -> None:
    cluster.typed_extension_protocol_options[HTTP_OPTIONS_KEY].CopyFrom(pack(options))


def _apply_connection_pool(cluster: _Cluster, pool: ConnectionPoolSettings | None, port: ServicePort) -> None:
    thresholds = cluster.circuit_breakers.thresholds.add()  # (append would copy it)
    thresholds.CopyFrom(default_thresholds())
    if pool is None:
        return
    http, tcp = pool.http, pool.tcp
    if tcp is not None:
        if tcp.connect_timeout is not None:
            cluster.connect_timeout.CopyFrom(duration(tcp.connect_timeout))
        if tcp.max_connections:
            thresholds.max_connections.value = tcp.max_connections
        if tcp.tcp_keepalive is not None:
            keepalive = cluster.upstream_connection_options.tcp_keepalive
            keepalive.SetInParent()  # SO_KEEPALIVE with the OS defaults for what is not set
            if tcp.tcp_keepalive.probes:
                keepalive.keepalive_probes.value = tcp.tcp_keepalive.probes
            if tcp.tcp_keepalive.time is not None:
                keepalive.keepalive_time.value = int(parse_duration(tcp.tcp_keepalive.time))
            if tcp.tcp_keepalive.interval is not None:
                keepalive.keepalive_interval.value = int(parse_duration(tcp.tcp_keepalive.interval))
    if http is not None:
        if http.http2_max_requests:
            thresholds.max_requests.value = http.http2_max_requests
        if http.http1_max_pending_requests:
            thresholds.max_pending_requests.value = http.http1_max_pending_requests
        if http.max_retries:
            thresholds.max_retries.value = http.max_retries
    if routes_http(port.protocol):
        _apply_http_protocol(cluster, pool, port)


def _apply_http_protocol(cluster: _Cluster, pool: ConnectionPoolSettings, port: ServicePort) -> None:
    http, tcp = pool.http, pool.tcp
    idle = http.idle_timeout if http is not None else None
    max_duration = tcp.max_connection_duration if tcp is not None else None
    per_connection = http.max_requests_per_connection if http is not None else 0
    streams = http.max_concurrent_streams if http is not None else 0
    upgrade = http is not None and http.h2_upgrade_policy == "UPGRADE" and port.protocol == "HTTP"
    client_protocol = http is not None and http.use_client_protocol
    if not (idle or max_duration or per_connection or streams or upgrade or client_protocol):
        return
    options = _http_options(cluster)
    common = options.common_http_protocol_options
    if idle is not None:
        common.idle_timeout.CopyFrom(duration(idle))
    if max_duration is not None:
        common.max_connection_duration.CopyFrom(duration(max_duration))
    if per_connection:
        common.max_requests_per_connection.value = per_connection
    if upgrade:
        options.explicit_http_config.http2_protocol_options.SetInParent()
    if client_protocol:
        # The upstream speaks whatever the client spoke (HTTP/1.1 or HTTP/2).
        options.use_downstream_protocol_config.http_protocol_options.SetInParent()
        options.use_downstream_protocol_config.http2_protocol_options.SetInParent()
    if streams:
        h2: protocol_pb2.Http2ProtocolOptions | None = None
        if options.HasField("explicit_http_config") and options.explicit_http_config.HasField("http2_protocol_options"):
            h2 = options.explicit_http_config.http2_protocol_options
        elif options.HasField("use_downstream_protocol_config"):
            h2 = options.use_downstream_protocol_config.http2_protocol_options
        if h2 is not None:  # only HTTP/2 has streams to limit
            h2.max_concurrent_streams.value = streams
    _store_http_options(cluster, options)


def outlier_detection(outlier: OutlierDetection) -> outlier_detection_pb2.OutlierDetection:
    out = outlier_detection_pb2.OutlierDetection(enforcing_success_rate=_u32(0))  # success-rate ejection off
    if outlier.consecutive_errors:
        # Deprecated field: counts gateway errors (502, 503, 504) only.
        out.consecutive_gateway_failure.value = outlier.consecutive_errors
        out.enforcing_consecutive_gateway_failure.value = 100
        out.enforcing_consecutive_5xx.value = 0
    if outlier.consecutive_5xx_errors is not None:
        out.consecutive_5xx.value = outlier.consecutive_5xx_errors
        out.enforcing_consecutive_5xx.value = 100 if outlier.consecutive_5xx_errors > 0 else 0
    if outlier.consecutive_gateway_errors is not None:
        out.consecutive_gateway_failure.value = outlier.consecutive_gateway_errors
        out.enforcing_consecutive_gateway_failure.value = 100 if outlier.consecutive_gateway_errors > 0 else 0
    if outlier.interval is not None:
        out.interval.CopyFrom(duration(outlier.interval))
    if outlier.base_ejection_time is not None:
        out.base_ejection_time.CopyFrom(duration(outlier.base_ejection_time))
    if outlier.max_ejection_percent > 0:
        out.max_ejection_percent.value = outlier.max_ejection_percent
    if outlier.split_external_local_origin_errors:
        out.split_external_local_origin_errors = True
        if outlier.consecutive_local_origin_failures:
            out.consecutive_local_origin_failure.value = outlier.consecutive_local_origin_failures
            out.enforcing_consecutive_local_origin_failure.value = 100
        out.enforcing_local_origin_success_rate.value = 0
    return out


def apply_policy(cluster: _Cluster, policy: EffectivePolicy, *, service: MeshService, port: ServicePort) -> None:
    """Apply `policy` (possibly empty: Istio's defaults) to an outbound cluster in place. TLS
    credentials (credentialName) are SDS references resolved in the proxy's namespace."""
    _apply_load_balancer(cluster, policy.load_balancer)
    _apply_connection_pool(cluster, policy.connection_pool, port)
    outlier = policy.outlier_detection
    if outlier is not None:
        cluster.outlier_detection.CopyFrom(outlier_detection(outlier))
        # Istio turns Envoy's panic threshold (50% by default) into minHealthPercent, 0 when unset:
        # with a handful of pods, panic mode would send traffic to the ejected ones.
        cluster.common_lb_config.healthy_panic_threshold.CopyFrom(
            percent_pb2.Percent(value=float(outlier.min_health_percent))
        )
    setting = policy.locality_setting()
    if not policy.passthrough and setting is not None and (setting.distribute or policy.locality_failover):
        cluster.common_lb_config.locality_weighted_lb_config.SetInParent()
    # last: TLS merges its ALPN into the HTTP protocol options set above
    apply_upstream_tls(cluster, policy.tls, protocol=port.protocol)
