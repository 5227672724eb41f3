"""WorldState (incremental) must equal build_world (from scratch) after any sequence of changes."""

from __future__ import annotations

import random
from collections.abc import Mapping
from typing import Any

import pytest

from meshd.api.jwks import FETCHED_JWKS, fetched_jwks
from meshd.api.meta import Resource, ResourceKey
from meshd.api.parse import parse_resource
from meshd.model.state import WorldState
from meshd.model.world import World, build_world
from tests.certs import Authority

NAMESPACES = ("a", "b")


def _service(rng: random.Random, ns: str, name: str) -> dict[str, Any]:
    ports = [{"name": "http", "port": 9080, "targetPort": 8080}]
    if rng.random() < 0.3:
        ports.append({"name": "grpc", "port": 7070})
    spec: dict[str, Any] = {"ports": ports}
    shape = rng.random()
    if shape < 0.15:  # ExternalName: a DNS endpoint per port, whatever the slices say
        spec.update(type="ExternalName", externalName=f"{name}.example.com")
    elif shape < 0.3:  # headless
        spec["clusterIP"] = "None"
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": ns},
        "spec": spec,
    }


_LOCALITY_LABELS: list[dict[str, str]] = [
    {},
    {"istio-locality": "us-east.zone-a"},
    {"topology.kubernetes.io/region": "eu-west", "topology.kubernetes.io/zone": "zone-c"},
]


def _pod(rng: random.Random, ns: str, name: str) -> dict[str, Any]:
    labels = {"version": rng.choice(["v1", "v2"]), **rng.choice(_LOCALITY_LABELS)}
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": ns, "labels": labels},
        "status": {"podIP": f"10.0.0.{rng.randint(1, 12)}"},
    }


def _slice(rng: random.Random, ns: str, name: str) -> dict[str, Any]:
    endpoints = []
    for _ in range(rng.randint(0, 3)):
        ep: dict[str, Any] = {
            "addresses": [f"10.0.0.{rng.randint(1, 12)}"],
            "conditions": rng.choice(
                [{"ready": True}, {"ready": False}, {}, {"ready": False, "serving": True, "terminating": True}]
            ),
        }
        if rng.random() < 0.7:
            ep["targetRef"] = {"kind": "Pod", "name": f"p{rng.randint(0, 5)}", "namespace": ns}
        endpoints.append(ep)
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {"name": name, "namespace": ns, "labels": {"kubernetes.io/service-name": f"s{rng.randint(0, 3)}"}},
        "ports": [{"name": "http", "port": 8080}, {"name": "grpc", "port": 7070}],
        "endpoints": endpoints,
    }


def _entry(rng: random.Random, ns: str, name: str) -> dict[str, Any]:
    return {
        "apiVersion": "networking.istio.io/v1",
        "kind": "WorkloadEntry",
        "metadata": {"name": name, "namespace": ns},
        "spec": {
            "address": f"10.0.0.{rng.randint(1, 12)}",
            "labels": {"app": "vm", "version": "v3"},
            "locality": rng.choice(["", "us-east/zone-b", "eu-west"]),
        },
    }


def _service_entry(rng: random.Random, ns: str, name: str) -> dict[str, Any]:
    return {
        "apiVersion": "networking.istio.io/v1",
        "kind": "ServiceEntry",
        "metadata": {"name": name, "namespace": ns},
        "spec": {
            "hosts": [rng.choice(["vm.example.internal", f"s{rng.randint(0, 3)}.{ns}.svc.cluster.local"])],
            "ports": [{"number": 80, "name": "http", "protocol": "HTTP"}],
            "resolution": "STATIC",
            "workloadSelector": {"labels": {"app": "vm"}},
        },
    }


def _rule(rng: random.Random, ns: str, name: str) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "host": f"s{rng.randint(0, 3)}.a.svc.cluster.local",
        "subsets": [{"name": "v1", "labels": {"version": "v1"}}],
    }
    if rng.random() < 0.3:
        spec["trafficPolicy"] = {"tls": {"mode": "MUTUAL", "credentialName": "cred"}}
    return {
        "apiVersion": "networking.istio.io/v1",
        "kind": "DestinationRule",
        "metadata": {"name": name, "namespace": ns},
        "spec": spec,
    }


_CA = Authority()
_PAIRS = [_CA.issue(f"client-{i}", client=True) for i in range(2)]


def _secret(rng: random.Random, ns: str, name: str) -> dict[str, Any]:
    pair = rng.choice(_PAIRS)
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name, "namespace": ns},
        "type": "kubernetes.io/tls",
        "stringData": {"tls.crt": pair.cert.decode(), "tls.key": pair.key.decode(), "ca.crt": _CA.pem.decode()},
    }


def _virtual_service(rng: random.Random, ns: str, name: str) -> dict[str, Any]:
    """A root (exact or wildcard host), or a delegate (no hosts); matches by source labels."""
    http: list[dict[str, Any]] = [{"route": [{"destination": {"host": "s0"}}]}]
    if rng.random() < 0.3:
        http.insert(0, {"match": [{"sourceLabels": {"version": rng.choice(["v1", "v2"])}}], "route": http[0]["route"]})
    if rng.random() < 0.3:
        http.insert(0, {"delegate": {"name": f"vs{rng.randint(0, 2)}"}})
    hosts = rng.choice([[f"s{rng.randint(0, 3)}"], [f"s{rng.randint(0, 3)}"], ["*.a.svc.cluster.local"], []])
    spec: dict[str, Any] = {"hosts": hosts, "http": http}
    if hosts and rng.random() < 0.3:  # bound to a Gateway (of either namespace) instead of the mesh
        spec["gateways"] = [rng.choice(["gw0", "gw1", "a/gw0", "b/gw1"])]
    return {
        "apiVersion": "networking.istio.io/v1",
        "kind": "VirtualService",
        "metadata": {"name": name, "namespace": ns},
        "spec": spec,
    }


def _sidecar(rng: random.Random, ns: str, name: str) -> dict[str, Any]:
    return {
        "apiVersion": "networking.istio.io/v1",
        "kind": "Sidecar",
        "metadata": {"name": name, "namespace": ns},
        "spec": {"egress": [{"hosts": [rng.choice(["./*", "*/*"])]}]},
    }


def _request_authentication(rng: random.Random, ns: str, name: str) -> dict[str, Any]:
    spec: dict[str, Any] = {"jwtRules": [{"issuer": f"https://{name}.example", "jwksUri": _jwks_uri(rng)}]}
    if rng.random() < 0.5:
        spec["selector"] = {"matchLabels": {"version": rng.choice(["v1", "v2"])}}
    return {
        "apiVersion": "security.istio.io/v1",
        "kind": "RequestAuthentication",
        "metadata": {"name": name, "namespace": rng.choice([ns, "istio-system"])},
        "spec": spec,
    }


def _telemetry(rng: random.Random, ns: str, name: str) -> dict[str, Any]:
    spec: dict[str, Any] = {"accessLogging": [{"disabled": rng.random() < 0.5}]}
    if rng.random() < 0.5:
        spec["selector"] = {"matchLabels": {"version": rng.choice(["v1", "v2"])}}
    return {
        "apiVersion": "telemetry.istio.io/v1",
        "kind": "Telemetry",
        "metadata": {"name": name, "namespace": rng.choice([ns, "istio-system"])},
        "spec": spec,
    }


def _jwks_uri(rng: random.Random) -> str:
    return f"https://keys.example/{rng.randint(0, 1)}"


def _fetched(rng: random.Random, ns: str, name: str) -> Resource:
    return fetched_jwks(f"https://keys.example/{name[-1]}", rng.choice(['{"keys":[1]}', '{"keys":[2]}']))


def _peer_authentication(rng: random.Random, ns: str, name: str) -> dict[str, Any]:
    return {
        "apiVersion": "security.istio.io/v1",
        "kind": "PeerAuthentication",
        "metadata": {"name": name, "namespace": ns},
        "spec": {"mtls": {"mode": rng.choice(["STRICT", "PERMISSIVE"])}},
    }


def _authorization_policy(rng: random.Random, ns: str, name: str) -> dict[str, Any]:
    return {
        "apiVersion": "security.istio.io/v1",
        "kind": "AuthorizationPolicy",
        "metadata": {"name": name, "namespace": ns},
        "spec": {"action": rng.choice(["ALLOW", "DENY"]), "rules": [{"to": [{"operation": {"methods": ["GET"]}}]}]},
    }


def _gateway(rng: random.Random, ns: str, name: str) -> dict[str, Any]:
    return {
        "apiVersion": "networking.istio.io/v1",
        "kind": "Gateway",
        "metadata": {"name": name, "namespace": ns},
        "spec": {
            "selector": {"istio": "ingressgateway"},
            "servers": [{"port": {"number": rng.choice([80, 8080]), "name": "http", "protocol": "HTTP"},
                         "hosts": ["*"]}],
        },
    }  # fmt: skip


def _envoy_filter(rng: random.Random, ns: str, name: str) -> dict[str, Any]:
    patch = {"applyTo": "CLUSTER", "match": {"context": "SIDECAR_OUTBOUND"},
             "patch": {"operation": "MERGE", "value": {"connect_timeout": f"{rng.randint(1, 3)}s"}}}  # fmt: skip
    return {
        "apiVersion": "networking.istio.io/v1alpha3",
        "kind": "EnvoyFilter",
        "metadata": {"name": name, "namespace": ns},
        "spec": {"configPatches": [patch]},
    }


def _wasm_plugin(rng: random.Random, ns: str, name: str) -> dict[str, Any]:
    return {
        "apiVersion": "extensions.istio.io/v1alpha1",
        "kind": "WasmPlugin",
        "metadata": {"name": name, "namespace": ns},
        "spec": {"url": "file:///etc/wasm/plugin.wasm", "priority": rng.randint(-1, 1)},
    }


MAKERS = {
    "Service": (_service, "s", 4),
    "Pod": (_pod, "p", 6),
    "EndpointSlice": (_slice, "e", 5),
    "WorkloadEntry": (_entry, "w", 2),
    "ServiceEntry": (_service_entry, "se", 2),
    "DestinationRule": (_rule, "dr", 2),
    "VirtualService": (_virtual_service, "vs", 3),
    "Sidecar": (_sidecar, "sc", 1),
    "Secret": (_secret, "cred", 1),
    "RequestAuthentication": (_request_authentication, "ra", 2),
    "Telemetry": (_telemetry, "t", 2),
    FETCHED_JWKS: (_fetched, "k", 2),
    "PeerAuthentication": (_peer_authentication, "pa", 1),
    "AuthorizationPolicy": (_authorization_policy, "ap", 2),
    "Gateway": (_gateway, "gw", 2),
    "EnvoyFilter": (_envoy_filter, "ef", 1),
    "WasmPlugin": (_wasm_plugin, "wp", 1),
}


def _same(a: World, b: World) -> None:
    assert dict(a.services) == dict(b.services)
    assert dict(a.endpoints) == dict(b.endpoints)
    assert dict(a.workloads) == dict(b.workloads)
    assert dict(a.virtual_services) == dict(b.virtual_services)
    assert dict(a.rules_by_host) == dict(b.rules_by_host)
    assert dict(a.destination_rules) == dict(b.destination_rules)
    assert dict(a.sidecars) == dict(b.sidecars)
    assert dict(a.secrets) == dict(b.secrets)
    assert dict(a.virtual_services_by_name) == dict(b.virtual_services_by_name)
    assert a.source_selectors == b.source_selectors
    assert a.wildcard_hosts == b.wildcard_hosts
    assert dict(a.peer_authentications) == dict(b.peer_authentications)
    assert dict(a.request_authentications) == dict(b.request_authentications)
    assert dict(a.jwks) == dict(b.jwks)
    assert dict(a.telemetries) == dict(b.telemetries)
    assert dict(a.authorization_policies) == dict(b.authorization_policies)
    assert dict(a.gateways) == dict(b.gateways)
    assert dict(a.gateway_bindings) == dict(b.gateway_bindings)
    assert dict(a.envoy_filters) == dict(b.envoy_filters)
    assert dict(a.wasm_plugins) == dict(b.wasm_plugins)
    assert dict(a.gateway_secret_grants) == dict(b.gateway_secret_grants)
    assert sorted(map(str, a.errors)) == sorted(map(str, b.errors))


def _differ(now: Mapping[Any, object], then: Mapping[Any, object]) -> set[Any]:
    return {k for k in now.keys() | then.keys() if now.get(k) is not then.get(k)}


def _changes_hold(world: World, before: World | None) -> bool:
    """When the World says what changed since `before`, it names every endpoint key and workload address
    that differ. Returns whether it said."""
    changes = world.changes_since(before)
    if changes is None or before is None:
        return False
    assert _differ(world.endpoints, before.endpoints) <= changes.endpoints
    assert _differ(world.workloads, before.workloads) <= changes.workloads
    return True


@pytest.mark.parametrize("seed", range(40))
def test_incremental_world_equals_full_rebuild(seed: int) -> None:
    rng = random.Random(seed)
    state = WorldState(domain_suffix="cluster.local")
    current: dict[ResourceKey, Resource] = {}
    before: World | None = None
    said = 0
    for _ in range(60):
        changes: dict[ResourceKey, Resource | None] = {}
        for _ in range(rng.randint(1, 4)):
            kind = rng.choice(list(MAKERS))
            make, prefix, count = MAKERS[kind]
            ns = rng.choice(NAMESPACES)
            name = f"{prefix}{rng.randint(0, count - 1)}"
            made = make(rng, ns, name)
            resource = made if isinstance(made, Resource) else parse_resource(made)
            key = resource.key
            if key in current and rng.random() < 0.3:
                del current[key]
                changes[key] = None
            else:
                current[key] = resource
                changes[key] = resource
        state.apply(changes)
        world = state.world()
        _same(world, build_world(current.values(), domain_suffix="cluster.local"))
        said += _changes_hold(world, before)
        before = world
    assert said == 59  # every World after the first, assembled again or derived in place


def test_the_default_rule_follows_its_service_when_only_the_service_changes() -> None:
    """The default DestinationRule of a host (its service's namespace's, else the oldest) is taken from the
    last World while the host's rules and service are the same objects: a service that goes or comes,
    its rules unchanged, still changes it."""

    def rule(name: str, ns: str, created: str) -> Resource:
        return parse_resource(
            {
                "apiVersion": "networking.istio.io/v1",
                "kind": "DestinationRule",
                "metadata": {"name": name, "namespace": ns, "creationTimestamp": created},
                "spec": {
                    "host": "web.a.svc.cluster.local",
                    "trafficPolicy": {"connectionPool": {"tcp": {"maxConnections": 1}}},
                },
            }
        )

    service = parse_resource(
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web", "namespace": "a"},
         "spec": {"ports": [{"name": "http", "port": 80}]}}
    )  # fmt: skip
    older, own = rule("x", "b", "2024-01-01T00:00:00Z"), rule("y", "a", "2025-01-01T00:00:00Z")
    state = WorldState(domain_suffix="cluster.local")
    state.apply({r.key: r for r in (older, own, service)})
    host = "web.a.svc.cluster.local"
    assert state.world().destination_rules[host].metadata.name == "y"  # the service's namespace's
    state.apply({service.key: None})
    assert state.world().destination_rules[host].metadata.name == "x"  # no service: the oldest
    state.apply({service.key: service})
    assert state.world().destination_rules[host].metadata.name == "y"
