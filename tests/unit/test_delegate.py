# ruff: noqa: E501  (the tables read best one case per line)
"""VirtualService delegation: which routes a root gets, merged matches, and reference errors."""

from __future__ import annotations

from typing import Any

import pytest

from meshd.api.http_match import HTTPMatchRequest
from meshd.api.meta import InvalidResource
from meshd.api.parse import parse_resource
from meshd.api.virtualservice import VirtualService
from meshd.translate.delegate import expand, merge_matches


def _vs(name: str, spec: dict[str, Any], ns: str = "default") -> VirtualService:
    vs = parse_resource(
        {
            "apiVersion": "networking.istio.io/v1",
            "kind": "VirtualService",
            "metadata": {"name": name, "namespace": ns},
            "spec": spec,
        }
    )
    assert isinstance(vs, VirtualService)
    return vs


def _m(**fields: Any) -> HTTPMatchRequest:
    return HTTPMatchRequest.model_validate(fields)


ROUTE = [{"destination": {"host": "web"}}]


@pytest.mark.parametrize(
    ("root", "inner", "expected"),
    [
        ({"uri": {"prefix": "/a"}}, {"uri": {"prefix": "/a/b"}}, {"uri": {"prefix": "/a/b"}}),
        ({"uri": {"prefix": "/a"}}, {"uri": {"exact": "/a/x"}}, {"uri": {"exact": "/a/x"}}),
        ({"uri": {"exact": "/a/x"}}, {"uri": {"prefix": "/a"}}, {"uri": {"exact": "/a/x"}}),
        ({"uri": {"prefix": "/a"}}, {"uri": {"prefix": "/b"}}, None),
        ({"uri": {"exact": "/a"}}, {"uri": {"exact": "/b"}}, None),
        ({"uri": {"regex": "/a.*"}}, {"uri": {"prefix": "/a"}}, None),
        ({"headers": {"x": {"exact": "1"}}}, {"headers": {"y": {}}}, {"headers": {"x": {"exact": "1"}, "y": {}}}),
        ({"headers": {"x": {"exact": "1"}}}, {"headers": {"x": {"exact": "2"}}}, None),
        ({"method": {"exact": "GET"}}, {"method": {"exact": "POST"}}, None),
        ({"method": {"exact": "GET"}}, {"queryParams": {"q": {}}}, {"method": {"exact": "GET"}, "queryParams": {"q": {}}}),
        ({"port": 9080}, {"port": 9090}, None),
        ({"sourceLabels": {"a": "1"}}, {"sourceLabels": {"b": "2"}}, {"sourceLabels": {"a": "1", "b": "2"}}),
        ({"ignoreUriCase": True, "uri": {"prefix": "/a"}}, {}, {"ignoreUriCase": True, "uri": {"prefix": "/a"}}),
    ],
)  # fmt: skip
def test_a_delegate_match_is_anded_with_the_root_match(
    root: dict[str, Any], inner: dict[str, Any], expected: dict[str, Any] | None
) -> None:
    merged = merge_matches([_m(**root)], [_m(**inner)])
    assert merged == ([] if expected is None else [_m(**expected)])


def test_without_conditions_on_either_side_the_delegate_keeps_its_own() -> None:
    assert merge_matches([], []) is None
    assert merge_matches([], [_m(name="x")]) == [_m(name="x")]
    assert merge_matches([_m(name="x")], []) == [_m(name="x")]


def _index(*vss: VirtualService) -> Any:
    found = {(v.metadata.namespace, v.metadata.name): v for v in vss}
    return lambda ns, name: found.get((ns, name))


def test_delegated_routes_replace_the_delegating_route_in_order() -> None:
    inner = _vs(
        "inner",
        {
            "http": [
                {"match": [{"uri": {"prefix": "/a/b"}}], "route": ROUTE},
                {"match": [{"uri": {"prefix": "/z"}}], "route": ROUTE},
                {"route": ROUTE},
            ]
        },
    )
    other = _vs("other", {"exportTo": ["default"], "http": [{"route": ROUTE}]}, ns="team")
    root = _vs(
        "root",
        {
            "hosts": ["web"],
            "http": [
                {"match": [{"uri": {"prefix": "/a"}}], "delegate": {"name": "inner"}},
                {"match": [{"uri": {"exact": "/own"}}], "route": ROUTE},
                {"delegate": {"name": "other", "namespace": "team"}},
            ],
        },
    )
    entries = expand(root, _index(inner, other))
    assert [(e.owner.name, e.field) for e in entries] == [
        ("inner", "spec.http[0]"),  # /a/b
        ("inner", "spec.http[2]"),  # /z cannot be under /a: left out
        ("root", "spec.http[1]"),
        ("other", "spec.http[0]"),
    ]
    assert entries[0].matches == [_m(uri={"prefix": "/a/b"})]
    assert entries[1].matches == [_m(uri={"prefix": "/a"})]
    assert entries[3].namespace == "team" and entries[3].matches is None


@pytest.mark.parametrize(
    ("delegates", "message"),
    [
        ([], "default/inner does not exist"),
        ([_vs("inner", {"hosts": ["x"], "http": [{"route": ROUTE}]})], "has hosts"),
        ([_vs("inner", {"http": [{"delegate": {"name": "deeper"}}]})], "only one level"),
        ([_vs("inner", {"exportTo": ["."], "http": [{"route": ROUTE}]}, ns="default")], None),
    ],
)
def test_delegate_reference_errors_are_the_roots(delegates: list[VirtualService], message: str | None) -> None:
    root = _vs("root", {"hosts": ["web"], "http": [{"route": ROUTE}, {"delegate": {"name": "inner"}}]})
    if message is None:
        assert len(expand(root, _index(*delegates))) == 2
        return
    with pytest.raises(InvalidResource) as info:
        expand(root, _index(*delegates))
    assert info.value.key == root.key and info.value.field == "spec.http[1].delegate"
    assert message in info.value.message


def test_a_delegate_not_exported_to_the_roots_namespace_is_an_error() -> None:
    inner = _vs("inner", {"exportTo": ["."], "http": [{"route": ROUTE}]}, ns="team")
    root = _vs("root", {"hosts": ["web"], "http": [{"delegate": {"name": "inner", "namespace": "team"}}]})
    with pytest.raises(InvalidResource, match="not exported to namespace default"):
        expand(root, _index(inner))
