"""Admission review (pure): the same validation as reading the resource; structure errors raise."""

from __future__ import annotations

import pytest

from meshd.kube.admission import BadReview, depth_exceeds, review


def test_depth_is_measured_without_recursion() -> None:
    deep: object = 1
    for _ in range(100_000):
        deep = [deep]
    assert depth_exceeds(deep)
    assert not depth_exceeds({"a": [{"b": 1}]})


@pytest.mark.parametrize(
    "body", [None, [], {"kind": "AdmissionReview"}, {"kind": "Other", "apiVersion": "admission.k8s.io/v1"}]
)
def test_not_a_review(body: object) -> None:
    with pytest.raises(BadReview):
        review(body)


def test_an_invalid_destination_rule_is_refused_with_resource_and_field() -> None:
    obj = {
        "apiVersion": "networking.istio.io/v1beta1",
        "kind": "DestinationRule",
        "metadata": {"name": "r", "namespace": "ns"},
        "spec": {"host": "web", "trafficPolicy": {"loadBalancer": {"simple": "FASTEST"}}},
    }
    answer = review(
        {
            "apiVersion": "admission.k8s.io/v1",
            "kind": "AdmissionReview",
            "request": {"uid": "1", "kind": {"group": "networking.istio.io"}, "operation": "CREATE", "object": obj},
        }
    )
    response = answer["response"]
    assert response["allowed"] is False
    assert response["status"]["message"].startswith("DestinationRule ns/r: spec.trafficPolicy.loadBalancer.simple")


@pytest.mark.parametrize(
    ("group", "kind", "allowed"),
    [
        ("networking.istio.io", ["Service"], False),  # used to raise TypeError: unhashable (HTTP 500)
        ("networking.istio.io", {"k": 1}, False),
        (["networking.istio.io"], "DestinationRule", True),  # a group that is not a string: not ours
    ],
)
def test_a_type_confused_kind_gets_a_clean_answer(group: object, kind: object, allowed: bool) -> None:
    obj = {"apiVersion": "networking.istio.io/v1", "kind": kind, "metadata": {"name": "r", "namespace": "ns"}}
    answer = review(
        {
            "apiVersion": "admission.k8s.io/v1",
            "kind": "AdmissionReview",
            "request": {"uid": "1", "kind": {"group": group}, "operation": "CREATE", "object": obj},
        }
    )
    assert answer["response"]["allowed"] is allowed
    if not allowed:
        assert "kind: must be a string" in answer["response"]["status"]["message"]
