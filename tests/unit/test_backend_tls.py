"""BackendTLSPolicy: the model (strict, v1 and v1alpha3), its conversion into DestinationRules (TLS, SNI/SAN,
the CA from a ConfigMap, port-level for sectionName, oldest first, merged under a user DestinationRule), the
policy status (ancestors), the ConfigMap CA over SDS for proxies of every namespace."""

from __future__ import annotations

import datetime
from typing import Any

import pytest

from meshd.api.backendtls import BackendTLSPolicy
from meshd.api.meta import InvalidResource, ResourceKey
from meshd.api.parse import parse_resource
from meshd.model.gateway_api.backend_tls import MESH_CONTROLLER, with_backend_tls
from meshd.model.gateway_api.convert import convert
from meshd.model.gateway_api.inputs import inputs_of, policy_ports
from meshd.model.gateway_api.status import ApiStatus, desired_statuses, render_api_status
from meshd.model.world import build_world
from meshd.translate.secrets import secret_specs, source
from tests.certs import Authority

GW = "gateway.networking.k8s.io"
CA = Authority("unit CA").pem.decode()


def policy(name: str = "p", *, version: str = "v1", created: str = "", **validation: Any) -> dict[str, Any]:
    targets = validation.pop("targets", [{"group": "", "kind": "Service", "name": "secure"}])
    spec_validation = {"hostname": "secure.example.com", **validation}
    if "wellKnownCACertificates" not in spec_validation and "caCertificateRefs" not in spec_validation:
        spec_validation["caCertificateRefs"] = [{"group": "", "kind": "ConfigMap", "name": "ca"}]
    meta: dict[str, Any] = {"name": name, "namespace": "apps"}
    if created:
        meta["creationTimestamp"] = created
    return {
        "apiVersion": f"{GW}/{version}",
        "kind": "BackendTLSPolicy",
        "metadata": meta,
        "spec": {"targetRefs": targets, "validation": spec_validation},
    }


SERVICE = {
    "apiVersion": "v1",
    "kind": "Service",
    "metadata": {"name": "secure", "namespace": "apps"},
    "spec": {"ports": [{"name": "http", "port": 80}, {"name": "https", "port": 443}]},
}
CONFIG_MAP = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "ca", "namespace": "apps"},
              "data": {"ca.crt": CA}}  # fmt: skip


def _convert(*docs: dict[str, Any]) -> Any:
    resources = [parse_resource(d) for d in docs]
    world_services = build_world(resources, domain_suffix="cluster.local").services
    mesh = {(s.namespace, s.name): s for s in world_services.values()}
    inputs = inputs_of(resources)
    return convert(
        inputs,
        services={k: frozenset(p.number for p in s.ports) for k, s in mesh.items()},
        domain_suffix="cluster.local",
        service_ports=policy_ports(inputs.tls_policies, mesh),
    )


# -- the model -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("version", ["v1", "v1alpha3"])
def test_both_versions_parse(version: str) -> None:
    parsed = parse_resource(policy(version=version))
    assert parsed.key == ResourceKey("BackendTLSPolicy", "apps", "p")


@pytest.mark.parametrize(
    ("change", "field", "words"),
    [
        ({"options": {"x": "y"}}, "spec.options", "not supported by meshd"),
        ({"validation": {"hostname": "a.example.com"}}, "spec.validation.caCertificateRefs", "exactly one"),
        (
            {"validation": {"hostname": "a.example.com", "wellKnownCACertificates": "System",
                            "caCertificateRefs": [{"group": "", "kind": "ConfigMap", "name": "ca"}]}},
            "spec.validation.caCertificateRefs", "exactly one",
        ),
        ({"validation": {"hostname": "*.example.com", "wellKnownCACertificates": "System"}},
         "spec.validation.hostname", "hostname"),
        ({"validation": {"hostname": "a.example.com", "wellKnownCACertificates": "Other"}},
         "spec.validation.wellKnownCACertificates", "System"),
        ({"validation": {"hostname": "a.example.com", "wellKnownCACertificates": "System",
                         "subjectAltNames": [{"type": "URI", "hostname": "x"}]}},
         "spec.validation.subjectAltNames[0].uri", "sets uri"),
        ({"targetRefs": []}, "spec.targetRefs", "at least 1"),
        ({"validaton": {}}, "spec.validaton", "did you mean"),
    ],
)  # fmt: skip
def test_unsupported_or_invalid_fields_are_refused_by_name(change: dict[str, Any], field: str, words: str) -> None:
    doc = policy()
    doc["spec"] = {**doc["spec"], **change}
    with pytest.raises(InvalidResource) as err:
        parse_resource(doc, fail_closed=False)  # as the webhook
    assert err.value.key == ResourceKey("BackendTLSPolicy", "apps", "p")
    assert err.value.field.startswith(field) and words in err.value.message, err.value
    if change.get("targetRefs") == []:  # no target to fail closed on: refused outright by the sources too
        with pytest.raises(InvalidResource):
            parse_resource(doc)
        return
    kept = parse_resource(doc)  # as the sources: kept as a refused policy when its targets read (fails closed)
    assert isinstance(kept, BackendTLSPolicy) and kept.refusal is not None and kept.refusal.field == err.value.field


# -- conversion ------------------------------------------------------------------------------------------


def test_a_policy_becomes_a_simple_tls_rule_for_the_service() -> None:
    result = _convert(SERVICE, CONFIG_MAP, policy(subjectAltNames=[{"type": "Hostname", "hostname": "alt.example"}]))
    assert not result.errors
    (rule,) = result.destination_rules
    assert rule.key == ResourceKey("DestinationRule", "apps", "secure~backend-tls")
    assert rule.spec.host == "secure.apps.svc.cluster.local"
    tls = rule.spec.traffic_policy.tls
    assert (tls.mode, tls.sni, tls.subject_alt_names, tls.credential_name) == (
        "SIMPLE", "secure.example.com", ["alt.example"], "configmap://apps/ca",
    )  # fmt: skip
    status = result.status[ResourceKey("BackendTLSPolicy", "apps", "p")]
    (ancestor,) = status["ancestors"]
    assert ancestor["controllerName"] == MESH_CONTROLLER
    assert ancestor["ancestorRef"] == {"group": "", "kind": "Service", "name": "secure", "namespace": "apps"}
    assert {c["type"]: c["status"] for c in ancestor["conditions"]} == {"Accepted": "True", "ResolvedRefs": "True"}


def test_no_subject_alt_names_verify_the_hostname_and_system_cas_name_no_credential() -> None:
    result = _convert(SERVICE, policy(wellKnownCACertificates="System"))
    tls = result.destination_rules[0].spec.traffic_policy.tls
    assert tls.subject_alt_names == ["secure.example.com"] and tls.credential_name == ""


def test_section_name_is_port_level_and_an_unknown_one_is_target_not_found() -> None:
    targets = [{"group": "", "kind": "Service", "name": "secure", "sectionName": "https"}]
    result = _convert(SERVICE, CONFIG_MAP, policy(targets=targets))
    policy_tls = result.destination_rules[0].spec.traffic_policy
    assert policy_tls.tls is None
    assert [(s.port.number, s.tls.sni) for s in policy_tls.port_level_settings] == [(443, "secure.example.com")]
    targets = [{"group": "", "kind": "Service", "name": "secure", "sectionName": "nope"}]
    result = _convert(SERVICE, CONFIG_MAP, policy(targets=targets))
    assert not result.destination_rules
    ancestor = result.status[ResourceKey("BackendTLSPolicy", "apps", "p")]["ancestors"][0]
    assert ancestor["conditions"][0]["reason"] == "TargetNotFound"
    assert [e.field for e in result.errors] == ["spec.targetRefs[0]"]


def test_a_missing_or_unsupported_ca_reference_fails_closed() -> None:
    for refs, reason in (
        ([{"group": "", "kind": "ConfigMap", "name": "ca"}], "InvalidCACertificateRef"),  # no such ConfigMap
        ([{"group": "", "kind": "Secret", "name": "ca"}], "InvalidKind"),
    ):
        result = _convert(SERVICE, policy(caCertificateRefs=refs))
        tls = result.destination_rules[0].spec.traffic_policy.tls  # still TLS: never plaintext
        assert tls.mode == "SIMPLE" and tls.credential_name.startswith("configmap://apps/")
        conditions = result.status[ResourceKey("BackendTLSPolicy", "apps", "p")]["ancestors"][0]["conditions"]
        assert [(c["type"], c["status"], c["reason"]) for c in conditions] == [
            ("Accepted", "False", "NoValidCACertificate"),
            ("ResolvedRefs", "False", reason),
        ]
        assert [e.field for e in result.errors] == ["spec.validation.caCertificateRefs[0]"]


def test_the_oldest_policy_wins_and_the_other_is_reported() -> None:
    old = policy("old", created="2026-01-01T00:00:00Z")
    new = policy("new", created="2026-02-01T00:00:00Z", hostname="new.example.com")
    result = _convert(SERVICE, CONFIG_MAP, new, old)
    assert result.destination_rules[0].spec.traffic_policy.tls.sni == "secure.example.com"
    assert [(e.key.name, e.field) for e in result.errors] == [("new", "spec.targetRefs")]


def test_gateways_with_a_route_to_the_service_are_ancestors() -> None:
    gateway = {
        "apiVersion": f"{GW}/v1",
        "kind": "Gateway",
        "metadata": {"name": "gw", "namespace": "infra"},
        "spec": {
            "gatewayClassName": "istio",
            "listeners": [
                {"name": "http", "port": 80, "protocol": "HTTP", "allowedRoutes": {"namespaces": {"from": "All"}}}
            ],
        },
    }
    route = {"apiVersion": f"{GW}/v1", "kind": "HTTPRoute", "metadata": {"name": "r", "namespace": "apps"},
             "spec": {"parentRefs": [{"name": "gw", "namespace": "infra"}],
                      "rules": [{"backendRefs": [{"name": "secure", "port": 80}]}]}}  # fmt: skip
    result = _convert(SERVICE, CONFIG_MAP, gateway, route, policy())
    ancestors = result.status[ResourceKey("BackendTLSPolicy", "apps", "p")]["ancestors"]
    assert [(a["ancestorRef"]["kind"], a["ancestorRef"]["name"]) for a in ancestors] == [
        ("Service", "secure"),
        ("Gateway", "gw"),
    ]


def test_a_user_rule_for_the_host_takes_precedence_and_gets_the_policy_where_it_sets_no_tls() -> None:
    rules = _convert(SERVICE, CONFIG_MAP, policy()).destination_rules

    def user(tls: dict[str, Any] | None) -> Any:
        traffic: dict[str, Any] = {"connectionPool": {"tcp": {"maxConnections": 3}}}
        if tls is not None:
            traffic["tls"] = tls
        return parse_resource({"apiVersion": "networking.istio.io/v1", "kind": "DestinationRule",
                               "metadata": {"name": "mine", "namespace": "apps"},
                               "spec": {"host": "secure", "trafficPolicy": traffic}})  # fmt: skip

    merged, warnings = with_backend_tls([user(None)], rules, domain_suffix="cluster.local")
    assert [r.key.name for r in merged] == ["mine"] and not warnings
    assert merged[0].spec.traffic_policy.tls.sni == "secure.example.com"
    assert merged[0].spec.traffic_policy.connection_pool.tcp.max_connections == 3
    merged, warnings = with_backend_tls([user({"mode": "DISABLE"})], rules, domain_suffix="cluster.local")
    assert merged[0].spec.traffic_policy.tls.mode == "DISABLE"
    assert [(w.key, w.severity) for w in warnings] == [(ResourceKey("BackendTLSPolicy", "apps", "p"), "warning")]
    # a rule of another namespace does not merge: each namespace's rule applies as Istio's precedence says
    other = user(None).model_copy(update={"metadata": user(None).metadata.model_copy(update={"namespace": "x"})})
    merged, _ = with_backend_tls([other], rules, domain_suffix="cluster.local")
    assert sorted(r.key.name for r in merged) == ["mine", "secure~backend-tls"]


def test_the_configmap_ca_is_served_to_proxies_of_every_namespace() -> None:
    world = build_world([parse_resource(CONFIG_MAP)], domain_suffix="cluster.local")
    for namespace in ("apps", "elsewhere"):
        holder, why = source(world.secrets, namespace=namespace, resource="configmap://apps/ca")
        assert holder is not None, why
        (spec,) = secret_specs(world.secrets, namespace=namespace, names=["configmap://apps/ca"])
        built = spec.build()
        assert built.validation_context.trusted_ca.inline_bytes == CA.encode()
    holder, why = source(world.secrets, namespace="apps", resource="configmap://apps/nope")
    assert holder is None and "no ConfigMap" in why
    # a ConfigMap whose ca.crt is not PEM is refused (and so never served)
    with pytest.raises(InvalidResource) as err:
        parse_resource({**CONFIG_MAP, "data": {"ca.crt": "garbage"}})
    assert err.value.field == "data.ca.crt"


# -- status ---------------------------------------------------------------------------------------------


def test_status_is_desired_with_the_configmaps_and_rendered_over_other_controllers() -> None:
    resources = [parse_resource(d) for d in (SERVICE, CONFIG_MAP, policy())]
    desired = desired_statuses(resources, errors=[], domain_suffix="cluster.local")
    key = ResourceKey("BackendTLSPolicy", "apps", "p")
    theirs = {"ancestorRef": {"name": "x"}, "controllerName": "example.com/other", "conditions": []}
    now = datetime.datetime(2026, 12, 6, tzinfo=datetime.UTC)
    status = render_api_status(key, desired[key], obj={"status": {"ancestors": [theirs]}}, generation=4, now=now)
    assert status is not None
    assert status["ancestors"][0] == theirs
    ours = status["ancestors"][1]
    assert ours["controllerName"] == MESH_CONTROLLER
    assert {c["type"]: (c["status"], c["observedGeneration"]) for c in ours["conditions"]} == {
        "Accepted": ("True", 4),
        "ResolvedRefs": ("True", 4),
    }


def test_a_refused_policy_is_invalid_on_each_target() -> None:
    key = ResourceKey("BackendTLSPolicy", "apps", "p")
    obj = {"spec": {"targetRefs": [{"group": "", "kind": "Service", "name": "secure"}]}}
    now = datetime.datetime(2026, 12, 6, tzinfo=datetime.UTC)
    status = render_api_status(key, ApiStatus(refused="spec.options: no"), obj=obj, generation=1, now=now)
    assert status is not None
    (ancestor,) = status["ancestors"]
    assert ancestor["ancestorRef"]["name"] == "secure"
    assert ancestor["conditions"][0]["reason"] == "Invalid"


def test_a_refused_policy_fails_closed_on_its_targets() -> None:
    """A policy meshd refuses (here: `options`) is kept with its targets: they keep TLS with a CA that is never
    served (their pods expect TLS: nothing in plaintext); Accepted False Invalid; the error reported. The webhook
    (fail_closed=False) refuses it outright."""
    doc = policy()
    doc["spec"] = {**doc["spec"], "options": {"example.com/x": "y"}}
    with pytest.raises(InvalidResource):
        parse_resource(doc, fail_closed=False)
    result = _convert(SERVICE, CONFIG_MAP, doc)
    tls = result.destination_rules[0].spec.traffic_policy.tls
    assert tls.mode == "SIMPLE" and tls.credential_name == "configmap://apps/:unresolved"
    (ancestor,) = result.status[ResourceKey("BackendTLSPolicy", "apps", "p")]["ancestors"]
    assert [(c["type"], c["status"], c["reason"]) for c in ancestor["conditions"]] == [("Accepted", "False", "Invalid")]
    assert [(e.key.name, e.field) for e in result.errors] == [("p", "spec.options")]
    # unreadable targets: nothing to fail closed on, refused outright
    doc["spec"]["targetRefs"] = [{"kind": "Service"}]
    with pytest.raises(InvalidResource):
        parse_resource(doc)
