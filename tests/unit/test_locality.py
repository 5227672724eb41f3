"""Locality: where workloads are (labels, WorkloadEntry), and how a proxy's locality shapes priorities
and weights in an assignment."""

from __future__ import annotations

from typing import Any

import pytest
from envoy.config.endpoint.v3 import endpoint_components_pb2

from meshd.api.destinationrule import TrafficPolicy
from meshd.model.derive import entry_locality
from meshd.model.services import Endpoint, locality_from_labels
from meshd.translate.locality import locality_groups, locality_matches, plan_for
from meshd.translate.policy import merge


@pytest.mark.parametrize(
    ("labels", "expected"),
    [
        ({"istio-locality": "us-east.zone-a.rack-1"}, "us-east/zone-a/rack-1"),
        ({"istio-locality": "us-east"}, "us-east"),
        ({"topology.kubernetes.io/region": "eu", "topology.kubernetes.io/zone": "eu-1"}, "eu/eu-1"),
        ({"topology.kubernetes.io/region": "eu"}, "eu"),
        ({"istio-locality": "x.y", "topology.kubernetes.io/region": "eu"}, "x/y"),  # the explicit label wins
        ({}, ""),
    ],
)
def test_locality_from_pod_labels(labels: dict[str, str], expected: str) -> None:
    assert locality_from_labels(labels) == expected


def test_workload_entry_locality_field_wins_over_labels() -> None:
    assert entry_locality("us/z1", {"istio-locality": "eu.z2"}) == "us/z1"
    assert entry_locality("", {"istio-locality": "eu.z2"}) == "eu/z2"


@pytest.mark.parametrize(
    ("locality", "pattern", "expected"),
    [
        ("us/z1/s1", "us", True),
        ("us/z1/s1", "us/*", True),
        ("us/z1/s1", "us/z1/*", True),
        ("us/z1/s1", "us/z2", False),
        ("us/z1/s1", "*", True),
        ("eu/z1", "us/*", False),
    ],
)
def test_locality_match(locality: str, pattern: str, expected: bool) -> None:
    assert locality_matches(locality, pattern) is expected


ENDPOINTS = [
    Endpoint(address="10.0.0.1", port=80, locality="us/z1/s1"),
    Endpoint(address="10.0.0.2", port=80, locality="us/z1/s2"),
    Endpoint(address="10.0.0.3", port=80, locality="us/z2"),
    Endpoint(address="10.0.0.4", port=80, locality="eu/z3", labels=(("tier", "gold"),)),
    Endpoint(address="10.0.0.5", port=80, locality="ap/z4"),
    Endpoint(address="10.0.0.6", port=80, weight=3),
]


def _groups(policy: dict[str, Any], proxy: str, labels: dict[str, str] | None = None) -> dict[str, tuple[int, int]]:
    """{endpoint address: (priority, locality weight)} for a proxy in `proxy`."""
    effective = merge(TrafficPolicy.model_validate(policy), None, port=80)
    plan = plan_for(effective, proxy_locality=proxy, proxy_labels=labels or {})
    pairs = [(ep, endpoint_components_pb2.LbEndpoint()) for ep in ENDPOINTS]
    for ep, lb in pairs:
        lb.endpoint.address.socket_address.address = ep.address
    out = {}
    for group in locality_groups(pairs, plan):
        for lb in group.lb_endpoints:
            out[lb.endpoint.address.socket_address.address] = (group.priority, group.load_balancing_weight.value)
    return out


OUTLIER = {"outlierDetection": {"consecutive5xxErrors": 1}}


def test_default_failover_orders_subzone_zone_region_then_the_rest() -> None:
    got = _groups(OUTLIER, "us/z1/s1")
    assert {ip: p for ip, (p, _) in got.items()} == {
        "10.0.0.1": 0, "10.0.0.2": 1, "10.0.0.3": 2, "10.0.0.4": 3, "10.0.0.5": 3, "10.0.0.6": 3,
    }  # fmt: skip


def test_failover_region_comes_before_other_regions() -> None:
    policy = {**OUTLIER, "loadBalancer": {"localityLbSetting": {"failover": [{"from": "us", "to": "ap"}]}}}
    got = _groups(policy, "us/z2")
    assert {ip: p for ip, (p, _) in got.items()} == {
        "10.0.0.3": 0, "10.0.0.1": 1, "10.0.0.2": 1, "10.0.0.5": 2, "10.0.0.4": 3, "10.0.0.6": 3,
    }  # fmt: skip


def test_no_failover_without_outlier_detection_or_when_disabled_or_without_proxy_locality() -> None:
    disabled = {**OUTLIER, "loadBalancer": {"localityLbSetting": {"enabled": False}}}
    for policy, proxy in (({}, "us/z1/s1"), (disabled, "us/z1/s1"), (OUTLIER, "")):
        assert {p for p, _ in _groups(policy, proxy).values()} == {0}


def test_failover_priority_by_labels() -> None:
    policy = {**OUTLIER, "loadBalancer": {"localityLbSetting": {"failoverPriority": ["tier"]}}}
    got = _groups(policy, "eu/z3", {"tier": "gold"})
    assert got["10.0.0.4"][0] == 0 and {got[ip][0] for ip in ("10.0.0.1", "10.0.0.5", "10.0.0.6")} == {1}


def test_distribute_weights_split_over_matching_localities() -> None:
    policy = {
        "loadBalancer": {"localityLbSetting": {"distribute": [{"from": "us/*", "to": {"us/z1": 75, "eu/*": 25}}]}}
    }
    got = _groups(policy, "us/z2")
    # us/z1 has two sub-zone groups sharing 75 (rounded up); localities not listed get nothing.
    assert got == {"10.0.0.1": (0, 38), "10.0.0.2": (0, 38), "10.0.0.4": (0, 25)}
    assert len(_groups(policy, "eu/z3")) == len(ENDPOINTS)  # a proxy no entry is `from`: unchanged


def test_groups_are_weighted_by_their_endpoints() -> None:
    got = _groups({}, "")
    assert got["10.0.0.6"] == (0, 3) and got["10.0.0.1"] == (0, 1)
