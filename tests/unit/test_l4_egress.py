"""VirtualService tcp/tls routes, egress ServiceEntries, Sidecar ingress and DestinationRule tunnel /
proxyProtocol / workloadSelector: validation (every rule names `Kind ns/name` and the field), and what the
per-scope listener plan makes of them (first matching route wins, SNI and address matching, errors found
once per World)."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
import yaml

from meshd.api.l4route import TLSMatchAttributes
from meshd.api.meta import InvalidResource
from meshd.api.parse import parse_resource
from meshd.generate.generator import ConfigGenerator
from meshd.generate.options import GenerateOptions
from meshd.model.world import build_world
from meshd.translate.l4_chain import filter_chain
from meshd.translate.l4_route import chain_policy, sni_names
from meshd.translate.listener_plan import PortPlan
from meshd.translate.proxy import parse_node_id
from meshd.translate.scope import ScopeKey

KIND = {"VirtualService": "networking.istio.io/v1", "ServiceEntry": "networking.istio.io/v1",
        "Sidecar": "networking.istio.io/v1", "DestinationRule": "networking.istio.io/v1"}  # fmt: skip


def _doc(kind: str, spec: dict[str, Any], name: str = "x") -> dict[str, Any]:
    return {"apiVersion": KIND[kind], "kind": kind, "metadata": {"name": name, "namespace": "ns"}, "spec": spec}


ROUTE = [{"destination": {"host": "a"}}]


@pytest.mark.parametrize(
    ("kind", "spec", "field", "message"),
    [
        ("VirtualService", {"hosts": ["*.example.com"],
                            "tls": [{"match": [{"sniHosts": ["a.other.com"]}], "route": ROUTE}]},
         "spec.tls[0].match[0].sniHosts[0]", "not within any of the VirtualService's hosts"),
        ("VirtualService", {"hosts": ["a"], "tls": [{"match": [{"sniHosts": ["a.*.com"]}], "route": ROUTE}]},
         "spec.tls[0].match[0].sniHosts[0]", "not a DNS name"),
        ("VirtualService", {"hosts": ["a"], "tls": [{"route": ROUTE}]}, "spec.tls[0].match", "Field required"),
        ("VirtualService", {"hosts": ["a"], "tcp": [{"match": [{"destinationSubnets": ["10.0.0.0/8", "nope"]}],
                                                     "route": ROUTE}]},
         "spec.tcp[0].match[0].destinationSubnets[1]", "not an IP address or CIDR range"),
        ("VirtualService", {"hosts": ["a"], "tcp": [{"match": [{"sourceSubnet": "10.0.0/8"}], "route": ROUTE}]},
         "spec.tcp[0].match[0].sourceSubnet", "not an IP address or CIDR range"),
        ("VirtualService", {"hosts": ["a"], "tcp": [{"route": [{"destination": {"host": "a"}, "weight": 0},
                                                               {"destination": {"host": "b"}, "weight": 0}]}]},
         "spec.tcp[0].route", "add up to 0"),
        ("VirtualService", {"tcp": [{"route": ROUTE}]}, "spec.tcp", "only have http routes"),
        ("VirtualService", {"hosts": ["a"], "tcp": [{"route": []}]}, "spec.tcp[0].route", "at least one destination"),
        ("ServiceEntry", {"hosts": ["*"]}, "spec.hosts[0]", "not a host"),
        ("ServiceEntry", {"hosts": ["a.*.com"]}, "spec.hosts[0]", "leftmost label"),
        ("ServiceEntry", {"hosts": ["a.com"], "addresses": ["10.0.0.0/33"]}, "spec.addresses[0]", "not an IP"),
        ("ServiceEntry", {"hosts": ["a.com"], "addresses": ["10.0.0.0/8"], "resolution": "DNS"},
         "spec.addresses[0]", "only for NONE and STATIC"),
        ("ServiceEntry", {"hosts": ["a.com"], "endpoints": [{"address": "1.2.3.4"}]}, "spec.endpoints",
         "cannot have endpoints"),
        ("ServiceEntry", {"hosts": ["a.com"], "resolution": "STATIC", "endpoints": [{"address": "db.example"}]},
         "spec.endpoints[0].address", "needs IP addresses"),
        ("ServiceEntry", {"hosts": ["a.com"], "resolution": "DNS_ROUND_ROBIN",
                          "endpoints": [{"address": "a.example"}, {"address": "b.example"}]},
         "spec.endpoints", "more than one endpoint"),
        ("ServiceEntry", {"hosts": ["*.a.com"], "resolution": "DNS"}, "spec.hosts[0]", "cannot be resolved by DNS"),
        ("ServiceEntry", {"hosts": ["*.a.com"], "resolution": "DYNAMIC_DNS"}, "spec.resolution", "not supported"),
        ("ServiceEntry", {"hosts": ["a.com"], "ports": [{"number": 53, "name": "dns", "protocol": "UDP"}]},
         "spec.ports[0].protocol", "is not one of"),
        ("ServiceEntry", {"hosts": ["a.com"], "ports": [{"number": 1, "name": "a"}, {"number": 1, "name": "b"}]},
         "spec.ports[1].number", "listed twice"),
        ("Sidecar", {"ingress": [{"port": {"number": 80, "protocol": "HTTP", "name": "h"},
                                  "defaultEndpoint": "10.0.0.1:80"}]},
         "spec.ingress[0].defaultEndpoint", "other addresses are not supported"),
        ("Sidecar", {"ingress": [{"port": {"number": 80, "protocol": "HTTP", "name": "h"}, "bind": "unix:///x"}]},
         "spec.ingress[0].bind", "Unix domain socket"),
        ("Sidecar", {"ingress": [{"port": {"number": 80, "protocol": "TCP", "name": "t"},
                                  "tls": {"mode": "ISTIO_MUTUAL"}}]},
         "spec.ingress[0].tls.mode", "SIMPLE or MUTUAL"),
        ("Sidecar", {"ingress": [{"port": {"number": 80, "protocol": "TCP", "name": "t"},
                                  "tls": {"mode": "MUTUAL", "serverCertificate": "/c", "privateKey": "/k"}}]},
         "spec.ingress[0].tls.caCertificates", "required for MUTUAL"),
        ("Sidecar", {"ingress": [{"port": {"number": 80, "protocol": "TCP", "name": "t"},
                                  "tls": {"serverCertificate": "/c", "privateKey": "/k", "cipherSuites": ["NOPE"]}}]},
         "spec.ingress[0].tls.cipherSuites[0]", "not a cipher suite"),
        ("Sidecar", {"outboundTrafficPolicy": {"mode": "ALLOW_ANY",
                                               "egressProxy": {"host": "p", "port": {"number": 1}}}},
         "spec.outboundTrafficPolicy.egressProxy", "not supported"),
        ("DestinationRule", {"host": "a", "trafficPolicy": {"tunnel": {"targetHost": "a/b", "targetPort": 1}}},
         "spec.trafficPolicy.tunnel.targetHost", "FQDN or an IP"),
        ("DestinationRule", {"host": "a", "trafficPolicy": {"tunnel": {"protocol": "PUT", "targetHost": "a",
                                                                        "targetPort": 1}}},
         "spec.trafficPolicy.tunnel.protocol", "CONNECT"),
        ("DestinationRule", {"host": "a", "trafficPolicy": {"proxyProtocol": {"version": "V3"}}},
         "spec.trafficPolicy.proxyProtocol.version", "V1"),
    ],
)  # fmt: skip
def test_invalid_resources_are_refused_naming_the_field(
    kind: str, spec: dict[str, Any], field: str, message: str
) -> None:
    with pytest.raises(InvalidResource) as err:
        parse_resource(_doc(kind, spec))
    assert (err.value.field, str(err.value.key)) == (field, f"{kind} ns/x"), err.value
    assert message in err.value.message, err.value


MESH = """
apiVersion: v1
kind: Service
metadata: {name: echo, namespace: default}
spec: {clusterIP: 10.96.0.9, ports: [{name: tcp, port: 9000}]}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: echo, namespace: default}
spec:
  host: echo
  trafficPolicy: {connectionPool: {tcp: {idleTimeout: 7s}}, tunnel: {targetHost: "2001:db8::1", targetPort: 9}}
  subsets: [{name: v1, labels: {v: "1"}}, {name: v2, labels: {v: "2"}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: echo, namespace: default, creationTimestamp: "2026-01-01T00:00:00Z"}
spec:
  hosts: [echo]
  tcp:
  - match: [{sourceLabels: {app: canary}}]
    route: [{destination: {host: echo, subset: v2}}]
  - route:
    - {destination: {host: echo, subset: v1}, weight: 75}
    - {destination: {host: echo, subset: v2}, weight: 25}
  - route: [{destination: {host: echo, subset: v2}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: echo-later, namespace: default, creationTimestamp: "2026-01-02T00:00:00Z"}
spec:
  hosts: [echo]
  tcp: [{route: [{destination: {host: echo}}]}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: ext, namespace: default}
spec:
  hosts: [a.example.com, b.example.com]
  ports: [{number: 443, name: tls, protocol: TLS}]
  resolution: DNS
"""


def _generator() -> ConfigGenerator:
    world = build_world([parse_resource(d) for d in yaml.safe_load_all(MESH)], domain_suffix="cluster.local")
    generator = ConfigGenerator(world, options=GenerateOptions(), check=True)
    generator.precompute()
    return generator


def _plan(generator: ConfigGenerator, *, labels: str, capture: bool) -> dict[int, PortPlan]:
    app = labels.split("=")[1]
    proxy = dataclasses.replace(
        parse_node_id(f"sidecar~10.0.0.5~{app}.default~default.svc.cluster.local"), capture=capture
    )
    key: ScopeKey = generator.scope_key(proxy)
    if app == "canary":
        key = dataclasses.replace(key, source=(True,))
    return {p.port: p for p in generator.queries.plan(key).ports}


def test_the_first_matching_route_wins_and_a_route_without_match_ends_the_list() -> None:
    generator = _generator()
    plain, canary = (
        _plan(generator, labels="app=plain", capture=False),
        _plan(generator, labels="app=canary", capture=False),
    )
    # plain clients: the weighted route (the third route, after a route without match, is never reached)
    chain = plain[9000].default
    assert not plain[9000].chains and chain is not None
    assert chain.clusters == (("outbound|9000|v1|echo.default.svc.cluster.local", 75),
                              ("outbound|9000|v2|echo.default.svc.cluster.local", 25))  # fmt: skip
    assert chain.idle_timeout == "7s" and chain.tunnel is not None and chain.tunnel.target == "[2001:db8::1]:9"
    # canary clients: their sourceLabels route matches the same way and comes first
    chain = canary[9000].default
    assert not canary[9000].chains and chain is not None
    assert chain.clusters == (("outbound|9000|v2|echo.default.svc.cluster.local", 100),)


def test_captured_listeners_match_addresses_and_sni_and_keep_the_rest_for_the_default() -> None:
    generator = _generator()
    captured = _plan(generator, labels="app=plain", capture=True)
    assert [c.prefix_ranges for c in captured[9000].chains] == [("10.96.0.9/32",)]
    assert captured[9000].default is None  # the unknown-destination cluster takes the rest
    assert sorted(c.server_names for c in captured[443].chains) == [("a.example.com",), ("b.example.com",)]
    assert captured[443].inspects_tls
    # without capture, two TLS hosts on 443 are told apart by SNI too
    bound = _plan(generator, labels="app=plain", capture=False)
    assert sorted(c.server_names for c in bound[443].chains) == [("a.example.com",), ("b.example.com",)]


SOURCES = """
apiVersion: v1
kind: Service
metadata: {name: db, namespace: default}
spec: {clusterIP: 10.96.0.7, ports: [{name: tcp, port: 5432}, {name: tls, port: 8443, appProtocol: tls}]}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: db, namespace: default}
spec:
  hosts: [db]
  tcp:
  - match: [{port: 5432, sourceSubnet: 10.0.0.5/24}]
    route: [{destination: {host: other}}]
  - route: [{destination: {host: db}}]
  tls:
  - match: [{port: 8443, sniHosts: [db]}]
    route: [{destination: {host: other}}]
---
apiVersion: v1
kind: Service
metadata: {name: other, namespace: default}
spec: {clusterIP: 10.96.0.8, ports: [{name: tcp, port: 5432}, {name: tls, port: 8443, appProtocol: tls}]}
"""


def test_source_subnet_matches_the_source_address_and_a_star_sni_any_name() -> None:
    # `*` (allowed where the VirtualService's hosts include `*`, as at gateways): no server_names restriction
    assert sni_names(TLSMatchAttributes.model_validate({"sniHosts": ["a.com", "*"]})) == ()
    assert sni_names(TLSMatchAttributes.model_validate({"sniHosts": ["a.com", "a.com", "*.b.com"]})) == (
        "a.com",
        "*.b.com",
    )
    world = build_world([parse_resource(d) for d in yaml.safe_load_all(SOURCES)], domain_suffix="cluster.local")
    generator = ConfigGenerator(world, options=GenerateOptions(), check=True)
    generator.precompute()
    assert all(e.severity == "warning" for e in generator.errors), generator.errors  # port shared when bound
    plan = _plan(generator, labels="app=plain", capture=True)
    first, rest = plan[5432].chains[:2]
    assert (first.source_ranges, first.prefix_ranges) == (("10.0.0.0/24",), ("10.96.0.7/32",))
    assert first.clusters == (("outbound|5432||other.default.svc.cluster.local", 100),)
    assert (rest.source_ranges, rest.clusters) == ((), (("outbound|5432||db.default.svc.cluster.local", 100),))
    match = filter_chain(first).filter_chain_match
    assert [(r.address_prefix, r.prefix_len.value) for r in match.source_prefix_ranges] == [("10.0.0.0", 24)]
    sni = next(c for c in plan[8443].chains if c.prefix_ranges == ("10.96.0.7/32",))
    assert sni.server_names == ("db",) and sni.clusters[0][0] == "outbound|8443||other.default.svc.cluster.local"


def test_a_younger_virtual_service_for_the_same_host_is_reported_once_per_world() -> None:
    generator = _generator()
    [error] = generator.errors
    assert (str(error.key), error.field) == ("VirtualService default/echo-later", "spec.tcp")
    assert "already routed (TCP/TLS) by the older VirtualService VirtualService default/echo" in error.message


def test_chain_policy_reads_the_destination_rule_of_the_cluster() -> None:
    rule = parse_resource(yaml.safe_load(MESH.split("---")[1]))
    idle, tunnel = chain_policy(lambda host: rule, "outbound|9000|v2|echo.default.svc.cluster.local")  # type: ignore[arg-type, return-value]
    assert idle == "7s" and tunnel is not None and not tunnel.post
