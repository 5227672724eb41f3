"""The push pipeline's sharing and incrementality: what a change rebuilds, and who hears about it."""

from __future__ import annotations

import dataclasses
import gc
import random
import weakref
from typing import Any

import pytest
from envoy.config.cluster.v3.cluster_pb2 import Cluster

from meshd.api.jwks import fetched_jwks
from meshd.api.meshconfig import parse_mesh_policy
from meshd.api.meta import Resource, ResourceKey
from meshd.api.parse import parse_resource
from meshd.generate.generator import ConfigGenerator
from meshd.generate.options import GenerateOptions
from meshd.model.state import WorldState
from meshd.translate.proxy import Proxy, parse_node_id
from meshd.xds.hub import Hub
from meshd.xds.resource import CLUSTER, ENDPOINT, LISTENER, ROUTE, SECRET
from meshd.xds.stream import SotwStream
from tests.certs import Authority

_CA = Authority()
_OTHER_CA = Authority("another CA")
_PAIRS = [_CA.issue(f"client-{i}", client=True) for i in range(2)]


def _secret(ns: str, name: str, version: int) -> dict[str, Any]:
    pair = _PAIRS[version]
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name, "namespace": ns},
        "stringData": {"cert": pair.cert.decode(), "key": pair.key.decode(), "cacert": _CA.pem.decode()},
    }


def _docs(ns: str, name: str, ips: list[str], *, weight: int | None = None) -> list[dict[str, Any]]:
    docs: list[dict[str, Any]] = [
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": name, "namespace": ns},
            "spec": {"ports": [{"name": "http", "port": 9080}]},
        },
        {
            "apiVersion": "discovery.k8s.io/v1",
            "kind": "EndpointSlice",
            "metadata": {"name": name, "namespace": ns, "labels": {"kubernetes.io/service-name": name}},
            "ports": [{"name": "http", "port": 9080}],
            "endpoints": [{"addresses": [ip]} for ip in ips],
        },
        {
            "apiVersion": "networking.istio.io/v1",
            "kind": "DestinationRule",
            "metadata": {"name": name, "namespace": ns},
            "spec": {"host": name, "subsets": [{"name": "v1", "labels": {"version": "v1"}}]},
        },
    ]
    if weight is not None:
        docs.append(
            {
                "apiVersion": "networking.istio.io/v1",
                "kind": "VirtualService",
                "metadata": {"name": name, "namespace": ns},
                "spec": {
                    "hosts": [name],
                    "http": [
                        {
                            "route": [
                                {"destination": {"host": name}, "weight": weight},
                                {"destination": {"host": name, "subset": "v1"}, "weight": 100 - weight},
                            ]
                        }
                    ],
                },
            }
        )
    return docs


def _sidecar(ns: str) -> dict[str, Any]:
    return {
        "apiVersion": "networking.istio.io/v1",
        "kind": "Sidecar",
        "metadata": {"name": "default", "namespace": ns},
        "spec": {"egress": [{"hosts": ["./*"]}]},
    }


# Extension providers for CUSTOM policies: one whose service comes and goes (random steps), one of an
# existing service, one of another kind.
MESH_POLICY = parse_mesh_policy(
    {
        "extensionProviders": [
            {"name": "ext", "envoyExtAuthzGrpc": {"service": "ext-authz.a.svc.cluster.local", "port": 9000}},
            {"name": "s1-http", "envoyExtAuthzHttp": {"service": "s1.a.svc.cluster.local", "port": 9080}},
            {"name": "tracing", "zipkin": {"service": "zipkin", "port": 9411}},
            # telemetry providers whose services come, go and change with the random steps
            {"name": "zipkin-s2", "zipkin": {"service": "s2.b.svc.cluster.local", "port": 9080}},
            {"name": "otel", "opentelemetry": {"service": "s1.a.svc.cluster.local", "port": 9080}},
            {"name": "otel-als", "envoyOtelAls": {"service": "ext-authz.a.svc.cluster.local", "port": 9000}},
            {"name": "json", "envoyFileAccessLog": {"path": "/dev/stdout", "logFormat": {"labels": {}}}},
        ],
        "accessLogFile": "/dev/stdout",
        "pathNormalization": {"normalization": "MERGE_SLASHES"},
        "trustDomainAliases": ["old.example.org"],
    }
)
OPTIONS = GenerateOptions(inbound_port=15006, sidecar_endpoint_port=15006, mesh=MESH_POLICY)


def _resources(docs: list[dict[str, Any]]) -> list[Resource]:
    return [parse_resource(d) for d in docs]


def _proxy(ns: str, n: int) -> Proxy:
    return parse_node_id(f"sidecar~10.9.{len(ns)}.{n}~client-{n}.{ns}~{ns}.svc.cluster.local")


def _router(ns: str) -> Proxy:
    return parse_node_id(f"router~10.8.{ord(ns)}.1~gateway-1.{ns}~{ns}.svc.cluster.local")


def _router_pod(
    proxy: Proxy, istio: str, gateway_name: str | None = None, trusted: int | None = None
) -> dict[str, Any]:
    """A gateway pod labelled `istio: <istio>` (and, as a Gateway API gateway's, with its gateway name; with
    `trusted`, its proxy.istio.io/config trusts that many proxies in front of it)."""
    labels = {"istio": istio} | ({"gateway.networking.k8s.io/gateway-name": gateway_name} if gateway_name else {})
    annotations = {"proxy.istio.io/config": f"gatewayTopology: {{numTrustedProxies: {trusted}}}"} if trusted else {}
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": proxy.pod, "namespace": proxy.namespace, "labels": labels,
                         "annotations": annotations},
            "status": {"podIP": proxy.ip}}  # fmt: skip


class Mesh:
    """Two namespaces with a Sidecar each (egress ./*) and two services per namespace."""

    def __init__(self) -> None:
        self.state = WorldState(domain_suffix="cluster.local")
        self.generator: ConfigGenerator | None = None
        docs = [_sidecar("a"), _sidecar("b")]
        for ns in ("a", "b"):
            docs += _docs(ns, "s1", ["10.0.0.1"], weight=80) + _docs(ns, "s2", ["10.0.0.2"])
        self.apply(_resources(docs))

    def apply(self, resources: list[Resource], *, deleted: tuple[ResourceKey, ...] = ()) -> ConfigGenerator:
        self.state.apply({**{r.key: r for r in resources}, **dict.fromkeys(deleted)})
        self.generator = ConfigGenerator(self.state.world(), options=OPTIONS, previous=self.generator, check=True)
        return self.generator


def test_proxies_of_one_scope_share_one_snapshot_layer_and_one_serialisation() -> None:
    mesh = Mesh()
    assert mesh.generator is not None
    one, two, other = (mesh.generator.snapshot(p) for p in (_proxy("a", 1), _proxy("a", 2), _proxy("b", 1)))
    assert one.layers[0] is two.layers[0]  # clusters + endpoints, computed once for the scope
    assert one.layers[1] is two.layers[1]  # routes
    assert one.layers[0] is not other.layers[0]
    assert one.select(CLUSTER, None)[0] is two.select(CLUSTER, None)[0]  # the same bytes object


def test_endpoint_change_rebuilds_only_its_assignments_and_wakes_only_its_scope() -> None:
    mesh = Mesh()
    hub = Hub()
    assert mesh.generator is not None
    hub.publish(mesh.generator, changed_at=0.0)
    conns = {ns: hub.connect(proxy=_proxy(ns, 1), stream=SotwStream(nonce_prefix=ns), now=0.0) for ns in ("a", "b")}
    before = {ns: c.snapshot for ns, c in conns.items()}

    # s2 in namespace b gets a second endpoint.
    generator = mesh.apply(_resources(_docs("b", "s2", ["10.0.0.2", "10.0.0.3"])[1:2]))
    for ns in ("a", "b"):
        generator.snapshot(_proxy(ns, 1))
    # Only the default ClusterLoadAssignment of b/s2: its v1 subset selects no endpoint before or after.
    assert generator.memo.built == 1
    assert hub.publish(generator, changed_at=1.0) == 1
    assert conns["a"].snapshot is before["a"] and not conns["a"].push_pending
    assert conns["b"].snapshot is not before["b"] and conns["b"].push_pending
    changed = {r.name for r in conns["b"].snapshot.select(ENDPOINT, None)} - {
        r.name for r in conns["b"].snapshot.select(ENDPOINT, None) if r in before["b"].select(ENDPOINT, None)
    }
    assert changed == {"outbound|9080||s2.b.svc.cluster.local"}


def test_virtual_service_change_rebuilds_one_route_configuration() -> None:
    mesh = Mesh()
    assert mesh.generator is not None
    old_routes = mesh.generator.snapshot(_proxy("a", 1)).select(ROUTE, None)
    mesh.generator.snapshot(_proxy("b", 1))
    generator = mesh.apply(_resources(_docs("a", "s1", ["10.0.0.1"], weight=50)[3:]))
    snap = generator.snapshot(_proxy("a", 1))
    generator.snapshot(_proxy("b", 1))
    assert generator.memo.built == 1
    assert snap.select(ROUTE, None)[0] is not old_routes[0]
    assert snap.select(CLUSTER, None) == mesh.generator.snapshot(_proxy("a", 1)).select(CLUSTER, None)


def test_unused_resources_are_dropped_after_a_generation() -> None:
    mesh = Mesh()
    assert mesh.generator is not None
    mesh.generator.snapshot(_proxy("a", 1))
    first = mesh.generator
    # Remove namespace a's services: the next generation must not keep their resources alive.
    removed = [r for r in _resources(_docs("a", "s1", ["10.0.0.1"], weight=80) + _docs("a", "s2", ["10.0.0.2"]))]
    mesh.state.apply({r.key: None for r in removed})
    second = ConfigGenerator(
        mesh.state.world(), options=GenerateOptions(inbound_port=15006, sidecar_endpoint_port=15006), previous=first
    )
    second.snapshot(_proxy("a", 1))
    third = ConfigGenerator(
        mesh.state.world(), options=GenerateOptions(inbound_port=15006, sidecar_endpoint_port=15006), previous=second
    )
    third.snapshot(_proxy("a", 1))
    assert len(third.memo._entries) == len(second.memo._entries) <= 1  # only the (empty-scope) listener


def test_an_old_generation_is_freed_by_reference_counting_alone() -> None:
    """meshd freezes GC between pushes (gcpolicy.py): a reference cycle through a generator would keep
    every old World, memo and snapshot alive until a full collection (the churn benchmark's RSS)."""
    mesh = Mesh()
    assert mesh.generator is not None
    for proxy in (_proxy("a", 1), _proxy("b", 1)):
        mesh.generator.snapshot(proxy)
    mesh.generator.precompute()
    old = weakref.ref(mesh.generator)
    gc.disable()
    try:
        mesh.apply(_resources(_docs("a", "s1", ["10.0.0.9"], weight=80)))
        assert mesh.generator is not None
        mesh.generator.precompute()
        mesh.generator.snapshot(_proxy("a", 1))
        mesh.apply([])  # the generation after next no longer reads the first one's tables either
        assert old() is None, "the first generation is still referenced (a cycle?)"
    finally:
        gc.enable()


def test_editing_a_destination_rule_updates_clusters_of_a_carried_scope() -> None:
    mesh = Mesh()
    assert mesh.generator is not None
    names = {r.name for r in mesh.generator.snapshot(_proxy("a", 1)).select(CLUSTER, None)}
    assert "outbound|9080|v2|s1.a.svc.cluster.local" not in names
    rule = _docs("a", "s1", ["10.0.0.1"])[2]
    rule["spec"]["subsets"].append({"name": "v2", "labels": {"version": "v2"}})
    generator = mesh.apply(_resources([rule]))
    names = {r.name for r in generator.snapshot(_proxy("a", 1)).select(CLUSTER, None)}
    assert "outbound|9080|v2|s1.a.svc.cluster.local" in names


def test_a_ca_config_map_change_reaches_a_carried_secret_layer() -> None:
    """A BackendTLSPolicy's CA is served over SDS from its ConfigMap: a new ca.crt (nothing else changed) must
    reach the proxy whose secrets layer is carried (the layer's key holds the ConfigMap's CA)."""
    mesh = Mesh()

    def config_map(ca: Authority) -> dict[str, Any]:
        return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "ca1", "namespace": "a"},
                "data": {"ca.crt": ca.pem.decode()}}  # fmt: skip

    policy = {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "BackendTLSPolicy",
              "metadata": {"name": "p", "namespace": "a"},
              "spec": {"targetRefs": [{"group": "", "kind": "Service", "name": "s1"}],
                       "validation": {"hostname": "s1.example.com", "caCertificateRefs": [
                           {"group": "", "kind": "ConfigMap", "name": "ca1"}]}}}  # fmt: skip
    for ca in (_CA, _OTHER_CA, _CA):
        generator = mesh.apply(_resources([policy, config_map(ca)]))
        held = generator.snapshot(_proxy("a", 1)).resources[SECRET]["configmap://a/ca1"].body
        assert ca.pem in held  # the current CA


def test_an_endpoint_change_in_an_untouched_scope_after_many_pushes_rebuilds_one_assignment() -> None:
    mesh = Mesh()
    hub = Hub()
    assert mesh.generator is not None
    hub.publish(mesh.generator, changed_at=0.0)
    for ns in ("a", "b"):
        hub.connect(proxy=_proxy(ns, 1), stream=SotwStream(nonce_prefix=ns), now=0.0)
    for i in range(3):  # pushes that only touch namespace a: b's layers are carried whole
        generator = mesh.apply(_resources(_docs("a", "s2", ["10.0.0.2", f"10.0.1.{i}"])[1:2]))
        hub.publish(generator, changed_at=float(i))
    generator = mesh.apply(_resources(_docs("b", "s2", ["10.0.0.2", "10.0.0.9"])[1:2]))
    hub.publish(generator, changed_at=9.0)
    assert generator.memo.built == 1  # b's other resources are still in the memo


_LOCALITIES: list[dict[str, str]] = [
    {},
    {"istio-locality": "r1.z1"},
    {"istio-locality": "r1.z2"},
    {"topology.kubernetes.io/region": "r2", "topology.kubernetes.io/zone": "z3", "tier": "gold"},
]
_OUTLIER = {"consecutive5xxErrors": 2}
_POLICIES: list[dict[str, Any] | None] = [
    None,
    {"loadBalancer": {"simple": "RANDOM"}, "connectionPool": {"tcp": {"maxConnections": 3}}},
    {"outlierDetection": _OUTLIER, "loadBalancer": {"localityLbSetting": {"failover": [{"from": "r1", "to": "r2"}]}}},
    {"outlierDetection": _OUTLIER, "loadBalancer": {"localityLbSetting": {"failoverPriority": ["tier"]}}},
    {"loadBalancer": {"localityLbSetting": {"distribute": [{"from": "r1/*", "to": {"r1/z1": 70, "r2/*": 30}}]}}},
    {"loadBalancer": {"consistentHash": {"httpHeaderName": "x-user"}}},
]  # fmt: skip


def _routing_vs(rng: random.Random, ns: str) -> dict[str, Any]:
    """A VirtualService whose routes depend on more than its own hosts: a delegate (its roots'
    routes change), a root delegating and matching by source labels, or a wildcard host."""
    # subset v2 exists only while a random rule change has added it: the VirtualService is then
    # rejected or accepted without changing itself (its check must follow the rule)
    route = [{"destination": {"host": rng.choice(["s1", "s2"]), "subset": rng.choice(["", "v1", "v2"])}}]
    kind = rng.choice(["delegate", "root", "wildcard"])
    if kind == "delegate":
        spec: dict[str, Any] = {"http": [{"match": [{"uri": {"prefix": "/d"}}], "route": route}]}
    elif kind == "root":
        spec = {
            "hosts": ["s2"],
            "http": [
                {"match": [{"sourceLabels": {"app": rng.choice(["wide", "narrow"])}}], "route": route},
                {"delegate": {"name": "delegate"}},
            ],
        }
    else:
        spec = {"hosts": [f"*.{ns}.svc.cluster.local"], "http": [{"timeout": f"{rng.randint(1, 3)}s", "route": route}]}
    return {"apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
            "metadata": {"name": kind, "namespace": ns}, "spec": spec}  # fmt: skip


def _gateway(rng: random.Random, ns: str) -> dict[str, Any]:
    """A Gateway selecting the router pods (or not), with HTTP, HTTPS (credentialName), TCP and TLS
    passthrough servers whose hosts, modes and Secrets vary."""
    servers: list[dict[str, Any]] = [
        {"port": {"number": 80, "name": "http", "protocol": "HTTP"},
         "hosts": [rng.choice(["*", "s1.example.com", "./*", "b/*"])]},
    ]  # fmt: skip
    if rng.random() < 0.7:
        mode = rng.choice(["SIMPLE", "MUTUAL", "ISTIO_MUTUAL", "OPTIONAL_MUTUAL"])
        tls: dict[str, Any] = {"mode": mode}
        if mode != "ISTIO_MUTUAL":
            tls["credentialName"] = rng.choice(["c1", "c2", "c3", "kubernetes-gateway://b/c1"])  # b: a ReferenceGrant
        servers.append({"port": {"number": 443, "name": "https", "protocol": "HTTPS"},
                        "hosts": [rng.choice(["*", "s1.example.com"])], "tls": tls})  # fmt: skip
    if rng.random() < 0.6:
        servers.append({"port": {"number": 31400, "name": "tcp", "protocol": "TCP"}, "hosts": ["*"]})
    if rng.random() < 0.5:
        servers.append({"port": {"number": 8443, "name": "tls", "protocol": "TLS"},
                        "hosts": ["*.example.com", "*.local"],
                        "tls": {"mode": rng.choice(["PASSTHROUGH", "AUTO_PASSTHROUGH"])}})  # fmt: skip
    return {"apiVersion": "networking.istio.io/v1", "kind": "Gateway",
            "metadata": {"name": rng.choice(["gw", "gw", "gw2"]), "namespace": ns},
            "spec": {"selector": {"istio": rng.choice(["ingressgateway", "ingressgateway", "other"])},
                     "servers": servers}}  # fmt: skip


def _gateway_vs(rng: random.Random, ns: str) -> dict[str, Any]:
    """A VirtualService bound to a Gateway (and maybe the mesh), with http, tcp and tls routes."""
    dest = {"host": rng.choice(["s1", "s2"]), "subset": rng.choice(["", "v1", "v2"])}
    gateways = [rng.choice(["gw", "gw", f"{ns}/gw2", "a/gw", "missing"])] + (["mesh"] if rng.random() < 0.3 else [])
    spec: dict[str, Any] = {
        "hosts": [rng.choice(["*", "s1.example.com", "s1"])],
        "gateways": gateways,
        "http": [{"match": [{"uri": {"prefix": "/g"}, **({"gateways": [gateways[0]]} if rng.random() < 0.3 else {})}],
                  "route": [{"destination": dest}]}],
        "tcp": [{"route": [{"destination": {"host": "s1", "subset": "v1"}, "weight": rng.choice([20, 80])},
                           {"destination": {"host": "s2"}, "weight": 50}]}],
    }  # fmt: skip
    if rng.random() < 0.5:
        spec["hosts"].append("x.example.com")
        spec["tls"] = [{"match": [{"sniHosts": ["x.example.com"]}], "route": [{"destination": {"host": "s2"}}]}]
    return {"apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
            "metadata": {"name": rng.choice(["bound", "bound2"]), "namespace": ns}, "spec": spec}  # fmt: skip


_MODES = ["STRICT", "PERMISSIVE", "DISABLE", "UNSET"]
# A pod with a sidecar or not, captured (injected, or annotated REDIRECT) or not
_SIDECAR: list[dict[str, str]] = [{}, {"security.istio.io/tlsMode": "istio"}]
_CAPTURED: list[dict[str, str]] = [
    {},
    {"sidecar.istio.io/status": "{}"},
    {"sidecar.istio.io/interceptionMode": "REDIRECT"},
    {"sidecar.istio.io/status": "{}", "sidecar.istio.io/interceptionMode": "NONE"},
]


def _peer_authentication(rng: random.Random, ns: str) -> dict[str, Any]:
    """A PeerAuthentication at mesh, namespace or workload level (with port-level modes)."""
    level = rng.choice(["mesh", "namespace", "workload"])
    spec: dict[str, Any] = {"mtls": {"mode": rng.choice(_MODES)}}
    if level == "workload":
        spec["selector"] = {"matchLabels": {"app": rng.choice(["wide", "narrow"])}}
        if rng.random() < 0.6:
            spec["portLevelMtls"] = {9080: {"mode": rng.choice(_MODES)}}
    return {"apiVersion": "security.istio.io/v1beta1", "kind": "PeerAuthentication",
            "metadata": {"name": level, "namespace": "istio-system" if level == "mesh" else ns},
            "spec": spec}  # fmt: skip


def _tcp_service(rng: random.Random, ns: str) -> list[dict[str, Any]]:
    """A TCP and a TLS service (with or without a ClusterIP), their endpoints and subsets v1/v2 (or only v1)."""
    ip = rng.choice([None, "10.96.7.1", "10.96.7.2"])
    spec: dict[str, Any] = {"ports": [{"name": "tcp", "port": 9000}, {"name": "tls", "port": 8443}]}
    if ip is not None:
        spec["clusterIP"] = ip
    subsets = [{"name": "v1", "labels": {"version": "v1"}}] + (
        [{"name": "v2", "labels": {"version": "v2"}}] if rng.random() < 0.7 else []
    )
    return [
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "t1", "namespace": ns}, "spec": spec},
        {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
         "metadata": {"name": "t1", "namespace": ns, "labels": {"kubernetes.io/service-name": "t1"}},
         "ports": [{"name": "tcp", "port": 9000}, {"name": "tls", "port": 8443}],
         "endpoints": [{"addresses": ["10.0.0.1"]}, {"addresses": ["10.0.0.2"]}]},
        {"apiVersion": "networking.istio.io/v1", "kind": "DestinationRule", "metadata": {"name": "t1", "namespace": ns},
         "spec": {"host": "t1", "subsets": subsets,
                  "trafficPolicy": rng.choice([{}, {"connectionPool": {"tcp": {"idleTimeout": "5s"}}},
                                               {"tunnel": {"targetHost": "192.0.2.9", "targetPort": 9000}},
                                               {"tunnel": {"targetHost": "192.0.2.9", "targetPort": 9000,
                                                           "protocol": "POST"}}])}},
    ]  # fmt: skip


def _l4_route(rng: random.Random, ns: str) -> dict[str, Any]:
    """A VirtualService with tcp routes (weights, port / sourceLabels / destinationSubnets / sourceSubnet
    matches) or tls routes by SNI, to subsets that may not exist (rejected, then accepted once a DestinationRule
    change adds them)."""

    def destination(subset: str) -> dict[str, Any]:
        return {"destination": {"host": "t1", "subset": subset, "port": {"number": 9000}}}

    matches = rng.choice([[], [{"port": 9000}], [{"sourceLabels": {"app": rng.choice(["wide", "narrow"])}}],
                          [{"sourceLabels": {"app": "narrow"}}], [{"destinationSubnets": ["192.0.2.0/24"]}],
                          [{"destinationSubnets": ["192.0.2.0/24"]}], [{"sourceSubnet": "127.0.0.0/8"}]])  # fmt: skip
    weight = rng.choice([0, 30, 80, 80])
    tcp = [
        {"match": matches, "route": [destination("v2")]},
        {"route": [{**destination("v1"), "weight": weight}, {**destination("v2"), "weight": 100 - weight}]},
    ]
    if rng.random() < 0.5:
        spec: dict[str, Any] = {"hosts": ["t1"], "tcp": tcp}
    else:
        sni = rng.choice(["t1.example.com", "*.example.com"])
        spec = {"hosts": ["t1", "*.example.com"],
                "tls": [{"match": [{"sniHosts": [sni], "port": 8443,
                                   **{k: v for m in matches[:1] for k, v in m.items() if k != "sourceSubnet"}}],
                         "route": [{"destination": {"host": "t1", "subset": rng.choice(["v1", "v2"])}}]}]}  # fmt: skip
    return {"apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
            "metadata": {"name": "l4", "namespace": ns}, "spec": spec}  # fmt: skip


def _egress(rng: random.Random, ns: str) -> dict[str, Any]:
    """An egress ServiceEntry: resolution NONE (captured proxies only), DNS or STATIC; a wildcard, CIDR
    ranges or single addresses; TLS, HTTP or TCP ports (several share 443 by SNI)."""
    resolution = rng.choice(["NONE", "NONE", "DNS", "STATIC"])
    host = rng.choice(["api.example.com", "*.wild.test", "db.example.net"])
    if host.startswith("*") and resolution in ("DNS", "STATIC"):
        resolution = "NONE"
    port = rng.choice([{"number": 443, "name": "tls", "protocol": "TLS"},
                       {"number": 80, "name": "http", "protocol": "HTTP"},
                       {"number": 9000, "name": "tcp", "protocol": "TCP"}])  # fmt: skip
    spec: dict[str, Any] = {"hosts": [host], "ports": [port], "resolution": resolution}
    if resolution in ("NONE", "STATIC") and rng.random() < 0.5:
        spec["addresses"] = [rng.choice(["192.0.2.0/24", "198.51.100.7/32", "198.51.100.8"])]
    if resolution == "STATIC":
        spec["endpoints"] = [{"address": "10.20.0.1"}]
    name = "egress-" + host.replace("*", "star").replace(".", "-")
    return {"apiVersion": "networking.istio.io/v1", "kind": "ServiceEntry",
            "metadata": {"name": name, "namespace": ns}, "spec": spec}  # fmt: skip


def _ingress_sidecar(rng: random.Random, ns: str) -> dict[str, Any]:
    """A Sidecar for app=narrow workloads declaring ingress ports (or none), an inboundConnectionPool, TLS."""
    ingress = [{"port": {"number": 8088, "protocol": rng.choice(["HTTP", "TCP"]), "name": "in"},
                "defaultEndpoint": rng.choice(["127.0.0.1:9088", "0.0.0.0:9089"]),
                "captureMode": rng.choice(["DEFAULT", "NONE"])}]  # fmt: skip
    if rng.random() < 0.4:
        ingress.append({"port": {"number": 8443, "protocol": "TCP", "name": "tls"}, "defaultEndpoint": "127.0.0.1:7443",
                        "tls": {"mode": "SIMPLE", "serverCertificate": "/c.pem", "privateKey": "/k.pem"}})  # fmt: skip
    spec: dict[str, Any] = {"workloadSelector": {"labels": {"app": "narrow"}}}
    if rng.random() < 0.8:
        spec["ingress"] = ingress
    if rng.random() < 0.5:
        spec["inboundConnectionPool"] = {"tcp": {"maxConnections": rng.choice([5, 50])}}
    if rng.random() < 0.5:
        spec["outboundTrafficPolicy"] = {"mode": rng.choice(["ALLOW_ANY", "REGISTRY_ONLY"])}
    return {"apiVersion": "networking.istio.io/v1", "kind": "Sidecar",
            "metadata": {"name": "ingress", "namespace": ns}, "spec": spec}  # fmt: skip


def _selector_rule(rng: random.Random, ns: str) -> dict[str, Any]:
    """A DestinationRule for s1 selecting app=wide or app=narrow workloads, with its own policy."""
    policy = rng.choice([{"loadBalancer": {"simple": "RANDOM"}},
                         {"proxyProtocol": {"version": rng.choice(["V1", "V2"])}},
                         {"tls": {"mode": "SIMPLE", "sni": "s1.example.com"}}])  # fmt: skip
    return {"apiVersion": "networking.istio.io/v1", "kind": "DestinationRule",
            "metadata": {"name": "selected", "namespace": ns},
            "spec": {"host": "s1", "workloadSelector": {"matchLabels": {"app": rng.choice(["wide", "narrow"])}},
                     "trafficPolicy": policy, "subsets": [{"name": "v1", "labels": {"version": "v1"}}]}}  # fmt: skip


_L4_CHANGES = {"tcp-service": _tcp_service, "l4-route": _l4_route, "egress": _egress,
               "ingress": _ingress_sidecar, "selector-rule": _selector_rule}  # fmt: skip


_HCM = "envoy.filters.network.http_connection_manager"
_LUA = "function envoy_on_response(h) h:headers():add('x-ef', '1') end"
_LUA_CALL = (
    "function envoy_on_request(h) h:httpCall('outbound|9080|v1|s2.b.svc.cluster.local', "
    "{[':method'] = 'GET', [':path'] = '/ef-call', [':authority'] = 's2'}, '', 100) end"
)
_EF_PATCHES: list[dict[str, Any]] = [
    {"applyTo": "CLUSTER", "match": {"context": "SIDECAR_OUTBOUND", "cluster": {"service": "s1.a.svc.cluster.local"}},
     "patch": {"operation": "MERGE", "value": {"connect_timeout": "7s"}}},
    {"applyTo": "CLUSTER", "match": {"cluster": {"portNumber": 80}},
     "patch": {"operation": "MERGE", "value": {"connect_timeout": "3s"}}},
    {"applyTo": "HTTP_FILTER",
     "match": {"context": "ANY", "listener": {"filterChain": {"filter": {
         "name": _HCM, "subFilter": {"name": "envoy.filters.http.router"}}}}},
     "patch": {"operation": "INSERT_BEFORE", "value": {"name": "envoy.filters.http.lua", "typed_config": {
         "@type": "type.googleapis.com/envoy.extensions.filters.http.lua.v3.Lua", "inline_code": _LUA}}}},
    {"applyTo": "LISTENER_FILTER", "match": {"listener": {"listenerFilter": "envoy.filters.listener.original_dst"}},
     "patch": {"operation": "REMOVE"}},
    {"applyTo": "HTTP_ROUTE", "match": {"context": "SIDECAR_OUTBOUND", "routeConfiguration": {"vhost": {"route": {
         "action": "ROUTE"}}}}, "patch": {"operation": "MERGE", "value": {"route": {"timeout": "9s"}}}},
    {"applyTo": "HTTP_ROUTE", "match": {"context": "SIDECAR_INBOUND", "routeConfiguration": {"vhost": {}}},
     "patch": {"operation": "INSERT_FIRST", "value": {"name": "ef", "match": {"prefix": "/ef"},
                                                       "direct_response": {"status": 418}}}},
    {"applyTo": "VIRTUAL_HOST", "match": {"context": "GATEWAY"},
     "patch": {"operation": "MERGE", "value": {"include_request_attempt_count": True}}},
    {"applyTo": "CLUSTER", "match": {"context": "SIDECAR_OUTBOUND", "proxy": {"proxyVersion": "^1\\.2"}},
     "patch": {"operation": "MERGE", "value": {"connect_timeout": "2s"}}},
    {"applyTo": "CLUSTER", "match": {"cluster": {"service": "s2.b.svc.cluster.local"}},  # Envoy would refuse it
     "patch": {"operation": "MERGE", "value": {"connect_timeout": "0s"}}},
    # for the node agents that apply bootstrap patches (node metadata MESHD_BOOTSTRAP_PATCHES), reported on the rest
    {"applyTo": "BOOTSTRAP", "patch": {"operation": "MERGE", "value": {"node": {"metadata": {"EF": "1"}}}}},
    {"applyTo": "BOOTSTRAP", "match": {"context": "GATEWAY"},
     "patch": {"operation": "MERGE", "value": {"stats_flush_interval": "10s"}}},
    {"applyTo": "BOOTSTRAP", "match": {"context": "SIDECAR_INBOUND", "proxy": {"proxyVersion": "^1\\.2"}},
     "patch": {"operation": "MERGE", "value": {"layered_runtime": {"layers": [{"name": "ef", "static_layer": {}}]}}}},
    {"applyTo": "HTTP_FILTER",  # names a cluster: a gateway it applies to is sent that cluster
     "match": {"context": "GATEWAY", "listener": {"filterChain": {"filter": {
         "name": _HCM, "subFilter": {"name": "envoy.filters.http.router"}}}}},
     "patch": {"operation": "INSERT_BEFORE", "value": {"name": "envoy.filters.http.lua", "typed_config": {
         "@type": "type.googleapis.com/envoy.extensions.filters.http.lua.v3.Lua", "inline_code": _LUA_CALL}}}},
]  # fmt: skip
_EF_CLUSTER = "outbound|9080|v1|s2.b.svc.cluster.local"


AGENT_MARK = ("MESHD_BOOTSTRAP_PATCHES", "true")  # node metadata: the agent applies bootstrap patches


def _envoy_filter(rng: random.Random) -> dict[str, Any]:
    """An EnvoyFilter at mesh, namespace or workload level with one to three of the patches above."""
    ns = rng.choice(["a", "b", "istio-system"])
    spec: dict[str, Any] = {"configPatches": rng.sample(_EF_PATCHES, rng.randint(1, 3)), "priority": rng.randint(-1, 1)}
    selector = rng.choice([None, "wide", "narrow", "ingressgateway"])
    if selector is not None:
        spec["workloadSelector"] = {"labels": {"app" if selector != "ingressgateway" else "istio": selector}}
    return {"apiVersion": "networking.istio.io/v1alpha3", "kind": "EnvoyFilter",
            "metadata": {"name": f"ef{rng.randint(0, 3)}", "namespace": ns}, "spec": spec}  # fmt: skip


def _wasm_plugin(rng: random.Random) -> dict[str, Any]:
    """A WasmPlugin at mesh, namespace or workload level (or on the gateways), HTTP or NETWORK, of any phase
    and priority, a file:// or http:// module, with or without traffic selectors, plugin config and environment."""
    ns = rng.choice(["a", "b", "istio-system"])
    spec: dict[str, Any] = {
        "phase": rng.choice(["AUTHN", "AUTHZ", "STATS", "UNSPECIFIED_PHASE"]),
        "priority": rng.randint(-1, 1),
        "failStrategy": rng.choice(["FAIL_CLOSE", "FAIL_OPEN"]),
    }
    kind = rng.choice([None, "HTTP", "NETWORK", "NETWORK"])
    if kind is not None:
        spec["type"] = kind
    if rng.random() < 0.5:
        spec["url"] = "file:///etc/wasm/plugin.wasm"
    else:
        spec["url"], spec["sha256"] = f"http://10.9.9.{rng.randint(1, 2)}:8080/p.wasm", "ab" * 32
    selector = rng.choice([None, "wide", "narrow", "ingressgateway"])
    if selector is not None:
        spec["selector"] = {"matchLabels": {"app" if selector != "ingressgateway" else "istio": selector}}
    if rng.random() < 0.5:
        spec["match"] = [
            {
                "mode": rng.choice(["CLIENT", "SERVER", "CLIENT_AND_SERVER"]),
                "ports": rng.choice([[], [{"number": 9080}], [{"number": 80}]]),
            }
        ]
    if rng.random() < 0.5:
        spec["pluginConfig"] = {"v": rng.randint(0, 2)}
        spec["vmConfig"] = {"env": [{"name": "A", "value": str(rng.randint(0, 1))}, {"name": "B", "valueFrom": "HOST"}]}
    return {"apiVersion": "extensions.istio.io/v1alpha1", "kind": "WasmPlugin",
            "metadata": {"name": f"wp{rng.randint(0, 3)}", "namespace": ns}, "spec": spec}  # fmt: skip


def _wasm_seen(snapshot: object) -> int:
    """Listeners with a WasmPlugin's filter (an ECDS reference to the Wasm filter type)."""
    return sum(b"wasm.v3.Wasm" in body for body in _content(snapshot).get(LISTENER, {}).values())


def _network_wasm_seen(snapshot: object) -> int:
    """Listeners with a NETWORK WasmPlugin's filter (an ECDS reference to the Wasm network filter type)."""
    return sum(b"network.wasm.v3.Wasm" in body for body in _content(snapshot).get(LISTENER, {}).values())


def _envoy_filters_seen(snapshot: object) -> int:
    """Listeners a Lua filter or an inline route of the EnvoyFilters above reached."""
    return sum(b"x-ef" in body or b"/ef" in body for body in _content(snapshot).get(LISTENER, {}).values())


def _features_seen(snapshot: object, seen: dict[str, int]) -> None:
    """Count what the random L4 / egress / ingress / selector changes put in a snapshot."""
    by_type = _content(snapshot)
    listeners = b"".join(by_type.get(LISTENER, {}).values())
    clusters = by_type.get(CLUSTER, {})
    seen["sni"] += b"tls_inspector" in listeners and b".example.com" in listeners
    seen["weighted"] += b"|v2|t1." in listeners and b"|v1|t1." in listeners
    seen["tunnel"] += b"192.0.2.9:9000" in listeners
    seen["original-dst"] += any(n.startswith("outbound|") and b"\x10\x04" in body[:64] for n, body in clusters.items())
    seen["ingress"] += "inbound|8088||" in clusters
    seen["proxy-protocol"] += any(b"upstream_proxy_protocol" in body for body in clusters.values())


_RULES: list[dict[str, Any]] = [
    {"to": [{"operation": {"paths": ["/admin*"], "methods": ["GET"]}}]},
    {"to": [{"operation": {"ports": ["9080"]}}]},
    {"from": [{"source": {"principals": ["cluster.local/ns/a/sa/x"], "notNamespaces": ["b"]}}]},
    {"from": [{"source": {"ipBlocks": ["10.0.0.0/8"]}}], "when": [{"key": "request.headers[x-a]", "values": ["1"]}]},
    {"from": [{"source": {"requestPrincipals": ["iss/*"]}}], "when": [{"key": "destination.port", "values": ["9080"]}]},
    {},
]


def _authorization_policy(rng: random.Random, ns: str) -> dict[str, Any]:
    """An AuthorizationPolicy at mesh, namespace or workload level, of any action (CUSTOM with a provider
    whose service comes and goes, or one that is not ext_authz), dry-run or not, refused (a spec that
    fails validation: fails closed), targeting a Service (failing closed on its endpoints) or a Gateway
    (attached to the gateway pods labelled with its name); workload-level ones may select the gateways."""
    level = rng.choice(["mesh", "namespace", "workload", "target"])
    action = rng.choice(["ALLOW", "DENY", "AUDIT", "CUSTOM"])
    spec: dict[str, Any] = {"action": action, "rules": rng.sample(_RULES, rng.randint(0, 2))}
    if action == "CUSTOM":
        spec["provider"] = {"name": rng.choice(["ext", "s1-http", "tracing", "missing"])}
    if level == "workload":
        spec["selector"] = {
            "matchLabels": rng.choice([{"app": "wide"}, {"app": "narrow"}, {"istio": "ingressgateway"}])
        }
    elif level == "target":
        kind = rng.choice(["Service", "Gateway"])
        group = "" if kind == "Service" else "gateway.networking.k8s.io"
        spec["targetRefs"] = [{"kind": kind, "group": group, "name": rng.choice(["s1", "wide", "gw"])}]
    if rng.random() < 0.15:
        spec["rules"] = [{"from": [{"source": {"ipBlocks": ["not-an-ip"]}}]}]  # refused: fails closed
    meta: dict[str, Any] = {
        "name": f"{level}-{rng.randint(0, 1)}",
        "namespace": "istio-system" if level == "mesh" else ns,
    }
    if rng.random() < 0.25:
        meta["annotations"] = {"istio.io/dry-run": "true"}
    return {"apiVersion": rng.choice(["security.istio.io/v1", "security.istio.io/v1beta1"]),
            "kind": "AuthorizationPolicy", "metadata": meta, "spec": spec}  # fmt: skip


def _authorization_change(
    rng: random.Random, ns: str, existing: set[ResourceKey]
) -> tuple[list[dict[str, Any]], tuple[ResourceKey, ...]]:
    """A policy created or edited, one deleted, or the CUSTOM provider's service created or deleted."""
    if existing and rng.random() < 0.25:
        gone = rng.choice(sorted(existing))
        existing.discard(gone)
        return [], (gone,)
    if rng.random() < 0.15:
        if rng.random() < 0.5:
            return [], (ResourceKey("Service", "a", "ext-authz"),)
        return [_EXT_AUTHZ_SERVICE], ()
    doc = _authorization_policy(rng, ns)
    existing.add(parse_resource(doc).key)
    return [doc], ()


_EXT_AUTHZ_SERVICE = {
    "apiVersion": "v1",
    "kind": "Service",
    "metadata": {"name": "ext-authz", "namespace": "a"},
    "spec": {"ports": [{"name": "grpc", "port": 9000}]},
}


def _authz_seen(snapshot: object) -> tuple[int, int]:
    """(inbound listeners with an HTTP RBAC filter, with a network RBAC filter) in a snapshot."""
    inbound = [body for name, body in _content(snapshot).get(LISTENER, {}).items() if name == "virtualInbound"]
    return sum(b"filters.http.rbac" in b for b in inbound), sum(b"filters.network.rbac" in b for b in inbound)


_PORT_NAMES = ["http", "grpc", "", "tcp-db", "mongo", "web", "http2-x"]
_APP_PROTOCOLS = [None, None, "http", "kubernetes.io/h2c", "tcp"]


def _service_variant(rng: random.Random, ns: str, name: str) -> list[dict[str, Any]]:
    """The service redeclared with another protocol (port name, appProtocol), as headless (pods with
    hostnames) or ExternalName, with a ClusterIP or not: listeners, clusters, routes and endpoints follow."""
    port: dict[str, Any] = {"name": rng.choice(_PORT_NAMES), "port": 9080}
    app_protocol = rng.choice(_APP_PROTOCOLS)
    if app_protocol is not None:
        port["appProtocol"] = app_protocol
    spec: dict[str, Any] = {"ports": [port]}
    kind = rng.choice(["plain", "vip", "headless", "external"])
    if kind == "vip":
        spec["clusterIP"] = f"10.96.{len(ns)}.{len(name)}"
    elif kind == "headless":
        spec["clusterIP"] = "None"
    elif kind == "external":
        spec.update(type="ExternalName", externalName=f"{name}.example.com")
    service = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": ns}, "spec": spec}
    ips = ["10.0.0.1", "10.0.0.2"][: rng.randint(1, 2)]
    endpoints = [{"addresses": [ip], **({"hostname": f"{name}-{i}"} if rng.random() < 0.7 else {})}
                 for i, ip in enumerate(ips)]  # fmt: skip
    eps = {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
           "metadata": {"name": name, "namespace": ns, "labels": {"kubernetes.io/service-name": name}},
           "ports": [{"name": port["name"], "port": 9080}], "endpoints": endpoints}  # fmt: skip
    return [service, eps]


_JWKS_URIS = ["https://keys.example/a", "https://keys.example/b"]


def _request_authentication(rng: random.Random, ns: str) -> dict[str, Any]:
    """A RequestAuthentication at mesh, namespace or workload level (gateways by selector or by a Gateway
    target too), keys fetched (or not) from a jwksUri."""
    level = rng.choice(["mesh", "namespace", "workload", "gateway"])
    rule: dict[str, Any] = {"issuer": f"https://{level}.example", "jwksUri": rng.choice(_JWKS_URIS)}
    if rng.random() < 0.5:
        rule["outputPayloadToHeader"] = rng.choice(["x-a", "x-b"])
    spec: dict[str, Any] = {"jwtRules": [rule]}
    if level == "workload":
        spec["selector"] = {
            "matchLabels": rng.choice([{"app": "wide"}, {"app": "narrow"}, {"istio": "ingressgateway"}])
        }
    elif level == "gateway":
        spec["targetRef"] = {"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": rng.choice(["gw", "x"])}
    return {"apiVersion": "security.istio.io/v1", "kind": "RequestAuthentication",
            "metadata": {"name": f"ra-{level}", "namespace": "istio-system" if level == "mesh" else ns},
            "spec": spec}  # fmt: skip


def _telemetry(rng: random.Random, ns: str) -> dict[str, Any]:
    """A Telemetry at mesh, namespace, workload or gateway level with access logging and/or tracing."""
    level = rng.choice(["mesh", "namespace", "workload", "gateway"])
    spec: dict[str, Any] = {}
    if level == "workload":
        spec["selector"] = {"matchLabels": {"app": rng.choice(["wide", "narrow"])}}
    elif level == "gateway":
        spec["selector"] = {"matchLabels": {"istio": "ingressgateway"}}
    if rng.random() < 0.7:
        entry: dict[str, Any] = {"match": {"mode": rng.choice(["CLIENT", "SERVER", "CLIENT_AND_SERVER"])}}
        count = rng.randint(1, 2) if rng.random() < 0.8 else 0  # none: the default (the mesh config's file)
        entry["providers"] = [{"name": n} for n in rng.sample(["json", "otel-als", "envoy"], count)]
        if rng.random() < 0.3:
            entry["disabled"] = True
        if rng.random() < 0.3:
            entry["filter"] = {"expression": "response.code >= 500"}
        spec["accessLogging"] = [entry]
    if rng.random() < 0.6:
        tracing: dict[str, Any] = {"randomSamplingPercentage": rng.choice([1, 50, 100])}
        if rng.random() < 0.8:
            tracing["providers"] = [{"name": rng.choice(["zipkin-s2", "otel"])}]
        if rng.random() < 0.3:
            tracing["customTags"] = {"t": {"literal": {"value": rng.choice(["x", "y"])}}}
        if rng.random() < 0.2:
            tracing["disableSpanReporting"] = True
        spec["tracing"] = [tracing]
    if rng.random() < 0.4:  # metrics overrides: disable, re-enable, retag (with a marker value seen below)
        override: dict[str, Any] = {
            "match": {
                "metric": rng.choice(["ALL_METRICS", "REQUEST_COUNT", "TCP_SENT_BYTES", "GRPC_RESPONSE_MESSAGES"]),
                "mode": rng.choice(["CLIENT", "SERVER", "CLIENT_AND_SERVER"]),
            }
        }
        if rng.random() < 0.4:
            override["disabled"] = rng.choice([True, False])
        if rng.random() < 0.7:
            override["tagOverrides"] = {
                rng.choice(["marker_a", "marker_b"]): {"value": "request.host"},
                "request_protocol": {"operation": "REMOVE"},
            }
        spec["metrics"] = [{"overrides": [override]}]
    return {"apiVersion": "telemetry.istio.io/v1", "kind": "Telemetry",
            "metadata": {"name": f"t-{level}", "namespace": "istio-system" if level == "mesh" else ns},
            "spec": spec}  # fmt: skip


def _telemetry_seen(snapshot: object) -> tuple[int, int, int]:
    """(listeners with an access logger other than the mesh config's JSON-less default, with a tracer, with a
    metrics tag override)."""
    listeners = _content(snapshot).get(LISTENER, {}).values()
    return (
        sum(b"open_telemetry" in body or b"jsonFormat" in body or b"json_format" in body for body in listeners),
        sum(b"envoy.tracers" in body for body in listeners),
        sum(b"marker_a" in body or b"marker_b" in body for body in listeners),
    )


def _catchall_cluster(body: bytes) -> str:
    """Where a virtualOutbound listener sends unknown destinations (its outbound traffic policy)."""
    from envoy.config.listener.v3 import listener_pb2
    from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2

    listener = listener_pb2.Listener.FromString(body)
    chains = [*listener.filter_chains, listener.default_filter_chain]
    chain = next(c for c in chains if c.name == "virtualOutbound-catchall-tcp")
    proxy = tcp_proxy_pb2.TcpProxy()
    chain.filters[-1].typed_config.Unpack(proxy)
    return proxy.cluster


def _fetched_keys(rng: random.Random) -> Resource:
    """The key set meshd fetched from one of the jwksUris changes (a rotation)."""
    return fetched_jwks(rng.choice(_JWKS_URIS), f'{{"keys":[{{"kid":"k{rng.randint(0, 2)}"}}]}}')


def _trusted_xff(snapshot: object) -> int:
    """Gateway HTTP connection managers trusting X-Forwarded-For hops (gatewayTopology.numTrustedProxies)."""
    from envoy.config.listener.v3 import listener_pb2
    from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2

    found = 0
    for body in _content(snapshot).get(LISTENER, {}).values():
        for chain in listener_pb2.Listener.FromString(body).filter_chains:
            for network_filter in chain.filters:
                hcm = http_connection_manager_pb2.HttpConnectionManager()
                if network_filter.typed_config.Unpack(hcm) and hcm.xff_num_trusted_hops:
                    found += 1
    return found


def _jwt_seen(snapshot: object) -> int:
    return sum(b"jwt_authn" in body for body in _content(snapshot).get(LISTENER, {}).values())


def _mtls_seen(snapshot: object) -> tuple[int, int]:
    """(outbound clusters with Istio mTLS, inbound listeners with an mTLS chain) in a snapshot."""
    by_type = _content(snapshot)
    clusters = sum(b"sds-grpc" in body for body in by_type.get(CLUSTER, {}).values())
    listeners = sum(b"sds-grpc" in body for name, body in by_type.get(LISTENER, {}).items() if name == "virtualInbound")
    return clusters, listeners


def _content(snapshot: object) -> dict[str, dict[str, bytes]]:
    return {t: {n: r.body for n, r in by_name.items()} for t, by_name in snapshot.resources.items()}  # type: ignore[attr-defined]


def _mesh_parent(rng: random.Random) -> dict[str, Any]:
    """A GAMMA parentRef: a Service of namespace a or b (or a missing one), maybe narrowed to a port."""
    ref: dict[str, Any] = {
        "group": rng.choice(["", "core"]),
        "kind": "Service",
        "name": rng.choice(["s1", "s2", "s1", "x"]),
    }
    if rng.random() < 0.7:
        ref["namespace"] = rng.choice(["a", "b"])
    if rng.random() < 0.3:
        ref["port"] = rng.choice([9080, 80])
    return ref


def _mesh_route(rng: random.Random) -> dict[str, Any]:
    """An HTTPRoute attached to a Service (GAMMA): producer or consumer, weights, a header match, a header filter."""
    rule: dict[str, Any] = {
        "backendRefs": [
            {"name": rng.choice(["s1", "s2"]), "namespace": rng.choice(["a", "b"]), "port": 9080,
             "weight": rng.choice([1, 9])},
            {"name": rng.choice(["s1", "missing"]), "port": 9080, "weight": rng.choice([0, 1])},
        ]
    }  # fmt: skip
    if rng.random() < 0.5:
        rule["matches"] = [{"headers": [{"name": "x-m", "value": str(rng.randint(0, 2))}]}]
    if rng.random() < 0.3:
        rule["filters"] = [
            {"type": "ResponseHeaderModifier", "responseHeaderModifier": {"add": [{"name": "x-g", "value": "1"}]}}
        ]
    return {
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "HTTPRoute",
        "metadata": {"name": rng.choice(["m1", "m2"]), "namespace": rng.choice(["a", "b"]),
                     **({"creationTimestamp": "2020-01-01T00:00:00Z"} if rng.random() < 0.5 else {})},
        "spec": {"parentRefs": [_mesh_parent(rng)], "rules": [rule]},
    }  # fmt: skip


def _gateway_api_anchor() -> list[dict[str, Any]]:
    """A Gateway of namespace a served through the addresses of namespace b's Service `ingress` (its router pods),
    with an HTTPRoute and a TCPRoute attached: the random streams need not draw all of that in one run."""
    gw_api = "gateway.networking.k8s.io/v1"
    listeners = [
        {"name": "http", "port": 80, "protocol": "HTTP", "allowedRoutes": {"namespaces": {"from": "All"}}},
        {"name": "tcp", "port": 9000, "protocol": "TCP", "allowedRoutes": {"namespaces": {"from": "All"}}},
    ]
    parent = {"name": "kgw", "namespace": "a"}
    return [
        {"apiVersion": gw_api, "kind": "Gateway", "metadata": {"name": "kgw", "namespace": "a"},
         "spec": {"gatewayClassName": "istio", "listeners": listeners,
                  "addresses": [{"type": "Hostname", "value": "ingress.b.svc.cluster.local"}]}},
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "ingress", "namespace": "b"},
         "spec": {"selector": {"istio": "ingressgateway"}, "ports": [{"name": "http", "port": 80}]}},
        {"apiVersion": gw_api, "kind": "HTTPRoute", "metadata": {"name": "r1", "namespace": "a"},
         "spec": {"parentRefs": [parent], "rules": [{"backendRefs": [{"name": "s1", "port": 9080}]}]}},
        {"apiVersion": "gateway.networking.k8s.io/v1alpha2", "kind": "TCPRoute",
         "metadata": {"name": "l1", "namespace": "a"},
         "spec": {"parentRefs": [parent], "rules": [{"backendRefs": [{"name": "s1", "port": 9080}]}]}},
    ]  # fmt: skip


def _gateway_api_change(rng: random.Random, routers: list[Proxy], mesh_rng: random.Random) -> list[dict[str, Any]]:
    """A Gateway API change: a Gateway (HTTP, HTTPS with a Secret, a protocol not served; of class istio or
    another), an HTTPRoute (weights, filters, a backend of another namespace), a ReferenceGrant, a GatewayClass,
    or a router pod (re)labelled with the Gateway's name. `mesh_rng` (a stream of its own) turns some routes into
    mesh (GAMMA) routes with a Service parent."""
    gw_api = "gateway.networking.k8s.io/v1"
    ns = rng.choice(["a", "b"])
    pick = rng.random()
    if pick < 0.25:
        listeners: list[dict[str, Any]] = [
            {"name": "http", "port": 80, "protocol": "HTTP",
             "allowedRoutes": {"namespaces": {"from": rng.choice(["All", "Same"])}},
             **({"hostname": "*.example.com"} if rng.random() < 0.5 else {})},
        ]  # fmt: skip
        if rng.random() < 0.6:
            listeners.append({"name": "https", "port": 443, "protocol": "HTTPS",
                              "tls": {"certificateRefs": [{"name": rng.choice(["c1", "c2"]),
                                                           # another namespace's Secret (ReferenceGrant)
                                                           **({"namespace": rng.choice(["a", "b"])}
                                                              if rng.random() < 0.4 else {})}]}})  # fmt: skip
        if rng.random() < 0.8:
            listeners.append({"name": "tcp", "port": 9000, "protocol": "TCP",
                              "allowedRoutes": {"namespaces": {"from": rng.choice(["All", "Same"])}}})  # fmt: skip
        if rng.random() < 0.5:
            listeners.append({"name": "tls", "port": 9443, "protocol": "TLS", "tls": {"mode": "Passthrough"},
                              "allowedRoutes": {"namespaces": {"from": "All"}},
                              **({"hostname": "*.example.com"} if rng.random() < 0.5 else {})})  # fmt: skip
        gateway = {
            "apiVersion": gw_api,
            "kind": "Gateway",
            "metadata": {"name": "kgw", "namespace": ns},
            "spec": {"gatewayClassName": rng.choice(["istio", "istio", "other"]), "listeners": listeners},
        }
        served_by = [r for r in routers if r.namespace == ns and rng.random() < 0.5]  # its pod (re)labelled too
        linked: list[dict[str, Any]] = []
        if mesh_rng.random() < 0.5:  # manual deployment: addresses naming the other namespace's Service `ingress`
            other = "b" if ns == "a" else "a"
            usable, unusable = f"ingress.{other}.svc.cluster.local", f"nowhere.{other}.svc.cluster.local"
            address = mesh_rng.choice([usable, usable, unusable])
            gateway["spec"]["addresses"] = [{"type": "Hostname", "value": address}]
            linked.append({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "ingress", "namespace": other},
                           "spec": {"selector": {"istio": mesh_rng.choice(["ingressgateway"] * 2 + ["none"])},
                                    "ports": [{"name": "http", "port": 80}]}})  # fmt: skip
        return [gateway, *linked, *(_router_pod(r, "ingressgateway", "kgw") for r in served_by)]
    if pick < 0.45:  # a TCPRoute or TLSRoute (weights, a missing backend, another namespace's)
        kind = rng.choice(["TCPRoute", "TLSRoute"])
        l4_backends = [{"name": rng.choice(["s1", "s2", "missing"]), "port": 9080, "weight": rng.choice([0, 1, 4])}]
        if rng.random() < 0.5:
            l4_backends.append({"name": "s2", "namespace": rng.choice(["a", "b"]), "port": 9080})
        spec: dict[str, Any] = {
            "parentRefs": [{"name": "kgw", "namespace": rng.choice(["a", "b"]),
                            **({"sectionName": rng.choice(["tcp", "tls"])} if rng.random() < 0.5 else {})}],
            "rules": [{"backendRefs": l4_backends}],
        }  # fmt: skip
        if mesh_rng.random() < 0.25:  # mesh routing (GAMMA): a Service parent (a TLSRoute: by the Service's SNI)
            spec["parentRefs"] = [_mesh_parent(mesh_rng)]
        if kind == "TLSRoute":
            spec["hostnames"] = rng.choice([["t.example.com"], ["t.example.com", "u.other.org"], []])
        return [{"apiVersion": "gateway.networking.k8s.io/v1alpha2", "kind": kind,
                 "metadata": {"name": rng.choice(["l1", "l2"]), "namespace": ns}, "spec": spec}]  # fmt: skip
    if pick < 0.5:  # a GRPCRoute (method / header matches, weights, filters, a backend of another namespace)
        backends = [{"name": rng.choice(["s1", "s2", "missing"]), "port": 9080, "weight": rng.choice([0, 1, 9])}]
        if rng.random() < 0.4:
            backends.append({"name": "s1", "namespace": rng.choice(["a", "b"]), "port": 9080})
        method = rng.choice(
            [
                {"service": "pkg.Echo"},
                {"service": "pkg.Echo", "method": rng.choice(["Say", "Chat"])},
                {"type": "RegularExpression", "method": "S.*"},
                None,
            ]
        )
        grpc_rule: dict[str, Any] = {"matches": [{"method": method}] if method else [], "backendRefs": backends}
        if rng.random() < 0.5:
            grpc_rule["filters"] = [
                {
                    "type": "RequestHeaderModifier",
                    "requestHeaderModifier": {"set": [{"name": "x-g", "value": str(rng.randint(0, 2))}]},
                }
            ]
        return [
            {
                "apiVersion": gw_api,
                "kind": "GRPCRoute",
                "metadata": {"name": rng.choice(["g1", "g2"]), "namespace": ns},
                "spec": {
                    "parentRefs": [{"name": "kgw", "namespace": rng.choice(["a", "b"])}],
                    "hostnames": rng.choice([[], ["h.example.com"], ["g.other.org"]]),
                    "rules": [grpc_rule],
                },
            }
        ]
    if pick < 0.63:
        backends = [{"name": rng.choice(["s1", "s2", "missing"]), "port": 9080, "weight": rng.choice([0, 1, 9])}]
        if rng.random() < 0.4:
            backends.append({"name": "s1", "namespace": rng.choice(["a", "b"]), "port": rng.choice([80, 9080])})
        rule: dict[str, Any] = {"matches": [{"path": {"type": rng.choice(["PathPrefix", "Exact"]),
                                                      "value": rng.choice(["/", "/r", "/r/"])}}],
                                "backendRefs": backends}  # fmt: skip
        if rng.random() < 0.5:
            rule["filters"] = [{"type": "RequestHeaderModifier", "requestHeaderModifier": {"set": [
                {"name": "x-r", "value": str(rng.randint(0, 2))}]}}]  # fmt: skip
        if rng.random() < 0.3:  # a retry back-off (Envoy's base interval)
            rule["retry"] = {"attempts": rng.choice([0, 2]), **({"backoff": rng.choice(["25ms", "1s"])}
                                                                if rng.random() < 0.7 else {})}  # fmt: skip
        return [
            {
                "apiVersion": gw_api,
                "kind": "HTTPRoute",
                "metadata": {"name": rng.choice(["r1", "r2"]), "namespace": ns},
                "spec": {
                    "parentRefs": [
                        {
                            "name": "kgw",
                            "namespace": rng.choice(["a", "b"]),
                            **({"sectionName": "https"} if rng.random() < 0.3 else {}),
                        }
                        if mesh_rng.random() < 0.5
                        else _mesh_parent(mesh_rng)  # mesh routing (GAMMA)
                    ],
                    "hostnames": rng.choice([[], ["h.example.com"], ["h.other.org"]]),
                    "rules": [rule],
                },
            }
        ]
    if pick < 0.75:
        # routes to Services (grant g), or Gateways to Secrets (grant s: certificateRefs of another namespace)
        source, target = rng.choice([("HTTPRoute", "Service"), ("GRPCRoute", "Service"), ("Gateway", "Secret")])
        named = {"name": rng.choice(["c1", "c2"])} if target == "Secret" and rng.random() < 0.3 else {}
        return [{"apiVersion": "gateway.networking.k8s.io/v1beta1", "kind": "ReferenceGrant",
                 "metadata": {"name": "s" if target == "Secret" else "g", "namespace": ns},
                 "spec": {"from": [{"group": "gateway.networking.k8s.io", "kind": source,
                                    "namespace": rng.choice(["a", "b"])}],
                          "to": [{"group": "", "kind": target, **named}]}}]  # fmt: skip
    if pick < 0.85:
        return [
            {
                "apiVersion": gw_api,
                "kind": "GatewayClass",
                "metadata": {"name": "other"},
                "spec": {"controllerName": rng.choice(["istio.io/gateway-controller", "example.com/x"])},
            }
        ]
    router = rng.choice(routers)
    pod = _router_pod(router, "ingressgateway")
    if rng.random() < 0.6:
        pod["metadata"]["labels"]["gateway.networking.k8s.io/gateway-name"] = "kgw"
    return [pod]


def _backend_tls_change(rng: random.Random) -> dict[str, Any]:
    """A BackendTLSPolicy (v1 / v1alpha3; a CA ConfigMap that may not exist, or the system's CAs; the whole
    Service or its port `http`; a Service that may not exist) or a CA ConfigMap (either CA, or no ca.crt)."""
    ns = rng.choice(["a", "b"])
    if rng.random() < 0.35:
        data = rng.choice([{"ca.crt": _CA.pem.decode()}, {"ca.crt": _OTHER_CA.pem.decode()}, {"other": "x"}])
        return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "ca1", "namespace": ns}, "data": data}
    target: dict[str, Any] = {"group": "", "kind": "Service", "name": rng.choice(["s1", "s2", "missing"])}
    if rng.random() < 0.4:
        target["sectionName"] = "http"
    validation: dict[str, Any] = {"hostname": rng.choice(["s.example.com", "t.example.com"])}
    if rng.random() < 0.25:
        validation["wellKnownCACertificates"] = "System"
    else:
        validation["caCertificateRefs"] = [{"group": "", "kind": "ConfigMap", "name": rng.choice(["ca1", "ca2"])}]
    if rng.random() < 0.3:
        validation["subjectAltNames"] = [{"type": "URI", "uri": "spiffe://x/ns/a/sa/s"}]
    return {
        "apiVersion": rng.choice(["gateway.networking.k8s.io/v1", "gateway.networking.k8s.io/v1alpha3"]),
        "kind": "BackendTLSPolicy",
        "metadata": {"name": rng.choice(["p1", "p2"]), "namespace": ns},
        "spec": {"targetRefs": [target], "validation": validation},
    }


@pytest.mark.parametrize("seed", [3, 5, 11])
def test_every_connection_holds_what_a_fresh_build_gives_after_random_changes(seed: int) -> None:
    """Whatever pushes skip or reuse, each proxy must end up with exactly the config a generator
    built from scratch on the same World would give it."""
    rng = random.Random(seed)
    mesh = Mesh()
    hub = Hub()
    assert mesh.generator is not None
    hub.publish(mesh.generator, changed_at=0.0)
    # proxy 2 of each namespace runs under an agent with SDS: it gets Istio mTLS; proxy 3 has its
    # traffic captured (capture-mode listeners), with SDS in namespace a (and proxy 1 of b too); proxy 4 is a
    # proxyless gRPC client
    proxies = [
        dataclasses.replace(
            _proxy(ns, n),
            sds=n == 2 or (n == 3 and ns == "a"),
            capture=n == 3 or (n == 1 and ns == "b"),  # two captured in b: their own layers share the memo
            proxyless=n == 4,
            metadata=(("ISTIO_VERSION", "1.24.0"),) * (n == 1)
            + (("MESHD_BOOTSTRAP_PATCHES", "true"),) * (n == 2 or ns == "a"),
        )
        for ns in ("a", "b")
        for n in (1, 2, 3, 4)
    ]
    # a twin of proxy 1 and of proxy 2 of each namespace (another address, the same scope): a scope of several
    # proxies, adopted whole by a push that leaves it as it was (scope_groups.py)
    twin_proxies = [
        dataclasses.replace(
            twin,
            ip=f"{twin.ip}0",
            pod=f"{twin.pod}-twin",
            node_id=twin.node_id.replace(f"~{twin.ip}~{twin.pod}.", f"~{twin.ip}0~{twin.pod}-twin."),
        )
        for twin in proxies
        if twin.pod.endswith(("-1", "-2"))
    ]
    # gateway proxies (router): one per namespace, the one of namespace a with the agent's SDS
    routers = [
        dataclasses.replace(
            _router(ns), sds=ns == "a", metadata=(("MESHD_BOOTSTRAP_PATCHES", "true"),) if ns == "a" else ()
        )
        for ns in ("a", "b")
    ]
    # a twin of a's router (same pod labels: often the same gateway layers) whose agent does not apply
    # bootstrap patches: the node metadata must be part of the envoyfilters key
    routers.append(dataclasses.replace(parse_node_id("router~10.8.97.2~gateway-2.a~a.svc.cluster.local"), sds=True))
    start = [_router_pod(r, "ingressgateway") for r in routers] + [_secret(ns, "c1", 0) for ns in "ab"]
    start += [_gateway(random.Random(157), "a"), _gateway_vs(random.Random(2), "a")]  # every kind of server, bound
    # a Gateway API Gateway served by namespace a's router, and an HTTPRoute attached to it
    start[0]["metadata"]["labels"]["gateway.networking.k8s.io/gateway-name"] = "kgw"
    start[2]["metadata"]["labels"]["gateway.networking.k8s.io/gateway-name"] = "kgw"
    start += [
        {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway", "metadata": {"name": "kgw", "namespace": "a"},
         "spec": {"gatewayClassName": "istio", "listeners": [
             {"name": "http", "port": 80, "protocol": "HTTP"},
             # a Secret of namespace b, under the ReferenceGrant below
             {"name": "https", "port": 443, "protocol": "HTTPS",
              "tls": {"certificateRefs": [{"name": "c1", "namespace": "b"}]}}]}},
        {"apiVersion": "gateway.networking.k8s.io/v1beta1", "kind": "ReferenceGrant",
         "metadata": {"name": "s", "namespace": "b"},
         "spec": {"from": [{"group": "gateway.networking.k8s.io", "kind": "Gateway", "namespace": "a"}],
                  "to": [{"group": "", "kind": "Secret"}]}},
        {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
         "metadata": {"name": "r0", "namespace": "a"},
         "spec": {"parentRefs": [{"name": "kgw"}], "rules": [{"backendRefs": [{"name": "s1", "port": 9080}]}]}},
        {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "GRPCRoute",
         "metadata": {"name": "g0", "namespace": "a"},
         "spec": {"parentRefs": [{"name": "kgw"}], "rules": [{"matches": [{"method": {"service": "pkg.Echo"}}],
                                                               "backendRefs": [{"name": "s2", "port": 9080}]}]}},
    ]  # fmt: skip
    mesh.apply(_resources(start))
    proxies += routers
    conns = [hub.connect(proxy=p, stream=SotwStream(nonce_prefix=str(i)), now=0.0) for i, p in enumerate(proxies)]
    conns += [hub.connect(proxy=p, stream=SotwStream(nonce_prefix=f"{p.pod}"), now=0.0) for p in twin_proxies]
    wide: set[str] = set()
    served_secrets = 0
    mtls_seen = [0, 0]
    outbound_modes: set[str] = set()
    policies: set[ResourceKey] = set()
    authz_policies: set[ResourceKey] = set()
    authz_seen = [0, 0]
    rejections_seen = 0
    features: dict[str, int] = dict.fromkeys(
        ("sni", "weighted", "tunnel", "original-dst", "ingress", "proxy-protocol"), 0
    )
    # TCP/TLS services and routes, egress ServiceEntries, Sidecar ingress, workload-selected rules: drawn from a
    # stream of their own and pushed with the other changes of a step
    l4_rng = random.Random(seed + 1000)
    authz_rng = random.Random(seed * 31 + 5)  # its own sequence: the other changes stay as they were
    gateway_listeners: set[str] = set()
    gateway_secrets = 0
    protocols_seen: set[str] = set()
    proxyless_listeners: set[str] = set()
    jwt_rng = random.Random(seed + 1000)
    request_authns: set[ResourceKey] = set()
    jwt_seen = [0, 0]  # bound, captured
    ef_rng = random.Random(seed * 7 + 3)
    envoy_filters: set[ResourceKey] = set()
    ef_seen = 0
    ef_clusters = 0  # gateways sent a cluster only an EnvoyFilter of theirs names
    wasm_rng = random.Random(seed * 13 + 5)
    wasm_plugins: set[ResourceKey] = set()
    wasm_seen = network_wasm_seen = 0
    ef_errors = 0
    telemetry_rng = random.Random(seed * 7 + 3)
    telemetries: set[ResourceKey] = set()
    # listeners with a Telemetry access logger, with a tracer; routers with either; with a metrics override
    telemetry_seen = [0, 0, 0, 0]
    gateway_authz_seen = [0, 0, 0, 0]  # gateway listeners with jwt_authn, HTTP RBAC, network RBAC, trusted XFF
    gwapi_rng = random.Random(seed + 3000)  # Gateway API changes: a stream of their own
    mesh_rng = random.Random(seed + 5000)  # which of them are mesh (GAMMA) routes: another
    gwapi_routes = 0
    mesh_routes = 0
    linked_routes = 0
    gwapi_l4 = 0
    gwapi_grpc = 0
    gwapi_cross_secrets = 0  # another namespace's Secrets served to gateways under a ReferenceGrant
    btls_rng = random.Random(seed + 7000)  # BackendTLSPolicies and CA ConfigMaps: a stream of their own
    btls_seen = [0, 0]  # clusters with a BackendTLSPolicy's CA over SDS; those CAs served
    twins = [i for i, conn in enumerate(conns) if conn.proxy.pod.endswith("-twin")]
    for step in range(130):
        if step % 9 in (4, 6):  # a twin leaves, then comes back: its scope is filed again without it, then with it
            i = twins[(step // 9) % len(twins)]
            if step % 9 == 4:
                hub.disconnect(conns[i])
            else:
                conns[i] = hub.connect(proxy=conns[i].proxy, stream=SotwStream(nonce_prefix=f"t{step}"), now=0.0)
        ns, name = rng.choice(["a", "b"]), rng.choice(["s1", "s2"])
        choice = rng.random()
        deleted: tuple[ResourceKey, ...] = ()
        extra: list[Resource] = []
        if rng.random() < 0.15:
            # PeerAuthentication: a new mode at some level, or a policy removed
            choice = 2.0
            if policies and rng.random() < 0.3:
                deleted = (rng.choice(sorted(policies)),)
                policies.discard(deleted[0])
                docs = []
            else:
                docs = [_peer_authentication(rng, ns)]
                policies.add(parse_resource(docs[0]).key)
        elif rng.random() < 0.25:
            # Gateways, VirtualServices bound to them, router pods relabelled (selected or not)
            choice = 4.0
            pick = rng.random()
            if pick < 0.4:
                docs = [_gateway(rng, ns)]
            elif pick < 0.85:
                docs = [_gateway_vs(rng, ns)]
            else:
                gateway_name = authz_rng.choice(["gw", "other", None])  # (its own stream: the rest stays as it was)
                trusted = authz_rng.choice([None, 1, 2])
                docs = [
                    _router_pod(rng.choice(routers), rng.choice(["ingressgateway", "other"]), gateway_name, trusted)
                ]
        if choice < 4.0 and rng.random() < 0.12:
            # the service redeclared: another protocol, headless or ExternalName (issue 17)
            choice = 3.0
            docs = _service_variant(rng, ns, name)
            protocols_seen.add(docs[0]["spec"]["ports"][0]["name"])
        if choice < 0.3:
            ips = [f"10.0.{step}.{k}" for k in range(rng.randint(1, 3))] + rng.sample(["10.0.0.1", "10.0.0.2"], 1)
            # proxies' own addresses back services too: their inbound side follows PeerAuthentication
            ips += rng.sample([p.ip for p in proxies if p.namespace == ns], 1)
            docs = _docs(ns, name, ips)[1:2]
        elif choice < 0.4:
            # Place an endpoint's workload in a locality (or move it): its assignments change.
            ip = rng.choice(["10.0.0.1", "10.0.0.2"])
            docs = [
                {"apiVersion": "v1", "kind": "Pod",
                 "metadata": {"name": f"ep-{ip[-1]}", "namespace": "a",
                              "labels": {"version": "v1", **rng.choice(_LOCALITIES), **rng.choice(_SIDECAR)},
                              "annotations": rng.choice(_CAPTURED)},
                 "status": {"podIP": ip}},
            ]  # fmt: skip
        elif choice < 0.6:
            docs = _docs(ns, name, ["10.0.0.1"], weight=rng.choice([10, 50, 90]))[3:]
        elif choice < 0.7:
            # Relabel a proxy's own pod: a workload-selector Sidecar may now (not) apply to it.
            # (The Sidecar is applied once, so later steps change only the pod.)
            proxy = rng.choice([p for p in proxies if p.type == "sidecar"])
            docs = [
                {"apiVersion": "v1", "kind": "Pod",
                 "metadata": {"name": proxy.pod, "namespace": proxy.namespace,
                              "labels": {"app": rng.choice(["wide", "narrow"]), **rng.choice(_LOCALITIES),
                                         **rng.choice(_SIDECAR)},
                              "annotations": rng.choice(_CAPTURED)},
                 "status": {"podIP": proxy.ip}},
            ]  # fmt: skip
            if proxy.namespace not in wide:
                wide.add(proxy.namespace)
                docs.append(
                    {"apiVersion": "networking.istio.io/v1", "kind": "Sidecar",
                     "metadata": {"name": "wide", "namespace": proxy.namespace},
                     "spec": {"workloadSelector": {"labels": {"app": "wide"}}, "egress": [{"hosts": ["*/*"]}],
                              "outboundTrafficPolicy": {"mode": "REGISTRY_ONLY"}}}
                )  # fmt: skip
        elif choice < 0.8:
            rule = _docs(ns, name, ["10.0.0.1"])[2]
            if rng.random() < 0.5:
                rule["spec"]["subsets"].append({"name": "v2", "labels": {"version": "v2"}})
            policy = rng.choice(_POLICIES)
            if policy is not None:
                rule["spec"]["trafficPolicy"] = dict(policy)
            if rng.random() < 0.5:
                mode = rng.choice(["MUTUAL", "SIMPLE", "ISTIO_MUTUAL"])
                tls = (
                    {"mode": mode, "credentialName": rng.choice(["c1", "c2"])}
                    if mode != "ISTIO_MUTUAL"
                    else {"mode": mode}
                )
                rule["spec"]["trafficPolicy"] = {**rule["spec"].get("trafficPolicy", {}), "tls": tls}
            docs = [rule]
        elif choice < 0.85:
            # A credential Secret appears or changes (possibly one no proxy's clusters use yet).
            docs = [_secret(ns, rng.choice(["c1", "c2"]), rng.randint(0, 1))]
        elif choice < 0.92:
            docs = [_routing_vs(rng, ns)]
        elif choice > 1:
            pass  # the PeerAuthentication or gateway change above
        else:
            sidecar = _sidecar(ns)
            sidecar["spec"]["egress"][0]["hosts"] = [rng.choice(["./*", "*/*"])]
            mode = rng.choice([None, "ALLOW_ANY", "REGISTRY_ONLY"])
            if mode is not None:
                sidecar["spec"]["outboundTrafficPolicy"] = {"mode": mode}
            docs = [sidecar]
        if step == 0:  # a TCP service with a weighted route to start from, whatever the seed
            docs = [*docs, *_tcp_service(random.Random(1), "a"), _l4_route(random.Random(3), "a")]
        elif l4_rng.random() < 0.5:
            made = _L4_CHANGES[l4_rng.choice(sorted(_L4_CHANGES))](l4_rng, l4_rng.choice(["a", "b"]))
            docs = [*docs, *(made if isinstance(made, list) else [made])]
        if jwt_rng.random() < 0.2:
            # on top of this step's change (its own random stream: the other changes stay as they were):
            # a RequestAuthentication at some level, one removed, or the keys of a jwksUri rotated
            what = jwt_rng.random()
            if what < 0.4:
                extra.append(_fetched_keys(jwt_rng))
            elif what < 0.55 and request_authns:
                gone = jwt_rng.choice(sorted(request_authns))
                request_authns.discard(gone)
                deleted += (gone,)
            else:
                docs.append(_request_authentication(jwt_rng, jwt_rng.choice(["a", "b"])))
                request_authns.add(parse_resource(docs[-1]).key)
        if ef_rng.random() < 0.3:  # in the same push: an EnvoyFilter added, changed or removed
            if envoy_filters and ef_rng.random() < 0.25:
                gone = ef_rng.choice(sorted(envoy_filters))
                envoy_filters.discard(gone)
                deleted += (gone,)
            else:
                docs.append(_envoy_filter(ef_rng))
                envoy_filters.add(parse_resource(docs[-1]).key)
        if wasm_rng.random() < 0.3:  # in the same push: a WasmPlugin added, changed or removed
            if wasm_plugins and wasm_rng.random() < 0.25:
                gone = wasm_rng.choice(sorted(wasm_plugins))
                wasm_plugins.discard(gone)
                deleted += (gone,)
            else:
                docs.append(_wasm_plugin(wasm_rng))
                wasm_plugins.add(parse_resource(docs[-1]).key)
        if telemetry_rng.random() < 0.25:  # in the same push: a Telemetry at some level, or one removed
            if telemetries and telemetry_rng.random() < 0.25:
                gone = telemetry_rng.choice(sorted(telemetries))
                telemetries.discard(gone)
                deleted += (gone,)
            else:
                docs.append(_telemetry(telemetry_rng, telemetry_rng.choice(["a", "b"])))
                telemetries.add(parse_resource(docs[-1]).key)
        if gwapi_rng.random() < 0.3:  # in the same push: a Gateway API change
            docs = [*docs, *_gateway_api_change(gwapi_rng, routers, mesh_rng)]
        if step == 65:  # whatever the streams drew: once, a Gateway linked by its addresses, with HTTP and TCP routes
            docs = [*docs, *_gateway_api_anchor()]
        if mesh_rng.random() < 0.25:  # in the same push: a mesh (GAMMA) HTTPRoute
            docs.append(_mesh_route(mesh_rng))
        if btls_rng.random() < 0.2:  # in the same push: a BackendTLSPolicy or a CA ConfigMap
            docs.append(_backend_tls_change(btls_rng))
        if authz_rng.random() < 0.4:  # in the same push: an AuthorizationPolicy change
            more, gone = _authorization_change(authz_rng, ns, authz_policies)
            docs, deleted = [*docs, *more], (*deleted, *gone)
        generator = mesh.apply(_resources(docs) + extra, deleted=deleted)
        hub.publish(generator, changed_at=float(step))
        assert not hub.failures, hub.failures  # a build that raises (check mode) keeps a stale snapshot
        fresh = ConfigGenerator(generator.world, options=OPTIONS)
        generator.precompute()
        fresh.precompute()
        rejections_seen += bool(generator.errors)
        ef_errors += any(e.key is not None and e.key.kind == "EnvoyFilter" for e in generator.errors)
        for conn in conns:
            if conn.conn_id not in hub.connections:
                continue  # a twin away for now
            assert conn.snapshot is not None
            assert _content(conn.snapshot) == _content(fresh.snapshot(conn.proxy)), (step, conn.proxy.node_id)
            served_secrets += len(conn.snapshot.resources.get(SECRET, {}))
            btls_seen[0] += sum(b"configmap://" in c for c in _content(conn.snapshot).get(CLUSTER, {}).values())
            btls_seen[1] += sum(n.startswith("configmap://") for n in conn.snapshot.resources.get(SECRET, {}))
            jwt_seen[conn.proxy.capture] += _jwt_seen(conn.snapshot)
            ef_seen += _envoy_filters_seen(conn.snapshot)
            wasm_seen += _wasm_seen(conn.snapshot)
            network_wasm_seen += _network_wasm_seen(conn.snapshot)
            clusters, listeners = _mtls_seen(conn.snapshot)
            assert not (clusters or listeners) or conn.proxy.sds  # never to a proxy without SDS
            mtls_seen[0] += clusters
            mtls_seen[1] += listeners
            _features_seen(conn.snapshot, features)
            logs, tracers, retagged = _telemetry_seen(conn.snapshot)
            telemetry_seen[0] += logs
            telemetry_seen[1] += tracers
            telemetry_seen[2] += conn.proxy.type == "router" and bool(logs or tracers)
            telemetry_seen[3] += retagged
            http_rbac, network_rbac = _authz_seen(conn.snapshot)
            authz_seen[0] += http_rbac
            authz_seen[1] += network_rbac
            listeners_held = conn.snapshot.resources.get(LISTENER, {})
            assert ("virtualOutbound" in listeners_held) == conn.proxy.capture
            if conn.proxy.type == "router":
                assert "virtualInbound" not in listeners_held  # a gateway gets no sidecar config
                gateway_listeners.update(listeners_held)
                held_routes = conn.snapshot.resources.get(ROUTE, {}).values()
                gwapi_routes += sum(b"/kgw~" in r.body for r in held_routes)  # an HTTPRoute's VirtualService
                other = b"b" if conn.proxy.namespace == "a" else b"a"  # a Gateway linked by its addresses
                linked_routes += sum(b"/namespaces/" + other + b"/virtual-service/kgw~" in r.body for r in held_routes)
                gwapi_grpc += sum(b".grpc." in r.body for r in held_routes)  # a GRPCRoute's routes
                gwapi_l4 += sum(b"/kgw~tcp/" in r.body or b"/kgw~tls/" in r.body for r in listeners_held.values())
                gateway_secrets += len(conn.snapshot.resources.get(SECRET, {}))
                ef_clusters += (
                    _EF_CLUSTER in conn.snapshot.resources.get(CLUSTER, {})
                    and any(b"/ef-call" in body for body in _content(conn.snapshot).get(LISTENER, {}).values())
                    and not any(_EF_CLUSTER.encode() in r.body for r in held_routes)  # no route of its own uses it
                )
                gwapi_cross_secrets += sum(
                    n.startswith("kubernetes-gateway://") for n in conn.snapshot.resources.get(SECRET, {})
                )
                gateway_authz_seen[3] += _trusted_xff(conn.snapshot)
                for i, marker in enumerate((b"jwt_authn", b"filters.http.rbac", b"filters.network.rbac")):
                    gateway_authz_seen[i] += sum(
                        marker in b for b in _content(conn.snapshot).get(LISTENER, {}).values()
                    )
            if conn.proxy.type != "router":  # a GAMMA route's VirtualService reached a sidecar
                mesh_routes += sum(
                    b"/virtual-service/gamma~" in r.body for r in conn.snapshot.resources.get(ROUTE, {}).values()
                )
            if conn.proxy.capture:
                outbound_modes.add(_catchall_cluster(listeners_held["virtualOutbound"].body))
            if conn.proxy.proxyless:  # gRPC's view only: api_listeners named host:port
                assert all(":" in name for name in listeners_held), sorted(listeners_held)
                proxyless_listeners.update(listeners_held)
        # (after the fresh snapshots: what an EnvoyFilter fails on is found building the proxies it selects)
        assert sorted(map(str, generator.errors)) == sorted(map(str, fresh.errors)), step
    assert len(outbound_modes) == 2  # capture proxies saw both ALLOW_ANY and REGISTRY_ONLY
    # the gateways served HTTP, HTTPS (with Secrets over SDS), TCP and TLS ports at some point
    assert {"0.0.0.0_80", "0.0.0.0_443", "0.0.0.0_31400", "0.0.0.0_8443"} <= gateway_listeners
    assert gateway_secrets
    assert served_secrets  # the random changes did reach the SDS layer
    assert rejections_seen  # and rejected VirtualServices (a subset that comes and goes)
    assert all(mtls_seen)  # and mTLS reached the clusters and inbound listeners of SDS proxies
    assert all(features.values()), features  # and every L4 / egress / ingress / selector feature reached a proxy
    assert all(authz_seen)  # and authorization reached HTTP chains and (capture proxies) TCP chains
    assert len(protocols_seen) >= 3 and proxyless_listeners  # and protocol changes, proxyless clients
    assert all(jwt_seen)  # and jwt_authn reached inbound listeners, bound and captured
    assert ef_seen and ef_errors  # and EnvoyFilters patched proxies, one was refused on some
    assert ef_clusters  # and a gateway was sent the cluster its EnvoyFilter names
    assert wasm_seen  # and WasmPlugins' filters reached listeners
    assert network_wasm_seen  # NETWORK ones too
    assert all(telemetry_seen), telemetry_seen  # and Telemetry access logs and tracers, on sidecars and gateways
    assert all(gateway_authz_seen), gateway_authz_seen  # and jwt_authn and RBAC (HTTP, TCP) reached gateways
    assert gwapi_routes and gwapi_l4  # and HTTPRoutes, TCPRoutes / TLSRoutes reached the gateways
    assert mesh_routes  # and mesh (GAMMA) HTTPRoutes reached sidecars
    assert linked_routes  # and a Gateway's routes reached the pods of the Service its addresses name
    assert gwapi_cross_secrets  # and a Gateway API listener's Secret of another namespace, under a ReferenceGrant
    assert gwapi_routes and gwapi_l4 and gwapi_grpc  # and HTTPRoutes, GRPCRoutes, TCPRoutes / TLSRoutes reached them
    assert all(btls_seen), btls_seen  # and BackendTLSPolicies' TLS and their ConfigMaps' CAs reached proxies


def test_virtual_service_errors_are_carried_across_pushes_and_follow_their_rule() -> None:
    mesh = Mesh()
    vs = _docs("a", "s1", ["10.0.0.1"], weight=50)[3]
    vs["spec"]["http"][0]["route"][1]["destination"]["subset"] = "v2"  # not defined (yet)
    generator = mesh.apply(_resources([vs]))
    generator.precompute()
    assert [e.field for e in generator.errors] == ["spec.http[0].route[1].destination.subset"]

    # An unrelated push keeps reporting it (the check is carried, not lost).
    generator = mesh.apply(_resources(_docs("b", "s2", ["10.0.0.7"])[1:2]))
    generator.precompute()
    assert [e.field for e in generator.errors] == ["spec.http[0].route[1].destination.subset"]

    # Defining the subset in the host's DestinationRule clears it.
    rule = _docs("a", "s1", ["10.0.0.1"])[2]
    rule["spec"]["subsets"].append({"name": "v2", "labels": {"version": "v2"}})
    generator = mesh.apply(_resources([rule]))
    generator.precompute()
    assert generator.errors == []


def test_a_tcp_idle_timeout_change_reaches_the_listener_of_a_carried_proxy() -> None:
    from envoy.config.listener.v3 import listener_pb2
    from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2

    from meshd.xds.resource import LISTENER

    service = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "db", "namespace": "a"},
               "spec": {"ports": [{"name": "tcp-db", "port": 5432}]}}  # fmt: skip

    def rule(idle: str) -> dict[str, Any]:
        return {"apiVersion": "networking.istio.io/v1", "kind": "DestinationRule",
                "metadata": {"name": "db", "namespace": "a"},
                "spec": {"host": "db",
                         "trafficPolicy": {"connectionPool": {"tcp": {"idleTimeout": idle}}}}}  # fmt: skip

    mesh = Mesh()
    generator = mesh.apply(_resources([service, rule("10s")]))
    hub = Hub()
    hub.publish(generator, changed_at=0.0)
    conn = hub.connect(proxy=_proxy("a", 1), stream=SotwStream(nonce_prefix="a"), now=0.0)
    generator = mesh.apply(_resources([rule("20s")]))
    hub.publish(generator, changed_at=1.0)
    assert conn.snapshot is not None
    listener = next(r for r in conn.snapshot.select(LISTENER, None) if r.name.endswith("_5432"))
    decoded = listener_pb2.Listener()
    listener.to_any().Unpack(decoded)
    proxy_config = tcp_proxy_pb2.TcpProxy()
    decoded.filter_chains[0].filters[0].typed_config.Unpack(proxy_config)
    assert proxy_config.idle_timeout.seconds == 20


def test_a_mesh_wide_option_change_reaches_every_carried_layer() -> None:
    """Options (trust domain, auto mTLS...) are part of every key: a generation with new options
    builds what a fresh one would, even where nothing in the World changed."""
    mesh = Mesh()
    pod = {"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": "ep-1", "namespace": "a", "labels": {"security.istio.io/tlsMode": "istio"}},
           "spec": {"serviceAccountName": "sa1"}, "status": {"podIP": "10.0.0.1"}}  # fmt: skip
    mesh.apply(_resources([pod]))
    proxy = dataclasses.replace(_proxy("a", 2), sds=True)
    assert mesh.generator is not None
    before = mesh.generator.snapshot(proxy)
    assert b"spiffe://cluster.local/" in b"".join(r.body for r in before.resources[CLUSTER].values())
    options = GenerateOptions(inbound_port=15006, sidecar_endpoint_port=15006, trust_domain="example.org")
    after = ConfigGenerator(mesh.state.world(), options=options, previous=mesh.generator, check=True)
    fresh = ConfigGenerator(mesh.state.world(), options=options)
    assert _content(after.snapshot(proxy)) == _content(fresh.snapshot(proxy))
    clusters = b"".join(r.body for r in after.snapshot(proxy).resources[CLUSTER].values())
    assert b"spiffe://example.org/" in clusters and b"spiffe://cluster.local/" not in clusters


def test_a_custom_provider_service_appearing_reaches_a_proxy_that_cannot_see_it() -> None:
    """A proxy whose Sidecar hides the provider's service (namespace b sees only ./*) still changes when
    the service appears: its CUSTOM policy goes from failing closed to ext_authz. Nothing else of its
    snapshot changes, so only the authorization input can tell."""
    mesh = Mesh()
    policy = {"apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
              "metadata": {"name": "custom", "namespace": "istio-system"},
              "spec": {"action": "CUSTOM", "provider": {"name": "ext"}, "rules": [{}]}}  # fmt: skip
    own = _docs("b", "s1", ["10.9.1.1"])[1]  # proxy 1 of namespace b backs s1: it has an inbound side
    mesh.apply(_resources([policy, own]))
    hub = Hub()
    assert mesh.generator is not None
    hub.publish(mesh.generator, changed_at=0.0)
    conn = hub.connect(proxy=_proxy("b", 1), stream=SotwStream(nonce_prefix="b"), now=0.0)
    assert conn.snapshot is not None
    before = conn.snapshot.resources[LISTENER]["virtualInbound"].body
    assert b"ext_authz" not in before and b"-provider" in before  # fails closed: no such service yet
    generator = mesh.apply(_resources([_EXT_AUTHZ_SERVICE]))
    hub.publish(generator, changed_at=1.0)
    after = conn.snapshot.resources[LISTENER]["virtualInbound"].body
    assert _content(conn.snapshot) == _content(ConfigGenerator(generator.world, options=OPTIONS).snapshot(conn.proxy))
    assert b"ext_authz" in after and b"-provider" not in after


def test_an_envoy_filter_alone_reaches_a_connected_proxy_and_its_removal_too() -> None:
    """A push whose only change is an EnvoyFilter: the shared layers are unchanged, yet the held snapshot is
    not current (the patch layer decides), both when the filter comes and when it goes."""
    mesh = Mesh()
    hub = Hub()
    assert mesh.generator is not None
    hub.publish(mesh.generator, changed_at=0.0)
    conn = hub.connect(proxy=_proxy("a", 1), stream=SotwStream(nonce_prefix="a"), now=0.0)
    timeout = {"applyTo": "CLUSTER", "match": {"cluster": {"service": "s1.a.svc.cluster.local"}},
               "patch": {"operation": "MERGE", "value": {"connect_timeout": "7s"}}}  # fmt: skip
    doc = {"apiVersion": "networking.istio.io/v1alpha3", "kind": "EnvoyFilter",
           "metadata": {"name": "ef", "namespace": "a"}, "spec": {"configPatches": [timeout]}}  # fmt: skip
    name = "outbound|9080||s1.a.svc.cluster.local"

    def connect_timeout() -> int:
        assert conn.snapshot is not None
        cluster = Cluster()
        cluster.ParseFromString(conn.snapshot.resources[CLUSTER][name].body)
        return int(cluster.connect_timeout.seconds)

    assert connect_timeout() != 7
    hub.publish(mesh.apply(_resources([doc])), changed_at=1.0)
    assert connect_timeout() == 7
    hub.publish(mesh.apply([], deleted=(parse_resource(doc).key,)), changed_at=2.0)
    assert connect_timeout() != 7


def test_a_telemetry_collector_service_appearing_reaches_a_carried_proxy() -> None:
    """A Telemetry logs to OpenTelemetry (envoyOtelAls: the ext-authz.a service, absent at first): when the
    collector's service appears, a proxy carried over from the previous push gets the logger, though its
    Sidecar hides the service (namespace b sees only ./*) and nothing else of its config changes."""
    mesh = Mesh()
    logs = {"apiVersion": "telemetry.istio.io/v1", "kind": "Telemetry",
            "metadata": {"name": "otel", "namespace": "istio-system"},
            "spec": {"accessLogging": [{"providers": [{"name": "otel-als"}]}]}}  # fmt: skip
    mesh.apply(_resources([logs]))
    hub = Hub()
    assert mesh.generator is not None
    hub.publish(mesh.generator, changed_at=0.0)
    conn = hub.connect(proxy=_proxy("b", 1), stream=SotwStream(nonce_prefix="b"), now=0.0)
    assert conn.snapshot is not None
    assert not any(b"open_telemetry" in r.body for r in conn.snapshot.resources[LISTENER].values())
    generator = mesh.apply(_resources([_EXT_AUTHZ_SERVICE]))
    hub.publish(generator, changed_at=1.0)
    assert _content(conn.snapshot) == _content(ConfigGenerator(generator.world, options=OPTIONS).snapshot(conn.proxy))
    assert any(b"open_telemetry" in r.body for r in conn.snapshot.resources[LISTENER].values())


@pytest.mark.parametrize("seed", range(6))
def test_a_change_that_keeps_every_scope_input_still_rebuilds_what_it_touches(seed: int) -> None:
    """Changes that leave every scope input alone (endpoints, a TCP/TLS VirtualService's routes alone, a
    delegate's routes, a subset added) carry the previous scopes and listener plans over
    (`same_scope_inputs`), and an HTTP route's weights do not: each proxy must get what a fresh build gives."""
    rng = random.Random(seed)
    mesh = Mesh()
    root = {"apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
            "metadata": {"name": "root", "namespace": "a"},
            "spec": {"hosts": ["s2"], "http": [{"delegate": {"name": "delegate"}}]}}  # fmt: skip
    mesh.apply(_resources([*_tcp_service(random.Random(1), "a"), _l4_route(rng, "a"), root]))
    proxies = [dataclasses.replace(_proxy("a", n), capture=n == 3) for n in (1, 2, 3)] + [_proxy("b", 1)]
    for step in range(12):
        pick = rng.random()
        if pick < 0.5:
            docs = [_l4_route(rng, "a")]  # only the VirtualService: the services and rules are the same objects
        elif pick < 0.65:
            docs = _docs(rng.choice("ab"), rng.choice(["s1", "s2"]), [f"10.0.{step}.9", "10.0.0.1"])[1:2]
        elif pick < 0.7:  # an HTTP route's weights
            docs = _docs(rng.choice("ab"), "s1", ["10.0.0.1"], weight=rng.choice([10, 50, 80]))[3:]
        elif pick < 0.8:  # only the delegate (no hosts of its own): the root's routes change
            delegate = {"http": [{"timeout": f"{step + 1}s", "route": [{"destination": {"host": "s1"}}]}]}
            docs = [{**root, "metadata": {"name": "delegate", "namespace": "a"}, "spec": delegate}]
        else:
            docs = _tcp_service(rng, "a")[2:]  # the DestinationRule only (subsets, tunnel)
        generator = mesh.apply(_resources(docs))
        fresh = ConfigGenerator(generator.world, options=OPTIONS)
        for proxy in proxies:
            assert _content(generator.snapshot(proxy)) == _content(fresh.snapshot(proxy)), (step, proxy.node_id)


def test_carried_world_checks_follow_their_inputs() -> None:
    """A whole-World check is carried while what it reads is unchanged: a credentialName error goes
    when its Secret appears, comes back when the Secret goes, and stays put across unrelated changes."""
    mesh = Mesh()
    rule = {"apiVersion": "networking.istio.io/v1", "kind": "DestinationRule",
            "metadata": {"name": "tls", "namespace": "a"},
            "spec": {"host": "s2.b.svc.cluster.local",
                     "trafficPolicy": {"tls": {"mode": "MUTUAL", "credentialName": "cred"}}}}  # fmt: skip
    # the workloads of namespace a are its pods
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "namespace": "a"},
           "status": {"podIP": "10.0.9.9"}}  # fmt: skip

    def credential_errors() -> list[str]:
        assert mesh.generator is not None
        mesh.generator.precompute()  # the World checks
        return sorted({str(e.key) for e in mesh.generator.errors if "cred" in e.message})

    mesh.apply(_resources([rule, pod]))
    assert credential_errors() == ["DestinationRule a/tls"]
    mesh.apply(_resources(_docs("b", "s1", ["10.0.0.7"])[1:2]))  # an endpoint change: carried
    assert credential_errors() == ["DestinationRule a/tls"]
    mesh.apply(_resources([_secret("a", "cred", 0)]))
    assert credential_errors() == []
    mesh.apply([], deleted=(ResourceKey("Secret", "a", "cred"),))
    assert credential_errors() == ["DestinationRule a/tls"]


def _pod(proxy: Proxy, labels: dict[str, str]) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": proxy.pod, "namespace": proxy.namespace, "labels": labels},
            "status": {"podIP": proxy.ip}}  # fmt: skip


def _connected(mesh: Mesh, proxy: Proxy) -> tuple[Hub, Any]:
    hub = Hub()
    assert mesh.generator is not None
    hub.publish(mesh.generator, changed_at=0.0)
    return hub, hub.connect(proxy=proxy, stream=SotwStream(nonce_prefix="p"), now=0.0)


def test_a_relabelled_workload_gets_its_new_policy_though_its_scope_is_unchanged() -> None:
    """Proxy 1 of namespace a backs b/s1, which its Sidecar (./*) does not show it: relabelling its pod
    changes b's endpoints but none of a's shared layers, and its scope key stays. Only its own layer
    changes (an AuthorizationPolicy now selects it): the push that carries unchanged scopes must still
    look at a proxy whose workload moved."""
    mesh = Mesh()
    proxy = _proxy("a", 1)
    deny = {"apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
            "metadata": {"name": "deny-x", "namespace": "a"},
            "spec": {"selector": {"matchLabels": {"app": "x"}}, "action": "DENY", "rules": [{}]}}  # fmt: skip
    mesh.apply(_resources([deny, _pod(proxy, {"app": "y"}), _docs("b", "s1", [proxy.ip])[1]]))
    hub, conn = _connected(mesh, proxy)
    before = conn.snapshot
    assert before is not None and b"deny-x" not in before.resources[LISTENER]["virtualInbound"].body
    generator = mesh.apply(_resources([_pod(proxy, {"app": "x"})]))
    hub.publish(generator, changed_at=1.0)
    assert not hub.failures
    assert conn.snapshot.layers[0] is before.layers[0]  # the scope's clusters: unchanged
    assert b"deny-x" in conn.snapshot.resources[LISTENER]["virtualInbound"].body
    assert _content(conn.snapshot) == _content(ConfigGenerator(generator.world, options=OPTIONS).snapshot(proxy))


def _rule_selecting_p(name: str, host: str) -> dict[str, Any]:
    """A DestinationRule of namespace a for `host`, selecting the pods labelled app=p: 7 connections at most."""
    return {"apiVersion": "networking.istio.io/v1", "kind": "DestinationRule",
            "metadata": {"name": name, "namespace": "a"},
            "spec": {"host": host, "workloadSelector": {"matchLabels": {"app": "p"}},
                     "trafficPolicy": {"connectionPool": {"tcp": {"maxConnections": 7}}}}}  # fmt: skip


def test_a_workload_selector_rule_moves_a_proxy_to_another_scope_though_its_old_one_is_unchanged() -> None:
    """A DestinationRule for a/s1 selecting proxy 1's pod: the proxy's scope key changes (the rule selects
    it) while its old scope's layers stay the same objects (the rule selects no proxy of that scope). The
    push must ask for the proxy's scope again rather than keep what the old scope gives it."""
    mesh = Mesh()
    proxy = _proxy("a", 1)
    mesh.apply(_resources([_pod(proxy, {"app": "p"})]))
    hub, conn = _connected(mesh, proxy)
    before = conn.snapshot
    assert before is not None
    generator = mesh.apply(_resources([_rule_selecting_p("s1-p", "s1")]))
    hub.publish(generator, changed_at=1.0)
    assert not hub.failures
    fresh = ConfigGenerator(generator.world, options=OPTIONS).snapshot(proxy)
    assert _content(conn.snapshot) == _content(fresh)
    cluster = Cluster.FromString(conn.snapshot.resources[CLUSTER]["outbound|9080||s1.a.svc.cluster.local"].body)
    assert cluster.circuit_breakers.thresholds[0].max_connections.value == 7


def test_the_hub_holds_the_scope_key_of_the_generation_even_when_nothing_the_proxy_sees_changed() -> None:
    """A DestinationRule of namespace a selecting proxy 1's pod, for b/s1 which a's Sidecar (./*) hides: the
    proxy's config is unchanged, and so are its old scope's layers, but its scope key is not (the rule's
    selector now tells a's proxies apart). The hub must hold the new key: later pushes look that scope up."""
    mesh = Mesh()
    proxy = _proxy("a", 1)
    mesh.apply(_resources([_pod(proxy, {"app": "p"})]))
    hub, conn = _connected(mesh, proxy)
    old_key = conn.scope_key
    generator = mesh.apply(_resources([_rule_selecting_p("b-s1-p", "s1.b.svc.cluster.local")]))
    hub.publish(generator, changed_at=1.0)
    assert not hub.failures
    assert conn.scope_key == generator.scope_key(proxy) != old_key
    assert _content(conn.snapshot) == _content(ConfigGenerator(generator.world, options=OPTIONS).snapshot(proxy))


def test_a_listener_plan_follows_tcp_routes_and_an_exact_host_hiding_a_wildcard_one() -> None:
    """A VirtualService edit of HTTP routes keeps every listener plan (`same_plan_routes`), but not a change of
    TCP routes, nor a VirtualService naming a host exactly where a wildcard one with TCP routes applied."""
    mesh = Mesh()
    mesh.apply(_resources(_tcp_service(random.Random(1), "a")))
    wildcard = {"apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
                "metadata": {"name": "wild", "namespace": "a"},
                "spec": {"hosts": ["*.a.svc.cluster.local"],
                         "tcp": [{"route": [{"destination": {"host": "s2", "port": {"number": 9080}}}]}]}}  # fmt: skip
    exact = {"apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
             "metadata": {"name": "exact", "namespace": "a"},
             "spec": {"hosts": ["t1"], "http": [{"route": [{"destination": {"host": "t1"}}]}]}}  # fmt: skip
    proxy = _proxy("a", 1)

    def listener_of_9000() -> bytes:
        assert mesh.generator is not None
        fresh = ConfigGenerator(mesh.generator.world, options=OPTIONS)
        served, built = _content(mesh.generator.snapshot(proxy)), _content(fresh.snapshot(proxy))
        assert served == built
        return next(body for name, body in served[LISTENER].items() if name.endswith("_9000"))

    before = listener_of_9000()
    assert b"outbound|9000||t1.a.svc.cluster.local" in before
    mesh.apply(_resources(_docs("a", "s1", ["10.0.0.1"], weight=30)[3:]))  # HTTP routes only: the plan is kept
    assert listener_of_9000() == before
    mesh.apply(_resources([wildcard]))  # TCP routes: t1's port 9000 goes to s2
    routed = listener_of_9000()
    assert b"outbound|9080||s2.a.svc.cluster.local" in routed
    mesh.apply(_resources([exact]))  # t1 named exactly, HTTP routes only: the wildcard no longer applies to it
    assert listener_of_9000() == before
