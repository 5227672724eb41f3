"""KubeSource, pure (handlers called directly): one store origin per object (a change touches one
key), invalid objects reported and the last valid version kept, discoverySelectors (namespace
relabelled in/out), Node topology labels on Pods, ignored kinds never stored."""

from __future__ import annotations

import base64
import logging
from typing import Any

import pytest

import meshd.kube.source as source_module
from meshd.api.kube import Pod
from meshd.api.meta import ResourceKey
from meshd.kube.source import KubeSource
from meshd.model.services import locality_from_labels
from meshd.model.store import ConfigStore
from tests.certs import Authority

Obj = dict[str, Any]
LOG = logging.getLogger("meshd.test.kube.source")


def obj(kind: str, name: str, namespace: str = "default", **fields: Any) -> Obj:
    api = {"VirtualService": "networking.istio.io/v1", "Gateway": "networking.istio.io/v1"}.get(kind, "v1")
    meta = {"name": name, "uid": f"uid-{name}", "resourceVersion": "1", **fields.pop("meta", {})}
    if namespace:
        meta["namespace"] = namespace
    return {"apiVersion": api, "kind": kind, "metadata": meta, **fields}


def svc(name: str, namespace: str = "default", port: int = 80) -> Obj:
    return obj("Service", name, namespace, spec={"ports": [{"name": "http", "port": port}]})


def ns(name: str, **labels: str) -> Obj:
    return obj("Namespace", name, "", meta={"labels": labels})


def mesh(text: str) -> Obj:
    return obj("ConfigMap", "istio", "istio-system", data={"mesh": text})


class Fixture:
    def __init__(self) -> None:
        self.store = ConfigStore()
        self.source = KubeSource(store=self.store, namespace="istio-system", log=LOG)
        self.notified = 0
        self.store.subscribe(self._count)

    def _count(self) -> None:
        self.notified += 1

    def add(self, item: Obj) -> None:
        self.source.handler(item["kind"])("ADDED", None, item)

    def modify(self, old: Obj, new: Obj) -> None:
        self.source.handler(new["kind"])("MODIFIED", old, new)

    def delete(self, item: Obj) -> None:
        self.source.handler(item["kind"])("DELETED", item, None)

    def stored(self) -> set[ResourceKey]:
        """What the store holds besides Namespaces (stored with their labels for Gateway API selectors)."""
        return {r.key for _, r in self.store.resources() if r.key.kind != "Namespace"}


@pytest.fixture
def f() -> Fixture:
    return Fixture()


def test_one_origin_per_object_and_changes_touch_one_key(f: Fixture) -> None:
    for name in ("a", "b", "c"):
        f.add(svc(name))
    f.store.drain_changes()
    changed = svc("b", port=81)
    f.modify(svc("b"), changed)
    assert list(f.store.drain_changes()) == [ResourceKey("Service", "default", "b")]
    f.delete(changed)
    assert f.store.drain_changes() == {ResourceKey("Service", "default", "b"): None}
    assert f.stored() == {ResourceKey("Service", "default", "a"), ResourceKey("Service", "default", "c")}
    before = f.notified
    f.modify(svc("a"), svc("a"))  # same content: no notification, no push
    assert f.notified == before


def test_a_status_write_moves_only_the_resource_version_and_wakes_no_push(f: Fixture) -> None:
    vs = obj("VirtualService", "web", spec={"hosts": ["web"], "http": [{"route": [{"destination": {"host": "web"}}]}]})
    f.add(vs)
    before = f.notified
    written = {**vs, "metadata": {**vs["metadata"], "resourceVersion": "2"}, "status": {"observedGeneration": 1}}
    f.modify(vs, written)  # what meshd's own status write comes back as
    assert f.notified == before
    [(_, held)] = f.store.resources()
    assert held.metadata.resource_version == "2"  # the status writer sees the version it wrote


def test_a_status_write_is_not_parsed_again_unless_the_kind_reads_its_status(
    f: Fixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    parsed: list[str] = []
    real = source_module.parse_resource

    def counting(raw: Obj, **kwargs: Any) -> Any:
        parsed.append(f"{raw['kind']}/{raw['metadata']['name']}")
        return real(raw, **kwargs)

    monkeypatch.setattr(source_module, "parse_resource", counting)
    vs = obj("VirtualService", "web", spec={"hosts": ["web"], "http": [{"route": [{"destination": {"host": "web"}}]}]})
    f.add(vs)
    managed = [{"manager": "meshd", "operation": "Update", "subresource": "status"}]
    written = {
        **vs,
        "metadata": {**vs["metadata"], "resourceVersion": "2", "managedFields": managed},
        "status": {"observedGeneration": 1},
    }
    f.modify(vs, written)
    assert parsed == ["VirtualService/web"]
    [(_, held)] = f.store.resources()
    assert held.metadata.resource_version == "2"

    relabelled = {**written, "metadata": {**written["metadata"], "resourceVersion": "3", "labels": {"a": "b"}}}
    f.modify(written, relabelled)  # not only the status: parsed
    assert parsed == ["VirtualService/web"] * 2
    assert f.store.resources()[0][1].metadata.labels == {"a": "b"}

    pod = obj("Pod", "p", spec={"containers": [{"name": "app"}]}, status={"podIP": "10.0.0.1"})
    f.add(pod)
    moved = {**pod, "metadata": {**pod["metadata"], "resourceVersion": "2"}, "status": {"podIP": "10.0.0.2"}}
    f.modify(pod, moved)  # a Pod's status is its address: parsed
    assert parsed[-2:] == ["Pod/p", "Pod/p"]
    [held_pod] = [r for _, r in f.store.resources() if r.key.kind == "Pod"]
    assert isinstance(held_pod, Pod) and held_pod.status.pod_ip == "10.0.0.2"

    service = svc("lb")
    f.add(service)
    balanced = {
        **service,
        "metadata": {**service["metadata"], "resourceVersion": "2"},
        "status": {"loadBalancer": {"ingress": [{"ip": "203.0.113.7"}]}},
    }
    f.modify(service, balanced)  # a Service's status is its load balancer's address: parsed
    assert parsed[-2:] == ["Service/lb", "Service/lb"]
    [held_service] = [r for _, r in f.store.resources() if r.key.kind == "Service"]
    assert held_service.status.load_balancer.ingress[0].ip == "203.0.113.7"  # type: ignore[attr-defined]


def test_a_refused_objects_status_write_keeps_its_error_and_last_accepted_version(f: Fixture) -> None:
    route = [{"destination": {"host": "web"}}]
    good = obj("VirtualService", "web", spec={"hosts": ["web"], "http": [{"timeout": "1s", "route": route}]})
    f.add(good)
    bad_spec = {"hosts": ["web"], "http": [{"timeout": "ten", "route": route}]}
    bad = obj("VirtualService", "web", spec=bad_spec, meta={"resourceVersion": "2"})
    f.modify(good, bad)
    written = {**bad, "metadata": {**bad["metadata"], "resourceVersion": "3"}, "status": {"observedGeneration": 2}}
    f.modify(bad, written)
    [err] = f.store.errors()
    assert str(err.key) == "VirtualService default/web"
    [(_, held)] = f.store.resources()
    assert held.metadata.resource_version == "1"  # the last accepted version, as it was


def test_invalid_object_is_reported_and_its_last_valid_version_kept(f: Fixture) -> None:
    good = svc("web")
    f.add(good)
    bad = obj("Service", "web", spec={"ports": [{"name": "http", "port": 70000}]})
    f.modify(good, bad)
    [err] = f.store.errors()
    assert str(err.key) == "Service default/web" and err.field == "spec.ports[0].port"
    assert err.origin == "kube:Service/default/web"
    assert f.store.resources()[0][1].spec.ports[0].port == 80  # type: ignore[attr-defined]
    f.modify(bad, svc("web", port=90))
    assert f.store.errors() == []
    new_vs = obj("VirtualService", "broken", spec={"hosts": ["web"], "http": [{"timeout": "ten"}]})
    f.add(new_vs)
    assert [str(e.key) for e in f.store.errors()] == ["VirtualService default/broken"]
    assert ResourceKey("VirtualService", "default", "broken") not in f.stored()


def test_kinds_meshd_ignores_are_not_stored(f: Fixture) -> None:
    f.add(obj("Gateway", "gw", spec={}))
    f.add(obj("ConfigMap", "other", "istio-system", data={"mesh": "discoverySelectors: [{matchLabels: {a: b}}]"}))
    f.add(ns("default"))
    f.add(obj("Node", "n1", ""))
    assert f.stored() == set()
    assert f.source.mesh.discovery_selectors == ()  # only the `istio` ConfigMap is mesh config


def test_discovery_selectors_filter_namespaces_and_follow_relabelling(f: Fixture) -> None:
    f.add(ns("default"))
    f.add(ns("team", mesh="on"))
    f.add(svc("a", "default"))
    f.add(svc("b", "team"))
    assert len(f.stored()) == 2
    f.add(mesh("discoverySelectors:\n- matchLabels: {mesh: 'on'}\n"))
    assert f.stored() == {ResourceKey("Service", "team", "b")}
    f.modify(ns("default"), ns("default", mesh="on"))  # relabelled in: its objects come back
    assert f.stored() == {ResourceKey("Service", "team", "b"), ResourceKey("Service", "default", "a")}
    f.modify(ns("team", mesh="on"), ns("team"))  # relabelled out: its objects leave
    assert f.stored() == {ResourceKey("Service", "default", "a")}
    f.add(svc("c", "team"))  # new objects in a non-selected namespace are ignored
    assert ResourceKey("Service", "team", "c") not in f.stored()
    f.modify(mesh("discoverySelectors:\n- matchLabels: {mesh: 'on'}\n"), mesh("{}"))  # selectors gone: everything
    assert len(f.stored()) == 3


def test_invalid_mesh_config_is_reported_and_the_previous_one_kept(f: Fixture) -> None:
    f.add(mesh("discoverySelectors:\n- matchExpressions: [{key: a, operator: In}]\n"))
    [err] = f.store.errors()
    assert str(err.key) == "ConfigMap istio-system/istio" and "values" in err.message
    f.add(mesh("trustDomain: example.org\nrootNamespace: mesh-root\ndefaultConfig: {discoveryAddress: 'meshd:15012'}"))
    # the invalid one's error is gone; a trust domain other than the CA's is a warning
    [warning] = f.store.errors()
    assert warning.severity == "warning" and warning.message.startswith("trustDomain: 'example.org' is used")
    assert (f.source.mesh.trust_domain, f.source.mesh.root_namespace) == ("example.org", "mesh-root")
    assert f.source.mesh.discovery_address == "meshd:15012"


def test_mesh_config_changes_touch_the_store_and_unused_fields_are_warned_once(f: Fixture) -> None:
    touched: list[int] = []
    f.store.subscribe(lambda: touched.append(1))
    f.add(mesh("rootNamespace: mesh-root\ndefaultConfig: {gatewayTopology: {numTrustedProxies: 2}}"))
    assert touched and f.source.mesh.gateway_trusted_proxies == 2 and f.store.errors() == []
    touched.clear()
    f.modify(
        mesh("{}"),
        mesh(
            "rootNamespace: mesh-root\nenablePrometheusMerge: true\n"
            "defaultConfig: {holdApplicationUntilProxyStarts: true,"
            " gatewayTopology: {numTrustedProxies: 2, proxyProtocol: {}}}"
        ),
    )
    assert not touched  # nothing meshd uses changed
    assert sorted(e.message.split(":")[0] for e in f.store.errors()) == [
        "defaultConfig.gatewayTopology.proxyProtocol",
        "defaultConfig.holdApplicationUntilProxyStarts",
        "enablePrometheusMerge",
    ]
    assert all(e.severity == "warning" and "not used by meshd" in e.message for e in f.store.errors())


def pod(name: str, node: str, **labels: str) -> Obj:
    return obj("Pod", name, meta={"labels": labels}, spec={"nodeName": node}, status={"podIP": "10.0.0.1"})


def node(name: str, **labels: str) -> Obj:
    return obj("Node", name, "", meta={"labels": labels})


def test_pods_get_their_node_topology_for_locality(f: Fixture) -> None:
    zone = {"topology.kubernetes.io/region": "eu", "topology.kubernetes.io/zone": "eu-1"}
    f.add(node("n1", **zone))
    f.add(pod("p", "n1", app="web"))
    [(_, stored)] = f.store.resources()
    assert isinstance(stored, Pod) and locality_from_labels(stored.metadata.labels) == "eu/eu-1"
    f.modify(node("n1", **zone), node("n1", **{**zone, "topology.istio.io/subzone": "rack9"}))
    [(_, stored)] = f.store.resources()
    assert locality_from_labels(stored.metadata.labels) == "eu/eu-1/rack9"
    f.add(pod("own", "n1", **{"topology.kubernetes.io/zone": "mine"}))  # a pod's own label wins
    own = next(r for _, r in f.store.resources() if r.metadata.name == "own")
    assert own.metadata.labels["topology.kubernetes.io/zone"] == "mine"


def test_mark_synced_loads_the_store(f: Fixture) -> None:
    f.add(svc("a"))
    assert not f.store.loaded
    f.source.mark_synced()
    assert f.store.loaded


def test_secrets_for_credential_names_are_stored_but_never_meshds_own_ca_keys(f: Fixture) -> None:
    pem = Authority().issue("client")
    data = {"tls.crt": base64.b64encode(pem.cert).decode(), "tls.key": base64.b64encode(pem.key).decode()}
    tls = {"type": "kubernetes.io/tls", "data": data}
    f.add(obj("Secret", "client-cert", "shop", **tls))
    f.add(obj("Secret", "istio-ca-secret", "istio-system", **tls))
    f.add(obj("Secret", "cacerts", "istio-system", **tls))
    f.add(obj("Secret", "cacerts", "shop", **tls))  # only meshd's own namespace holds its CA
    f.add(obj("Secret", "api-key", "shop", data={"key": "c2VjcmV0"}))  # not TLS material: neither stored nor an error
    assert f.stored() == {ResourceKey("Secret", "shop", "client-cert"), ResourceKey("Secret", "shop", "cacerts")}
    assert f.store.errors() == []


def test_the_mesh_configs_authorization_parts_are_read_and_a_change_wakes_the_push(f: Fixture) -> None:
    providers = (
        "extensionProviders:\n- name: ext\n  envoyExtAuthzGrpc: {service: authz.foo.svc.cluster.local, port: 9000}\n"
        "pathNormalization: {normalization: MERGE_SLASHES}\ntrustDomainAliases: [old.example.org]\n"
    )
    before = f.notified
    f.add(mesh(providers))
    policy = f.source.mesh.policy
    assert [p.name for p in policy.extension_providers] == ["ext"]
    assert (policy.path_normalization, policy.trust_domain_aliases) == ("MERGE_SLASHES", ("old.example.org",))
    assert f.notified == before + 1  # the store was touched: the next generation reads the new options
    f.modify(mesh(providers), mesh(providers.replace("port: 9000", "port: 0")))
    [err] = f.store.errors()  # an invalid provider: reported, the previous mesh config stays
    assert err.field == "data.mesh" and "extensionProviders[0].envoyExtAuthzGrpc.port" in err.message
    assert f.source.mesh.policy == policy
