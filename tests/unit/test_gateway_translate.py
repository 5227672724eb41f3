"""Gateway translation rules (pure): host intersection, which Gateways select a workload (namespace
scoping), servers merged per port with conflicts reported, SNI claimed once per port, Gateway ports mapped
to the workload Service's targetPort, exportTo of bound VirtualServices, the router snapshot holding no
sidecar configuration, and a gateway agent that cannot capture."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
from pydantic import ValidationError

from meshd.api.parse import parse_resource
from meshd.generate.generator import ConfigGenerator
from meshd.generate.options import GenerateOptions
from meshd.model.world import build_world
from meshd.settings import AgentSettings
from meshd.translate.gateway.hosts import covers, intersect
from meshd.translate.proxy import parse_node_id
from meshd.xds.resource import CLUSTER, LISTENER, ROUTE

ROUTER = "router~10.1.0.1~gw-1.istio-system~istio-system.svc.cluster.local"
POD = {"apiVersion": "v1", "kind": "Pod",
       "metadata": {"name": "gw-1", "namespace": "istio-system", "labels": {"istio": "ingressgateway"}},
       "status": {"podIP": "10.1.0.1"}}  # fmt: skip
WEB = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web", "namespace": "default"},
       "spec": {"ports": [{"name": "http", "port": 9080}]}}  # fmt: skip


def gateway(name: str, *servers: dict[str, Any], namespace: str = "default", ts: str = "", **selector: str) -> Any:
    meta: dict[str, Any] = {"name": name, "namespace": namespace}
    if ts:
        meta["creationTimestamp"] = ts
    return {"apiVersion": "networking.istio.io/v1", "kind": "Gateway", "metadata": meta,
            "spec": {"selector": selector or {"istio": "ingressgateway"}, "servers": list(servers)}}  # fmt: skip


def server(protocol: str, number: int, hosts: list[str], **extra: Any) -> dict[str, Any]:
    return {"port": {"number": number, "name": f"{protocol.lower()}-{number}", "protocol": protocol}, "hosts": hosts,
            **extra}  # fmt: skip


def vs(name: str, gateways: list[str], hosts: list[str], namespace: str = "default", **spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"hosts": hosts, "gateways": gateways}
    body.update(spec or {"http": [{"route": [{"destination": {"host": "web.default.svc.cluster.local"}}]}]})
    return {"apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
            "metadata": {"name": name, "namespace": namespace}, "spec": body}  # fmt: skip


def generate(*docs: dict[str, Any], options: GenerateOptions | None = None) -> ConfigGenerator:
    world = build_world([parse_resource(d) for d in (POD, WEB, *docs)], domain_suffix="cluster.local")
    generator = ConfigGenerator(world, options=options or GenerateOptions(), check=True)
    generator.precompute()
    return generator


def names(generator: ConfigGenerator, type_url: str, node: str = ROUTER) -> list[str]:
    return [r.name for r in generator.snapshot(parse_node_id(node)).select(type_url, None)]


def errors(generator: ConfigGenerator) -> list[str]:
    return [f"{e.key}: {e.field}: {e.message}" for e in generator.errors]


@pytest.mark.parametrize(
    ("a", "b", "met"),
    [
        ("*", "shop.example.com", "shop.example.com"),
        ("*.example.com", "shop.example.com", "shop.example.com"),
        ("shop.example.com", "*.example.com", "shop.example.com"),
        ("*.example.com", "*.shop.example.com", "*.shop.example.com"),
        ("*.example.com", "example.com", None),
        ("*.example.com", "newexample.com", None),
        ("Shop.Example.com", "shop.example.com", "shop.example.com"),
        ("*", "*", "*"),
    ],
)
def test_hosts_meet_as_istio_documents(a: str, b: str, met: str | None) -> None:
    assert intersect(a, b) == met
    assert covers("*", a) and not covers("a.com", "b.com")


def test_a_router_gets_gateway_listeners_routes_and_used_clusters_only() -> None:
    gen = generate(gateway("gw", server("HTTP", 80, ["*"])), vs("web", ["gw"], ["web.example.com"]))
    assert names(gen, LISTENER) == ["0.0.0.0_80"]  # no virtualInbound, no <ip>_9080 sidecar listener
    assert names(gen, ROUTE) == ["http.80"]
    assert names(gen, CLUSTER) == ["outbound|9080||web.default.svc.cluster.local"]
    unselected = ROUTER.replace("gw-1", "gw-2").replace("10.1.0.1", "10.1.0.2")  # no pod: no labels
    assert names(gen, LISTENER, unselected) == [] and names(gen, CLUSTER, unselected) == []
    # a sidecar is not served the gateway-only VirtualService
    sidecar = "sidecar~10.1.0.3~client.default~default.svc.cluster.local"
    routes = gen.snapshot(parse_node_id(sidecar)).select(ROUTE, None)
    assert b"web.example.com" not in b"".join(r.body for r in routes)


def test_gateway_bind_and_the_services_target_port() -> None:
    service = {"apiVersion": "v1", "kind": "Service",
               "metadata": {"name": "istio-ingressgateway", "namespace": "istio-system"},
               "spec": {"ports": [{"name": "http2", "port": 80, "targetPort": 8080}]}}  # fmt: skip
    slice_ = {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
              "metadata": {"name": "gw", "namespace": "istio-system",
                           "labels": {"kubernetes.io/service-name": "istio-ingressgateway"}},
              "ports": [{"name": "http2", "port": 8080}], "endpoints": [{"addresses": ["10.1.0.1"]}]}  # fmt: skip
    docs = (gateway("gw", server("HTTP", 80, ["*"]), server("HTTP", 81, ["*"], bind="10.1.0.1")), service, slice_)
    gen = generate(*docs, vs("web", ["gw"], ["*"]))
    assert names(gen, LISTENER) == ["0.0.0.0_8080", "10.1.0.1_81"]  # 80 -> 8080 as Istio maps it
    assert names(gen, ROUTE) == ["http.8080", "http.81.10.1.0.1"]
    standalone = generate(*docs, vs("web", ["gw"], ["*"]), options=GenerateOptions(gateway_bind_proxy_ip=True))
    assert sorted(names(standalone, LISTENER)) == ["10.1.0.1_8080", "10.1.0.1_81"]


def test_selection_by_labels_any_namespace_or_the_workloads_own() -> None:
    elsewhere = gateway("gw", server("HTTP", 80, ["*"]), namespace="apps")
    assert names(generate(elsewhere), LISTENER) == ["0.0.0.0_80"]
    scoped = GenerateOptions(scope_gateway_to_namespace=True)
    gen = generate(elsewhere, options=scoped)
    assert names(gen, LISTENER) == []
    assert any("spec.selector: no workload in its namespace carries" in e for e in errors(gen))
    everyone = gateway("gw", server("HTTP", 80, ["*"]))
    everyone["spec"]["selector"] = {}
    assert names(generate(everyone), LISTENER) == ["0.0.0.0_80"]  # an empty selector selects every gateway


def test_conflicts_are_reported_and_the_older_server_kept() -> None:
    older = gateway("a", server("HTTP", 8080, ["*"]), server("TCP", 9000, ["*"]), ts="2024-01-01T00:00:00Z")
    younger = gateway(
        "b",
        server("HTTPS", 8080, ["x.com"], tls={"mode": "SIMPLE", "serverCertificate": "/c", "privateKey": "/k"}),
        server("TCP", 9000, ["*"]),
        ts="2024-02-01T00:00:00Z",
    )
    youngest = gateway("c", server("HTTP", 8080, ["*"]), ts="2024-03-01T00:00:00Z")
    gen = generate(older, younger, youngest)
    found = errors(gen)
    assert any(e.startswith("Gateway default/b: spec.servers[0].port: port 8080 is already a http port") for e in found)
    assert any(
        e.startswith("Gateway default/b: spec.servers[1].port: port 9000 already carries the TCP server") for e in found
    )
    assert any("default/c: spec.servers[0].hosts: * on port 8080 is also served by default/a" in e for e in found)
    assert names(gen, LISTENER) == ["0.0.0.0_8080"]  # the TCP port has no route: no chain, no listener


def test_sni_is_claimed_once_per_port() -> None:
    tls = {"mode": "SIMPLE", "serverCertificate": "/c", "privateKey": "/k"}
    gen = generate(
        gateway("a", server("HTTPS", 443, ["a.com", "b.com"], tls=tls), ts="2024-01-01T00:00:00Z"),
        gateway("b", server("HTTPS", 443, ["b.com"], tls=tls), ts="2024-02-01T00:00:00Z"),
    )
    assert [e for e in errors(gen) if "SNI" in e] == [
        "Gateway default/b: spec.servers[0].hosts: SNI b.com on port 443 is already served by another chain: left out"
    ]
    assert names(gen, ROUTE) == ["https.443.https-443.a.default"]


def test_bound_virtual_services_need_export_to_the_gateways_namespace_and_a_server_host() -> None:
    private = vs("private", ["default/gw"], ["web.example.com"], namespace="apps")
    private["spec"]["exportTo"] = ["."]
    gen = generate(gateway("gw", server("HTTP", 80, ["apps/web.example.com", "./other.com"])), private)
    routes = b"".join(r.body for r in gen.snapshot(parse_node_id(ROUTER)).select(ROUTE, None))
    assert b"web.example.com" not in routes and b"blackhole:80" in routes  # nothing bound: 404
    exported = vs("exported", ["default/gw"], ["web.example.com", "other.com"], namespace="apps")
    gen = generate(gateway("gw", server("HTTP", 80, ["apps/web.example.com", "./other.com"])), exported)
    routes = b"".join(r.body for r in gen.snapshot(parse_node_id(ROUTER)).select(ROUTE, None))
    assert b"web.example.com:80" in routes and b"other.com:80" not in routes  # other.com: default's only


def test_a_gateway_proxy_never_captures() -> None:
    with pytest.raises(ValidationError, match="REDIRECT does not apply"):
        AgentSettings(pod="gw", proxy_type="router", interception_mode="REDIRECT")
    assert dataclasses.replace(parse_node_id(ROUTER)).type == "router"


def test_an_edit_into_a_broken_destination_keeps_the_last_accepted_version_at_the_gateway() -> None:
    from meshd.generate.generations import Generations

    generations = Generations(domain_suffix="cluster.local", options=GenerateOptions(), read_file=None, check=True)
    good = vs("web", ["gw"], ["web.example.com"])
    docs = [POD, WEB, gateway("gw", server("HTTP", 80, ["*"])), good]
    generator, errors = generations.next({(r := parse_resource(d)).key: r for d in docs}, revision=1, extra={})
    assert errors == []
    broken = vs(
        "web", ["gw"], ["web.example.com"], http=[{"route": [{"destination": {"host": "web", "subset": "v9"}}]}]
    )
    generator, errors = generations.next({(r := parse_resource(broken)).key: r}, revision=2, extra={})
    [error] = errors
    assert (str(error.key), error.field) == ("VirtualService default/web", "spec.http[0].route[0].destination.subset")
    assert error.message.endswith("the previous version stays in effect")
    routes = b"".join(r.body for r in generator.snapshot(parse_node_id(ROUTER)).select(ROUTE, None))
    assert b"outbound|9080||web.default.svc.cluster.local" in routes  # the accepted version still routes


def test_a_nacked_gateway_route_configuration_is_reported_on_its_gateway_and_bound_virtual_services() -> None:
    from meshd.generate.nacks import provenance

    https = server("HTTPS", 443, ["*"], tls={"mode": "SIMPLE", "credentialName": "c"})
    docs = [gateway("gw", server("HTTP", 80, ["*"]), https), vs("web", ["gw"], ["web.example.com"])]
    world = build_world([parse_resource(d) for d in (POD, WEB, *docs)], domain_suffix="cluster.local")
    expected = ["Gateway default/gw", "VirtualService default/web"]
    assert [str(k) for k in provenance(world, ROUTE, "http.80")] == expected
    assert [str(k) for k in provenance(world, ROUTE, "https.443.https-443.gw.default")] == expected
    assert provenance(world, ROUTE, "https.443.https-443.other.default") == []


def _gateway_hcm(generator: ConfigGenerator, listener_name: str) -> Any:
    from envoy.config.listener.v3 import listener_pb2
    from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2

    snapshot = generator.snapshot(parse_node_id(ROUTER))
    listener = listener_pb2.Listener.FromString(snapshot.resources[LISTENER][listener_name].body)
    hcm = hcm_pb2.HttpConnectionManager()
    assert listener.filter_chains[0].filters[-1].typed_config.Unpack(hcm)
    return hcm


def test_gateway_trusted_proxies_from_the_mesh_config_and_the_pod_annotation() -> None:
    """numTrustedProxies: the gateway pod's proxy.istio.io/config annotation wins over the mesh config's
    defaultConfig; an annotation meshd cannot use is reported on the pod (the mesh default applies)."""
    docs = (gateway("gw", server("HTTP", 80, ["*"])), vs("web", ["gw"], ["*"]))
    mesh_default = GenerateOptions(gateway_trusted_proxies=2)
    assert _gateway_hcm(generate(*docs), "0.0.0.0_80").xff_num_trusted_hops == 0
    assert _gateway_hcm(generate(*docs, options=mesh_default), "0.0.0.0_80").xff_num_trusted_hops == 2
    config = "gatewayTopology: {numTrustedProxies: 1, forwardClientCertDetails: SANITIZE}"
    pod: dict[str, Any] = {**POD, "metadata": {**POD["metadata"], "annotations": {"proxy.istio.io/config": config}}}
    world = build_world([parse_resource(d) for d in (pod, WEB, *docs)], domain_suffix="cluster.local")
    generator = ConfigGenerator(world, options=mesh_default, check=True)
    generator.precompute()
    assert _gateway_hcm(generator, "0.0.0.0_80").xff_num_trusted_hops == 1
    assert errors(generator) == [
        "Pod istio-system/gw-1: metadata.annotations[proxy.istio.io/config]: gatewayTopology.forwardClientCertDetails:"
        " not used by meshd, ignored"
    ]
    pod["metadata"]["annotations"] = {"proxy.istio.io/config": "gatewayTopology: {numTrustedProxies: lots}"}
    world = build_world([parse_resource(d) for d in (pod, WEB, *docs)], domain_suffix="cluster.local")
    generator = ConfigGenerator(world, options=mesh_default, check=True)
    generator.precompute()
    assert _gateway_hcm(generator, "0.0.0.0_80").xff_num_trusted_hops == 2
    [error] = errors(generator)
    assert "gatewayTopology.numTrustedProxies: 'lots' is not a number" in error
    assert error.endswith("the mesh config's gatewayTopology.numTrustedProxies applies")
