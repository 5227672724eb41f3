"""Kubernetes Gateway API (gateway.networking.k8s.io), pure parts: the kind identity that keeps a Gateway API
Gateway apart from an Istio Gateway of the same namespace/name (store, World, Kubernetes source), the models'
refusals by field, hostname intersection, route precedence, listener conflicts, ReferenceGrants and the status
the conversion gives (model/gateway_api/)."""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest

from meshd.api.gateway import Gateway
from meshd.api.gateway_api import KubernetesGateway
from meshd.api.meta import KUBERNETES_GATEWAY, InvalidResource, ResourceKey
from meshd.api.parse import parse_resource
from meshd.kube.kinds import watched_kinds
from meshd.kube.source import KubeSource
from meshd.model.gateway_api.convert import convert
from meshd.model.gateway_api.grants import secret_grants
from meshd.model.gateway_api.hostnames import intersect_hostnames
from meshd.model.gateway_api.inputs import inputs_of
from meshd.model.gateway_api.status import ApiStatus, desired_statuses, render_api_status
from meshd.model.store import ConfigStore
from meshd.model.world import build_world
from meshd.translate.secrets import readable, source
from tests.certs import Authority

GW = "gateway.networking.k8s.io/v1"


def k8s_gateway(*listeners: dict[str, Any], name: str = "gw", ns: str = "infra", **spec: Any) -> dict[str, Any]:
    return {"apiVersion": GW, "kind": "Gateway", "metadata": {"name": name, "namespace": ns},
            "spec": {"gatewayClassName": "istio", "listeners": list(listeners) or [
                {"name": "http", "port": 80, "protocol": "HTTP", "allowedRoutes": {"namespaces": {"from": "All"}}}],
                **spec}}  # fmt: skip


def istio_gateway(name: str = "gw", ns: str = "infra") -> dict[str, Any]:
    return {
        "apiVersion": "networking.istio.io/v1",
        "kind": "Gateway",
        "metadata": {"name": name, "namespace": ns},
        "spec": {
            "selector": {"istio": "ingressgateway"},
            "servers": [{"port": {"number": 8080, "name": "http", "protocol": "HTTP"}, "hosts": ["*"]}],
        },
    }


def http_route(name: str = "r", ns: str = "apps", **spec: Any) -> dict[str, Any]:
    body = {"parentRefs": [{"name": "gw", "namespace": "infra"}],
            "rules": [{"backendRefs": [{"name": "web", "port": 80}]}], **spec}  # fmt: skip
    return {"apiVersion": GW, "kind": "HTTPRoute", "metadata": {"name": name, "namespace": ns}, "spec": body}


def service(name: str = "web", ns: str = "apps", port: int = 80) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": ns},
            "spec": {"ports": [{"name": "http", "port": port}]}}  # fmt: skip


# -- identity -----------------------------------------------------------------------------------


def test_a_gateway_api_gateway_and_an_istio_gateway_of_one_name_are_two_resources() -> None:
    k8s, istio = parse_resource(k8s_gateway()), parse_resource(istio_gateway())
    assert isinstance(k8s, KubernetesGateway) and isinstance(istio, Gateway)
    assert k8s.key == ResourceKey(KUBERNETES_GATEWAY, "infra", "gw") and istio.key == ResourceKey(
        "Gateway", "infra", "gw"
    )
    store = ConfigStore()
    store.replace_origin("a.yaml", {k8s.key: k8s, istio.key: istio})
    assert {r.key for _, r in store.resources()} == {k8s.key, istio.key}
    world = build_world([k8s, istio, parse_resource(http_route()), parse_resource(service())],
                        domain_suffix="cluster.local")  # fmt: skip
    # the Istio Gateway as written, and the one meshd derives from the Gateway API listener: both there
    assert sorted(world.gateways) == [("infra", "gw"), ("infra", "gw~http")]


def test_an_invalid_gateway_api_gateway_is_named_by_its_own_kind() -> None:
    with pytest.raises(InvalidResource) as err:
        parse_resource(k8s_gateway(infrastructure={"parametersRef": {"group": "", "kind": "ConfigMap", "name": "x"}}))
    assert err.value.key == ResourceKey(KUBERNETES_GATEWAY, "infra", "gw")
    assert err.value.field == "spec.infrastructure.parametersRef" and "no parameters" in err.value.message
    # a Gateway whose apiVersion names no group meshd reads stays an Istio Gateway (and is refused as one)
    with pytest.raises(InvalidResource) as err:
        parse_resource({**k8s_gateway(), "apiVersion": "example.com/v1"})
    assert err.value.key == ResourceKey("Gateway", "infra", "gw") and err.value.field == "apiVersion"


def test_a_gateway_class_is_cluster_scoped() -> None:
    gc = parse_resource(
        {
            "apiVersion": GW,
            "kind": "GatewayClass",
            "metadata": {"name": "istio"},
            "spec": {"controllerName": "istio.io/gateway-controller"},
        },
        default_namespace="x",
    )
    assert gc.key == ResourceKey("GatewayClass", "", "istio")


def test_the_kube_source_keeps_both_gateway_kinds_apart() -> None:
    identities = [spec.identity for spec in watched_kinds(namespace="istio-system")]
    assert len(identities) == len(set(identities)) and {"Gateway", KUBERNETES_GATEWAY} <= set(identities)
    store = ConfigStore()
    source = KubeSource(store=store, namespace="istio-system", log=logging.getLogger("test"))
    source.handler("Gateway")("ADDED", None, istio_gateway())
    source.handler(KUBERNETES_GATEWAY)("ADDED", None, k8s_gateway())
    assert {r.key.kind for _, r in store.resources()} == {"Gateway", KUBERNETES_GATEWAY}
    source.handler(KUBERNETES_GATEWAY)("DELETED", k8s_gateway(), None)
    assert {r.key.kind for _, r in store.resources()} == {"Gateway"}


# -- models -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rule", "field", "words"),
    [
        ({"filters": [{"type": "ExtensionRef", "extensionRef": {"group": "", "kind": "X", "name": "x"}}]},
         "spec.rules[0].filters[0].extensionRef", "not supported"),
        ({"filters": [{"type": "CORS"}]}, "spec.rules[0].filters[0].cors", "required by the filter's type"),
        ({"timeouts": {"request": "1s", "backendRequest": "2s"}}, "spec.rules[0].timeouts.backendRequest",
         "not be longer than request"),
        ({"backendRefs": [{"name": "web"}]}, "spec.rules[0].backendRefs[0].port", "required"),
        ({"retry": {"backoff": "0s"}}, "spec.rules[0].retry.backoff", "at least 1ms"),
        ({"retry": {"codes": [200]}}, "spec.rules[0].retry.codes", "400 to 599"),
        ({"retry": {"attempts": -1}}, "spec.rules[0].retry.attempts", "greater than or equal"),
        ({"sessionPersistence": {"type": "Cookie"}}, "spec.rules[0].sessionPersistence", "not supported"),
        ({"filters": [{"type": "CORS", "cors": {"exposeHeaders": ["*"], "allowCredentials": True}}]},
         "spec.rules[0].filters[0].cors.exposeHeaders", "only allowed when allowCredentials"),
        ({"filters": [{"type": "CORS", "cors": {}}, {"type": "CORS", "cors": {}}]}, "spec.rules[0].filters",
         "CORS may appear once"),
        ({"backendRefs": [{"name": "web", "port": 80, "filters": [{"type": "CORS", "cors": {}}]}]},
         "spec.rules[0].backendRefs[0].filters[0].type", "not supported"),
        ({"nope": 1}, "spec.rules[0].nope", "unknown field"),
    ],
)  # fmt: skip
def test_route_fields_meshd_does_not_translate_are_refused_by_name(
    rule: dict[str, Any], field: str, words: str
) -> None:
    doc = http_route(rules=[rule])
    with pytest.raises(InvalidResource) as err:
        parse_resource(doc)
    assert err.value.key == ResourceKey("HTTPRoute", "apps", "r")
    assert err.value.field.startswith(field) and words in err.value.message, err.value


@pytest.mark.parametrize("kind", ["UDPRoute"])
def test_kinds_not_translated_yet_are_refused(kind: str) -> None:
    with pytest.raises(InvalidResource) as err:
        parse_resource({"apiVersion": GW, "kind": kind, "metadata": {"name": "x", "namespace": "apps"}, "spec": {}})
    assert err.value.field == "kind" and "not supported by meshd" in err.value.message


# -- conversion ---------------------------------------------------------------------------------------


def test_hostnames_meet_as_the_gateway_api_says() -> None:
    assert intersect_hostnames([], "") == ["*"]
    assert intersect_hostnames([], "*.example.com") == ["*.example.com"]
    assert intersect_hostnames(["a.example.com", "b.other.org"], "*.example.com") == ["a.example.com"]
    assert intersect_hostnames(["*.example.com"], "a.example.com") == ["a.example.com"]
    assert intersect_hostnames(["*.example.com"], "example.com") == []  # a wildcard needs one more label
    assert intersect_hostnames(["*.a.example.com"], "*.example.com") == ["*.a.example.com"]
    assert intersect_hostnames(["x.org"], "") == ["x.org"]


def _convert(*docs: dict[str, Any], **kw: Any) -> Any:
    resources = [parse_resource(d) for d in docs]
    services = {(r.metadata.namespace, r.metadata.name): frozenset({80}) for r in resources if r.kind == "Service"}
    return convert(inputs_of(resources), services=services, domain_suffix="cluster.local", **kw)


def test_routes_of_one_host_are_ordered_by_gateway_api_precedence() -> None:
    older = http_route("older", rules=[{"backendRefs": [{"name": "web", "port": 80}]}])  # PathPrefix /
    newer = http_route("newer", rules=[
        {"matches": [{"path": {"type": "PathPrefix", "value": "/a"}}], "backendRefs": [{"name": "web", "port": 80}]},
        {"matches": [{"path": {"type": "PathPrefix", "value": "/a/b"}}, {"path": {"type": "Exact", "value": "/z"}},
                     {"path": {"type": "PathPrefix", "value": "/a"}, "method": "GET"}],
         "backendRefs": [{"name": "web", "port": 80}]},
    ])  # fmt: skip
    older["metadata"]["creationTimestamp"] = "2024-01-01T00:00:00Z"
    newer["metadata"]["creationTimestamp"] = "2025-01-01T00:00:00Z"
    result = _convert(k8s_gateway(), older, newer, service())
    [vs] = result.virtual_services
    uris = [(json.dumps(r.match[0].uri.model_dump(exclude_none=True)), bool(r.match[0].method)) for r in vs.spec.http]
    assert uris == [
        ('{"exact": "/z"}', False),
        ('{"exact": "/a/b"}', False), ('{"prefix": "/a/b/"}', False),  # the longest prefix first
        ('{"exact": "/a"}', True), ('{"prefix": "/a/"}', True),  # then a method match
        ('{"exact": "/a"}', False), ('{"prefix": "/a/"}', False),
        ('{"prefix": "/"}', False),  # the catch-all of the older route last
    ]  # fmt: skip


def test_listener_conditions_and_conflicts() -> None:
    gw = k8s_gateway(
        {"name": "a", "port": 80, "protocol": "HTTP", "hostname": "a.example.com"},
        {"name": "b", "port": 80, "protocol": "HTTP", "hostname": "a.example.com"},
        {"name": "c", "port": 81, "protocol": "HTTP"},
        {"name": "d", "port": 81, "protocol": "HTTPS", "tls": {"certificateRefs": [{"name": "s"}]}},
        {"name": "e", "port": 82, "protocol": "UDP"},
        {"name": "f", "port": 83, "protocol": "HTTP", "allowedRoutes": {"kinds": [{"kind": "TCPRoute"}]}},
    )
    status = _convert(gw, secrets={("infra", "s")}).status[ResourceKey(KUBERNETES_GATEWAY, "infra", "gw")]
    by_name = {lst["name"]: {c["type"]: c["reason"] for c in lst["conditions"]} for lst in status["listeners"]}
    assert by_name["a"]["Conflicted"] == by_name["b"]["Conflicted"] == "HostnameConflict"
    assert by_name["c"]["Conflicted"] == by_name["d"]["Conflicted"] == "ProtocolConflict"
    assert by_name["e"]["Accepted"] == "UnsupportedProtocol"
    assert by_name["f"]["ResolvedRefs"] == "InvalidRouteKinds"
    assert all(by_name[n]["Programmed"] == "Invalid" for n in "abcdef")
    assert {c["type"]: c["reason"] for c in status["conditions"]}["Accepted"] == "ListenersNotValid"


def test_a_reference_grant_allows_only_what_it_names() -> None:
    cross = http_route(rules=[{"backendRefs": [{"name": "web", "namespace": "team", "port": 80}]}])
    grant = {"apiVersion": "gateway.networking.k8s.io/v1beta1", "kind": "ReferenceGrant",
             "metadata": {"name": "g", "namespace": "team"},
             "spec": {"from": [{"group": "gateway.networking.k8s.io", "kind": "HTTPRoute", "namespace": "apps"}],
                      "to": [{"group": "", "kind": "Service", "name": "other"}]}}  # fmt: skip

    def resolved(*docs: dict[str, Any]) -> str:
        result = _convert(k8s_gateway(), cross, service(ns="team"), *docs)
        parent = result.status[ResourceKey("HTTPRoute", "apps", "r")]["parents"][0]
        return str({c["type"]: c["reason"] for c in parent["conditions"]}["ResolvedRefs"])

    assert resolved() == "RefNotPermitted"
    assert resolved(grant) == "RefNotPermitted"  # it names another Service
    grant["spec"]["to"][0]["name"] = "web"
    assert resolved(grant) == "ResolvedRefs"
    grant["metadata"]["namespace"] = "apps"  # a grant must live in the target's namespace
    assert resolved(grant) == "RefNotPermitted"


def test_another_controllers_gateway_gets_nothing_and_its_routes_no_parent_status() -> None:
    gw = k8s_gateway()
    gw["spec"]["gatewayClassName"] = "someone-else"
    result = _convert(gw, http_route(), service())
    assert not result.gateways and not result.virtual_services
    route_status = result.status[ResourceKey("HTTPRoute", "apps", "r")]
    assert route_status["parents"][0]["conditions"][0]["reason"] == "NoMatchingParent"
    assert ResourceKey(KUBERNETES_GATEWAY, "infra", "gw") not in result.status


def test_status_rendering_keeps_transition_times_and_other_controllers_parents() -> None:
    docs = [k8s_gateway(), http_route(), service()]
    resources = [parse_resource(d) for d in docs]
    desired = desired_statuses(resources, errors=[], domain_suffix="cluster.local")
    key = ResourceKey("HTTPRoute", "apps", "r")
    foreign = {"parentRef": {"name": "x"}, "controllerName": "example.com/other", "conditions": []}
    import datetime

    t0 = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)
    first = render_api_status(key, desired[key], obj={"status": {"parents": [foreign]}}, generation=3, now=t0)
    assert first is not None and first["parents"][0] == foreign
    ours = first["parents"][1]
    assert ours["conditions"][0]["observedGeneration"] == 3
    later = render_api_status(key, desired[key], obj={"status": first}, generation=3, now=t0 + datetime.timedelta(1))
    assert later == first  # nothing changed: the same status (nothing to write)
    # refused outright: Accepted False UnsupportedValue on each parent read from the object
    refused = ApiStatus(refused="spec.rules[0].timeouts.backendRequest: not supported")
    out = render_api_status(key, refused, obj=http_route(), generation=4, now=t0)
    assert out is not None
    assert out["parents"][0]["conditions"][0]["reason"] == "UnsupportedValue"
    assert "backendRequest" in out["parents"][0]["conditions"][0]["message"]


def test_allowed_routes_by_namespace_selector() -> None:
    gw = k8s_gateway({"name": "http", "port": 80, "protocol": "HTTP", "allowedRoutes": {"namespaces": {
        "from": "Selector", "selector": {"matchLabels": {"shared-gateway": "true"}}}}})  # fmt: skip

    def accepted(*namespaces: dict[str, Any]) -> str:
        result = _convert(gw, http_route(), service(), *namespaces)
        parent = result.status[ResourceKey("HTTPRoute", "apps", "r")]["parents"][0]
        return str({c["type"]: c["reason"] for c in parent["conditions"]}["Accepted"])

    labelled = {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {"name": "apps", "labels": {"shared-gateway": "true"}},
    }
    assert accepted() == "NotAllowedByListeners"
    assert accepted({**labelled, "metadata": {"name": "apps"}}) == "NotAllowedByListeners"
    assert accepted(labelled) == "Accepted"
    # Kubernetes' own name label selects too
    gw["spec"]["listeners"][0]["allowedRoutes"]["namespaces"]["selector"] = {"matchExpressions": [
        {"key": "kubernetes.io/metadata.name", "operator": "In", "values": ["apps"]}]}  # fmt: skip
    assert accepted() == "Accepted"


def test_the_kube_source_stores_namespaces_with_their_labels() -> None:
    store = ConfigStore()
    source = KubeSource(store=store, namespace="istio-system", log=logging.getLogger("test"))
    ns = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "apps", "labels": {"team": "a"}}}
    source.handler("Namespace")("ADDED", None, ns)
    [(_, stored)] = list(store.resources())
    assert stored.key == ResourceKey("Namespace", "", "apps") and stored.metadata.labels == {"team": "a"}
    source.handler("Namespace")("DELETED", ns, None)
    assert not list(store.resources())


def test_certificate_refs_of_another_namespace_need_a_reference_grant() -> None:
    https = {"name": "https", "port": 443, "protocol": "HTTPS",
             "tls": {"certificateRefs": [{"name": "c", "namespace": "certs"}]}}  # fmt: skip
    grant = {"apiVersion": "gateway.networking.k8s.io/v1beta1", "kind": "ReferenceGrant",
             "metadata": {"name": "g", "namespace": "certs"},
             "spec": {"from": [{"group": "gateway.networking.k8s.io", "kind": "Gateway", "namespace": "infra"}],
                      "to": [{"group": "", "kind": "Secret"}]}}  # fmt: skip

    def resolved(*docs: dict[str, Any], secrets: Any = frozenset({("certs", "c")})) -> tuple[Any, dict[str, str]]:
        result = _convert(k8s_gateway(https), *docs, secrets=secrets)
        [listener] = result.status[ResourceKey(KUBERNETES_GATEWAY, "infra", "gw")]["listeners"]
        return result, next(c for c in listener["conditions"] if c["type"] == "ResolvedRefs")

    result, condition = resolved()
    assert condition["reason"] == "RefNotPermitted" and "no ReferenceGrant" in condition["message"], condition
    assert not result.gateways  # nothing served
    result, condition = resolved(grant)
    assert condition["status"] == "True", condition
    [gateway] = result.gateways
    tls = gateway.spec.servers[0].tls
    assert tls is not None and tls.credential_name == "kubernetes-gateway://certs/c"
    _, condition = resolved(grant, secrets=frozenset())
    assert condition["reason"] == "InvalidCertificateRef" and "certs/c does not exist" in condition["message"]
    grant["spec"]["from"][0]["namespace"] = "elsewhere"  # a grant for Gateways of another namespace
    assert resolved(grant)[1]["reason"] == "RefNotPermitted"


def test_another_namespaces_secret_is_served_to_gateways_only_under_a_reference_grant() -> None:
    def grant(name: str = "", from_ns: str = "infra", kind: str = "Gateway") -> Any:
        return parse_resource({
            "apiVersion": "gateway.networking.k8s.io/v1beta1", "kind": "ReferenceGrant",
            "metadata": {"name": "g", "namespace": "certs"},
            "spec": {"from": [{"group": "gateway.networking.k8s.io", "kind": kind, "namespace": from_ns}],
                     "to": [{"group": "", "kind": "Secret", **({"name": name} if name else {})}]}})  # fmt: skip

    resource = "kubernetes-gateway://certs/c"
    assert dict(secret_grants([grant()])) == {("infra", "certs", ""): True}
    assert readable(secret_grants([grant()]), namespace="infra", resource=resource)
    assert readable(secret_grants([grant("c")]), namespace="infra", resource=resource)
    assert not readable(secret_grants([grant("other")]), namespace="infra", resource=resource)
    assert not readable(secret_grants([grant(from_ns="x")]), namespace="infra", resource=resource)
    assert not readable(secret_grants([grant(kind="HTTPRoute")]), namespace="infra", resource=resource)
    assert not readable({}, namespace="infra", resource=resource)
    assert readable({}, namespace="certs", resource=resource)  # its own namespace
    assert not readable({}, namespace="infra", resource="kubernetes-gateway://certs")  # malformed
    pem = Authority("grant test CA").issue("gw.example.com", sans=("gw.example.com",))
    secret = parse_resource({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "c", "namespace": "certs"},
                             "type": "kubernetes.io/tls",
                             "stringData": {"tls.crt": pem.cert.decode(), "tls.key": pem.key.decode()}})  # fmt: skip
    secrets = {("certs", "c"): secret}
    holder, why = source(secrets, namespace="infra", resource=resource)
    assert holder is None and "no ReferenceGrant in certs" in why
    holder, _ = source(secrets, namespace="infra", resource=resource, grants=secret_grants([grant()]))
    assert holder is secret


def test_addresses_naming_no_service_and_tls_options_are_refused() -> None:
    result = _convert(k8s_gateway(addresses=[{"value": "10.0.0.1"}]))  # (an address no Service has)
    conditions = {
        c["type"]: c["reason"] for c in result.status[ResourceKey(KUBERNETES_GATEWAY, "infra", "gw")]["conditions"]
    }
    assert conditions["Programmed"] == "AddressNotUsable" and not result.gateways
    result = _convert(k8s_gateway(addresses=[{"type": "NamedAddress", "value": "x"}]))
    conditions = {
        c["type"]: c["reason"] for c in result.status[ResourceKey(KUBERNETES_GATEWAY, "infra", "gw")]["conditions"]
    }
    assert conditions["Accepted"] == "UnsupportedAddress" and not result.gateways
    with pytest.raises(InvalidResource) as err:
        parse_resource(
            k8s_gateway(
                {
                    "name": "h",
                    "port": 443,
                    "protocol": "HTTPS",
                    "tls": {"certificateRefs": [{"name": "c"}], "options": {"a": "b"}},
                }
            )
        )
    assert err.value.field == "spec.listeners[0].tls.options"


@pytest.mark.parametrize(
    ("doc", "field"),
    [
        (http_route(hostnames=["Bad_Host"]), "spec.hostnames[0]"),
        (http_route(hostnames=["10.0.0.1"]), "spec.hostnames[0]"),
        (http_route(rules=[{"filters": [{"type": "URLRewrite", "urlRewrite": {"hostname": "*.example.com"}}]}]),
         "spec.rules[0].filters[0].urlRewrite.hostname"),
        (http_route(rules=[{"matches": [{"headers": [{"name": "bad header", "value": "x"}]}]}]),
         "spec.rules[0].matches[0].headers[0].name"),
        (k8s_gateway({"name": "h", "port": 80, "protocol": "HTTP", "hostname": "*"}), "spec.listeners[0].hostname"),
    ],
)  # fmt: skip
def test_hostnames_and_header_names_are_checked(doc: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidResource) as err:
        parse_resource(doc)
    assert err.value.field == field, err.value


def test_retry_and_backend_request_timeout_become_virtual_service_retries() -> None:
    def action(**rule: Any) -> dict[str, Any]:
        doc = http_route(rules=[{"backendRefs": [{"name": "web", "port": 80}], **rule}])
        [vs] = _convert(k8s_gateway(), doc, service()).virtual_services
        route = vs.spec.http[0]
        retries = route.retries.model_dump(by_alias=True, exclude_defaults=True) if route.retries else None
        return {"retries": retries, "timeout": route.timeout}

    assert action() == {"retries": None, "timeout": None}  # Istio's default policy ({}: attempts 0, none)
    assert action(retry={"attempts": 3, "codes": [500, 503]}) == {
        "retries": {"attempts": 3, "retryOn": "connect-failure,refused-stream,unavailable,cancelled,500,503"},
        "timeout": None,
    }
    assert action(retry={}) == {"retries": {"attempts": 2}, "timeout": None}
    assert action(retry={"attempts": 3, "backoff": "250ms"}) == {  # Envoy's retry back-off base interval
        "retries": {"attempts": 3, "backoff": "250ms"},
        "timeout": None,
    }
    assert action(retry={"attempts": 0, "backoff": "250ms"}) == {"retries": {}, "timeout": None}  # no retry to space
    assert action(timeouts={"request": "5s", "backendRequest": "1s"}) == {
        "retries": {"attempts": 2, "perTryTimeout": "1s"},
        "timeout": "5s",
    }
    # one try only: the backend timeout is the route's
    assert action(retry={"attempts": 0}, timeouts={"backendRequest": "1s"}) == {"retries": {}, "timeout": "1s"}
    assert action(timeouts={"backendRequest": "0s"}) == {"retries": None, "timeout": None}  # zero: none


def test_reference_grants_from_l4_routes_allow_their_backends() -> None:
    tcp = {"apiVersion": "gateway.networking.k8s.io/v1alpha2", "kind": "TCPRoute",
           "metadata": {"name": "t", "namespace": "apps"},
           "spec": {"parentRefs": [{"name": "gw", "namespace": "infra"}],
                    "rules": [{"backendRefs": [{"name": "web", "namespace": "team", "port": 80}]}]}}  # fmt: skip
    gw = k8s_gateway({"name": "tcp", "port": 9000, "protocol": "TCP", "allowedRoutes": {"namespaces": {"from": "All"}}})
    grant = {"apiVersion": "gateway.networking.k8s.io/v1beta1", "kind": "ReferenceGrant",
             "metadata": {"name": "g", "namespace": "team"},
             "spec": {"from": [{"group": "gateway.networking.k8s.io", "kind": "TCPRoute", "namespace": "apps"}],
                      "to": [{"group": "", "kind": "Service"}]}}  # fmt: skip

    def resolved(*docs: dict[str, Any]) -> str:
        parent = _convert(gw, tcp, service(ns="team"), *docs).status[ResourceKey("TCPRoute", "apps", "t")]["parents"][0]
        return str({c["type"]: c["reason"] for c in parent["conditions"]}["ResolvedRefs"])

    assert resolved() == "RefNotPermitted"
    assert resolved(grant) == "ResolvedRefs"
