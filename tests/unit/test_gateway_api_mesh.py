"""Mesh routing (GAMMA), pure parts: which mesh VirtualService a route with a Service parent becomes (producer /
consumer export, merged routes in precedence, `port`; a TLSRoute by the Service's SNI), the parent's Accepted
reasons, and Istio's order between mesh VirtualServices of one host (translate/scope.py, api/networking.py)."""

from __future__ import annotations

from typing import Any

from meshd.api.networking import export_class, export_tier
from meshd.api.parse import parse_resource
from meshd.model.gateway_api.convert import convert
from meshd.model.gateway_api.inputs import inputs_of

GW = "gateway.networking.k8s.io/v1"
PARENT = {"group": "", "kind": "Service", "name": "web", "namespace": "apps"}


def _route(name: str, ns: str, parent: dict[str, Any], kind: str = "HTTPRoute", **rule: Any) -> Any:
    api = GW if kind == "HTTPRoute" else "gateway.networking.k8s.io/v1alpha2"
    body = {"parentRefs": [parent], "rules": [{"backendRefs": [{"name": "web-v2", "namespace": "apps", "port": 80}],
                                               **rule}]}  # fmt: skip
    return parse_resource({"apiVersion": api, "kind": kind, "metadata": {"name": name, "namespace": ns}, "spec": body})


def _convert(*routes: Any) -> Any:
    grant = parse_resource({
        "apiVersion": "gateway.networking.k8s.io/v1beta1", "kind": "ReferenceGrant",
        "metadata": {"name": "g", "namespace": "apps"},
        "spec": {"from": [{"group": "gateway.networking.k8s.io", "kind": "HTTPRoute", "namespace": "team"}],
                 "to": [{"group": "", "kind": "Service"}]},
    })  # fmt: skip
    services = {("apps", "web"): frozenset({80, 8080}), ("apps", "web-v2"): frozenset({80})}
    return convert(inputs_of([*routes, grant]), services=services, domain_suffix="cluster.local")


def _accepted(result: Any, key: Any, index: int = 0) -> tuple[str, str]:
    found = result.status[key]["parents"][index]["conditions"][0]
    return found["status"], found["reason"]


def test_producer_and_consumer_routes_become_mesh_virtual_services() -> None:
    producer = _route("p", "apps", PARENT)
    later = _route("q", "apps", {**PARENT, "port": 8080}, matches=[{"path": {"type": "Exact", "value": "/q"}}])
    consumer = _route("c", "team", PARENT)
    result = _convert(producer, later, consumer)
    by_ns = {vs.metadata.namespace: vs for vs in result.virtual_services}
    assert set(by_ns) == {"apps", "team"} and not result.errors
    mine, theirs = by_ns["apps"], by_ns["team"]
    assert mine.metadata.name == theirs.metadata.name == "gamma~apps~web"
    assert mine.spec.hosts == theirs.spec.hosts == ["web.apps.svc.cluster.local"]
    assert mine.spec.gateways == ["mesh"] and mine.spec.export_to == ["*"] and theirs.spec.export_to == ["."]
    # both producer routes merged in precedence (the Exact path first), `port` as a match on q's routes only
    assert [r.name for r in mine.spec.http] == ["apps.q.0.0", "apps.p.0.0"]
    assert [m.port for m in mine.spec.http[0].match] == [8080] and mine.spec.http[1].match[0].port is None
    assert _accepted(result, producer.key) == ("True", "Accepted")
    assert result.status[producer.key]["parents"][0]["controllerName"] == "istio.io/gateway-controller"


def test_service_parent_reasons() -> None:
    missing = _route("m", "apps", {**PARENT, "name": "nowhere"})
    port = _route("n", "apps", {**PARENT, "port": 9}, kind="HTTPRoute")
    section = _route("s", "apps", {**PARENT, "sectionName": "http"})
    tls_spec = {"parentRefs": [PARENT], "hostnames": ["web.example.com"],  # (the SNI is the Service's name)
                "rules": [{"backendRefs": [{"name": "web", "port": 80}]}]}  # fmt: skip
    tls = parse_resource({"apiVersion": "gateway.networking.k8s.io/v1alpha2", "kind": "TLSRoute",
                          "metadata": {"name": "t", "namespace": "apps"}, "spec": tls_spec})  # fmt: skip
    result = _convert(missing, port, section, tls)
    assert _accepted(result, missing.key) == ("False", "NoMatchingParent")
    assert _accepted(result, port.key) == ("False", "NoMatchingParent")
    assert _accepted(result, section.key) == ("False", "UnsupportedValue")
    assert _accepted(result, tls.key) == ("False", "UnsupportedValue")
    assert not result.virtual_services
    assert {(e.key, e.field) for e in result.errors} >= {
        (missing.key, "spec.parentRefs[0]"),
        (tls.key, "spec.parentRefs[0]"),
    }


def test_tcp_route_with_a_service_parent_becomes_tcp_routes() -> None:
    tcp = _route("t", "apps", {**PARENT, "port": 80}, kind="TCPRoute")
    result = _convert(tcp)
    (vs,) = result.virtual_services
    assert [m.port for m in vs.spec.tcp[0].match] == [80] and not vs.spec.http
    assert vs.spec.tcp[0].route[0].destination.host == "web-v2.apps.svc.cluster.local"


def test_tls_route_with_a_service_parent_matches_the_services_sni() -> None:
    named = _route("t", "apps", {**PARENT, "port": 80}, kind="TLSRoute")
    anyport = _route("u", "apps", PARENT, kind="TLSRoute")
    result = _convert(named, anyport)
    assert _accepted(result, named.key) == ("True", "Accepted") == _accepted(result, anyport.key)
    (vs,) = result.virtual_services
    assert vs.spec.hosts == ["web.apps.svc.cluster.local"] and not vs.spec.http and not vs.spec.tcp
    assert [(m.sni_hosts, m.port) for r in vs.spec.tls for m in r.match] == [
        (["web.apps.svc.cluster.local"], 80),
        (["web.apps.svc.cluster.local"], None),
    ]
    assert vs.spec.tls[0].route[0].destination.host == "web-v2.apps.svc.cluster.local"


def test_mesh_virtual_services_are_ordered_as_istio_orders_them() -> None:
    assert export_class([], owner_namespace="a") == ("*",) == export_class(["*", "."], owner_namespace="a")
    assert export_class(["."], owner_namespace="a") == ("a",) == export_class(["a"], owner_namespace="a")
    assert export_tier(["."], owner_namespace="b", namespace="b") == 0  # exported to the client's namespace alone
    assert export_tier(["b", "c"], owner_namespace="a", namespace="b") == 1  # to it by name among others
    assert export_tier([], owner_namespace="a", namespace="b") == 2  # public
