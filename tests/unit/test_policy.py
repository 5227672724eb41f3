"""DestinationRule policy: Istio's merge of levels, and how a merged policy becomes an Envoy cluster and a
route hash policy."""

from __future__ import annotations

from typing import Any

import pytest
from envoy.config.cluster.v3 import cluster_pb2

from meshd.api.destinationrule import DestinationRule
from meshd.api.meta import InvalidResource
from meshd.api.parse import parse_resource
from meshd.model.services import MeshService, ServicePort
from meshd.translate.cluster_policy import UINT32_MAX, apply_policy
from meshd.translate.policy import effective_policy, failover_priority_labels, hash_policies

LB_RANDOM = {"loadBalancer": {"simple": "RANDOM"}}
LB_RR = {"loadBalancer": {"simple": "ROUND_ROBIN"}}
LB_LEAST = {"loadBalancer": {"simple": "LEAST_REQUEST"}}
POOL_50 = {"connectionPool": {"tcp": {"maxConnections": 50}}}
POOL_3 = {"connectionPool": {"tcp": {"maxConnections": 3}}}
OUTLIER = {"outlierDetection": {"consecutive5xxErrors": 5}}


def _rule(top: dict[str, Any] | None, subset: dict[str, Any] | None = None) -> DestinationRule:
    spec: dict[str, Any] = {"host": "shop", "subsets": [{"name": "v1", "labels": {"version": "v1"}}]}
    if top is not None:
        spec["trafficPolicy"] = top
    if subset is not None:
        spec["subsets"][0]["trafficPolicy"] = subset
    resource = parse_resource(
        {
            "apiVersion": "networking.istio.io/v1",
            "kind": "DestinationRule",
            "metadata": {"name": "shop", "namespace": "default"},
            "spec": spec,
        }
    )
    assert isinstance(resource, DestinationRule)
    return resource


def _port_level(port: int, policy: dict[str, Any]) -> dict[str, Any]:
    return {"portLevelSettings": [{"port": {"number": port}, **policy}]}


# (case, top-level policy, subset policy, port, subset, expected (simple LB, maxConnections, has outlier))
MERGE_CASES: list[tuple[str, dict[str, Any] | None, dict[str, Any] | None, int, str, tuple[Any, ...]]] = [
    ("no rule policy", None, None, 80, "", (None, None, False)),
    ("top level", {**LB_RANDOM, **POOL_50, **OUTLIER}, None, 80, "", ("RANDOM", 50, True)),
    ("top level applies to subsets", {**LB_RANDOM, **POOL_50}, None, 80, "v1", ("RANDOM", 50, False)),
    (
        "port level replaces every field, omitted ones fall back to defaults",
        {**LB_RANDOM, **POOL_50, **OUTLIER, **_port_level(80, LB_RR)},
        None,
        80,
        "",
        ("ROUND_ROBIN", None, False),
    ),
    (
        "port level only for its port",
        {**LB_RANDOM, **POOL_50, **_port_level(81, LB_RR)},
        None,
        80,
        "",
        ("RANDOM", 50, False),
    ),
    (
        "subset replaces only what it sets",
        {**LB_RANDOM, **POOL_50, **OUTLIER},
        {**LB_LEAST},
        80,
        "v1",
        ("LEAST_REQUEST", 50, True),
    ),
    (
        "subset over top-level port level",
        {**LB_RANDOM, **_port_level(80, POOL_50)},
        {**LB_LEAST},
        80,
        "v1",
        ("LEAST_REQUEST", 50, False),
    ),
    (
        "subset port level wins last and replaces everything",
        {**LB_RANDOM, **POOL_50, **OUTLIER},
        {**LB_LEAST, **_port_level(80, POOL_3)},
        80,
        "v1",
        (None, 3, False),
    ),
    (
        "subset port level for another port",
        {**LB_RANDOM, **POOL_50},
        {**LB_LEAST, **_port_level(81, POOL_3)},
        80,
        "v1",
        ("LEAST_REQUEST", 50, False),
    ),
    (
        "subset policy does not leak to the default cluster",
        {**LB_RANDOM},
        {**LB_LEAST},
        80,
        "",
        ("RANDOM", None, False),
    ),
]


@pytest.mark.parametrize(
    ("top", "subset", "port", "name", "expected"), [c[1:] for c in MERGE_CASES], ids=[c[0] for c in MERGE_CASES]
)
def test_merge(
    top: dict[str, Any] | None, subset: dict[str, Any] | None, port: int, name: str, expected: tuple[Any, ...]
) -> None:
    policy = effective_policy(_rule(top, subset), port=port, subset=name)
    lb = policy.load_balancer.simple if policy.load_balancer else None
    pool = policy.connection_pool
    max_connections = pool.tcp.max_connections if pool and pool.tcp else None
    assert (lb, max_connections, policy.outlier_detection is not None) == expected


SERVICE = MeshService(hostname="shop.default.svc.cluster.local", namespace="default", name="shop", ports=())
HTTP = ServicePort(name="http", number=80, protocol="HTTP")


def _cluster(top: dict[str, Any] | None, port: ServicePort = HTTP) -> cluster_pb2.Cluster:
    cluster = cluster_pb2.Cluster(name="c", type=cluster_pb2.Cluster.EDS)
    apply_policy(cluster, effective_policy(_rule(top), port=port.number), service=SERVICE, port=port)
    return cluster


@pytest.mark.parametrize(
    ("simple", "expected"),
    [
        (None, cluster_pb2.Cluster.LEAST_REQUEST),
        ("UNSPECIFIED", cluster_pb2.Cluster.LEAST_REQUEST),
        ("LEAST_CONN", cluster_pb2.Cluster.LEAST_REQUEST),
        ("LEAST_REQUEST", cluster_pb2.Cluster.LEAST_REQUEST),
        ("ROUND_ROBIN", cluster_pb2.Cluster.ROUND_ROBIN),
        ("RANDOM", cluster_pb2.Cluster.RANDOM),
        ("PASSTHROUGH", cluster_pb2.Cluster.CLUSTER_PROVIDED),
    ],
)
def test_simple_load_balancers(simple: str | None, expected: int) -> None:
    cluster = _cluster({"loadBalancer": {"simple": simple}} if simple else None)
    assert cluster.lb_policy == expected
    assert (cluster.type == cluster_pb2.Cluster.ORIGINAL_DST) == (simple == "PASSTHROUGH")


def test_defaults_without_a_policy_are_istios_circuit_breakers() -> None:
    thresholds = _cluster(None).circuit_breakers.thresholds[0]
    assert thresholds.max_connections.value == thresholds.max_retries.value == UINT32_MAX
    assert thresholds.track_remaining


def test_connection_pool_and_outlier_detection_fields() -> None:
    cluster = _cluster(
        {
            "connectionPool": {
                "tcp": {"maxConnections": 1, "connectTimeout": "250ms", "tcpKeepalive": {"time": "30s", "probes": 2}},
                "http": {"http1MaxPendingRequests": 2, "http2MaxRequests": 3, "maxRetries": 4, "idleTimeout": "5s"},
            },
            "outlierDetection": {"consecutiveErrors": 6, "consecutive5xxErrors": 7, "minHealthPercent": 40},
        }
    )
    t = cluster.circuit_breakers.thresholds[0]
    assert (t.max_connections.value, t.max_pending_requests.value, t.max_requests.value, t.max_retries.value) == (
        1,
        2,
        3,
        4,
    )
    assert cluster.connect_timeout.ToMilliseconds() == 250
    assert cluster.upstream_connection_options.tcp_keepalive.keepalive_time.value == 30
    out = cluster.outlier_detection
    assert (out.consecutive_gateway_failure.value, out.consecutive_5xx.value, out.enforcing_consecutive_5xx.value) == (
        6,
        7,
        100,
    )
    assert cluster.common_lb_config.healthy_panic_threshold.value == 40
    assert "envoy.extensions.upstreams.http.v3.HttpProtocolOptions" in cluster.typed_extension_protocol_options


def test_consistent_hash_cluster_and_route() -> None:
    rule = _rule(
        {"loadBalancer": {"consistentHash": {"httpCookie": {"name": "s", "ttl": "10s"}, "maglev": {"tableSize": 7}}}}
    )
    policy = effective_policy(rule, port=80)
    (hp,) = hash_policies(policy)
    assert hp.cookie.name == "s" and hp.cookie.ttl.seconds == 10
    cluster = _cluster({"loadBalancer": {"consistentHash": {"useSourceIp": True}}})
    assert cluster.lb_policy == cluster_pb2.Cluster.RING_HASH
    assert cluster.ring_hash_lb_config.minimum_ring_size.value == 1024
    assert hash_policies(effective_policy(_rule(LB_RANDOM), port=80)) == []


def test_failover_priority_labels_are_collected_from_every_level() -> None:
    setting = {"loadBalancer": {"localityLbSetting": {"failoverPriority": ["tier", "topology.istio.io/network=n1"]}}}
    rule = _rule(_port_level(80, {"outlierDetection": {"consecutive5xxErrors": 1}}), setting)
    assert failover_priority_labels(rule) == {"tier", "topology.istio.io/network"}


@pytest.mark.parametrize(
    ("policy", "field"),
    [
        ({"connectionPool": {"tcp": {"tcpKeepalive": {"interval": "0.5s"}}}}, "tcpKeepalive.interval"),
        ({"loadBalancer": {"localityLbSetting": {"distribute": [{"from": "a/*/c", "to": {"a": 100}}]}}}, "from"),
        ({"loadBalancer": {"localityLbSetting": {"distribute": [{"from": "a", "to": {"a/b/c/d": 100}}]}}}, "to"),
        ({"loadBalancer": {"consistentHash": {"httpHeaderName": "x\nb"}}}, "httpHeaderName"),
        ({"loadBalancer": {"consistentHash": {"useSourceIp": True, "minimumRingSize": 9_000_000}}}, "minimumRingSize"),
        ({"connectionPool": {"tcp": {"maxConnections": 2**31}}}, "maxConnections"),
    ],
)
def test_what_envoy_would_reject_is_refused_with_its_field(policy: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidResource) as err:
        _rule(policy)
    assert err.value.key is not None and err.value.key.name == "shop"
    assert field in err.value.field
