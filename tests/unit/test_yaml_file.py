"""parse_file: one multi-document YAML text -> resources and errors; applied to the store, the last
good version of a resource that became invalid stays, and everything when the text is not YAML at all."""

from __future__ import annotations

import textwrap

import pytest

from meshd.api.kube import Service
from meshd.api.meta import Resource, ResourceKey
from meshd.api.virtualservice import VirtualService
from meshd.model.store import ConfigStore
from meshd.sources.yaml_file import parse_file

SVC_A = ResourceKey("Service", "ns", "a")
SVC_B = ResourceKey("Service", "ns", "b")
VS_R = ResourceKey("VirtualService", "ns", "r")


def service(name: str, port: int) -> str:
    return textwrap.dedent(f"""\
        apiVersion: v1
        kind: Service
        metadata:
          name: {name}
          namespace: ns
        spec:
          ports:
          - name: http
            port: {port}
        """)


def virtual_service(weights: tuple[int, int]) -> str:
    return textwrap.dedent(f"""\
        apiVersion: networking.istio.io/v1
        kind: VirtualService
        metadata:
          name: r
          namespace: ns
        spec:
          hosts: [a]
          http:
          - route:
            - destination: {{host: a}}
              weight: {weights[0]}
            - destination: {{host: b}}
              weight: {weights[1]}
        """)


def join(*docs: str) -> str:
    return "---\n".join(docs)


GOOD = join(service("a", 80), service("b", 80), virtual_service((50, 50)))


def load(store: ConfigStore, text: str) -> dict[ResourceKey, Resource]:
    """Parse the text as the file f.yaml and apply it to the store: what the store then holds."""
    parse_file(text, origin="f.yaml").apply(store, origin="f.yaml")
    return {r.key: r for _, r in store.resources()}


def port_of(resource: object) -> int:
    assert isinstance(resource, Service)
    return resource.spec.ports[0].port


def test_every_valid_document_becomes_a_resource() -> None:
    result = parse_file(GOOD, origin="f.yaml")
    assert result.errors == []
    assert sorted(result.resources) == [SVC_A, SVC_B, VS_R]
    assert port_of(result.resources[SVC_A]) == 80


def test_kind_list_items_are_resources() -> None:
    text = textwrap.dedent("""\
        apiVersion: v1
        kind: List
        items:
        - {apiVersion: v1, kind: Service, metadata: {name: a, namespace: ns}, spec: {ports: [{port: 80}]}}
        - {apiVersion: v1, kind: Service, metadata: {name: b, namespace: ns}, spec: {ports: [{port: 81}]}}
        """)
    result = parse_file(text, origin="f.yaml")
    assert result.errors == []
    assert sorted(result.resources) == [SVC_A, SVC_B]
    assert port_of(result.resources[SVC_B]) == 81


@pytest.mark.parametrize(
    ("text", "where"),
    [
        pytest.param(service("a", 81) + "  selector: [app\n", "line 11 column 1", id="unclosed-flow-sequence"),
        pytest.param(service("a", 81) + "    bad: indent: here\n", "line 10 column 16", id="mapping-in-scalar"),
        pytest.param("kind: Service\n\tmetadata: {}\n", "line 2 column 1", id="tab-indent"),
        pytest.param(service("a", 81) + "---\nname: 'unterminated\n", "line 12 column 1", id="unterminated-quote"),
        pytest.param("kind: Service\x00\n", "<file>", id="reader-error-without-mark"),
    ],
)
def test_malformed_yaml_keeps_previous_resources_and_reports_position(text: str, where: str) -> None:
    store = ConfigStore()
    previous = load(store, GOOD)

    assert load(store, text) == previous
    result = parse_file(text, origin="f.yaml")
    assert result.malformed and result.resources == {}
    [err] = store.errors()
    assert result.errors == [err]
    assert err.key is None
    assert err.field == where
    assert err.message.startswith("malformed YAML: ")
    assert str(err).startswith(f"f.yaml: resource: {where}: malformed YAML: ")


@pytest.mark.parametrize(
    ("had_it_before", "expected_keys"),
    [
        pytest.param(True, [SVC_A, SVC_B, VS_R], id="previously-valid-is-kept"),
        pytest.param(False, [SVC_A, SVC_B], id="never-valid-is-left-out"),
    ],
)
def test_invalid_document_keeps_last_good_version_of_that_resource_only(
    had_it_before: bool, expected_keys: list[ResourceKey]
) -> None:
    before = GOOD if had_it_before else join(service("a", 80), service("b", 80))
    store = ConfigStore()
    previous = load(store, before)

    edited = join(service("a", 81), service("b", 82), virtual_service((0, 0)))
    held = load(store, edited)

    assert sorted(held) == expected_keys
    assert (port_of(held[SVC_A]), port_of(held[SVC_B])) == (81, 82)
    if had_it_before:
        assert held[VS_R] is previous[VS_R]
        assert isinstance(held[VS_R], VirtualService)
    [err] = store.errors()
    assert (err.key, err.field) == (VS_R, "spec.http[0].route")
    assert str(err).startswith("f.yaml: VirtualService ns/r: spec.http[0].route: ")


def test_document_missing_from_the_file_is_gone() -> None:
    store = ConfigStore()
    load(store, GOOD)
    assert sorted(load(store, service("a", 80))) == [SVC_A]


@pytest.mark.parametrize(
    ("bad_document", "field"),
    [
        pytest.param("apiVersion: v1\nkind: Service\n", "document 2: metadata", id="no-metadata"),
        pytest.param(
            "apiVersion: v1\nkind: Service\nmetadata: {namespace: ns}\n", "document 2: metadata.name", id="no-name"
        ),
        pytest.param("apiVersion: v1\nmetadata: {name: x}\n", "document 2: kind", id="no-kind"),
        pytest.param("- just\n- a list\n", "document 2: <root>", id="not-a-mapping"),
    ],
)
def test_document_without_identity_is_reported_by_position(bad_document: str, field: str) -> None:
    text = join(service("a", 80), bad_document, service("b", 80))
    result = parse_file(text, origin="f.yaml")
    assert sorted(result.resources) == [SVC_A, SVC_B]
    [err] = result.errors
    assert err.key is None
    assert err.field == field
    assert str(err).startswith(f"f.yaml: resource: {field}: ")


def test_resource_defined_twice_in_a_file_keeps_the_first() -> None:
    result = parse_file(join(service("a", 80), service("a", 81)), origin="f.yaml")
    assert port_of(result.resources[SVC_A]) == 80
    [err] = result.errors
    assert (err.key, err.field, err.message) == (SVC_A, "metadata.name", "defined twice in this file")


def test_type_confused_kind_is_refused_and_the_rest_of_the_file_parses() -> None:
    """Issue 20: `kind: [Service]` raised TypeError (unhashable list) and meshd could not start."""
    from meshd.sources.yaml_file import parse_file

    text = """\
apiVersion: v1
kind: [Service]
metadata: {name: a, namespace: default}
---
apiVersion: v1
kind: {Service: 1}
metadata: {name: b}
---
apiVersion: [v1]
kind: Service
metadata: {name: c}
spec: {ports: [{port: 80}]}
---
apiVersion: v1
kind: Service
metadata: {name: ok}
spec: {ports: [{port: 80}]}
"""
    result = parse_file(text, origin="x.yaml")
    assert [str(k) for k in result.resources] == ["Service default/ok"]
    assert [e.field for e in result.errors] == ["document 1: kind", "document 2: kind", "apiVersion"]
    assert "['Service']" in result.errors[0].message
