"""ProxyConfig at injection (pure): the precedence of the mesh's defaultConfig, the root namespace's and the pod's
namespace's ProxyConfig, the pod's `proxy.istio.io/config` and a workload-selecting ProxyConfig (Istio's order);
what the injected `istio-proxy` container gets (`--envoy-concurrency`, environment variables); the model's
named refusals; standalone mode refuses the kind, naming why."""

from __future__ import annotations

import dataclasses
import logging
import pathlib
from typing import Any

import pytest

from meshd.api.mesh import InvalidMeshConfig, parse_mesh_config
from meshd.api.meta import InvalidResource
from meshd.api.parse import parse_resource
from meshd.api.proxyconfig import ProxyConfig, namespace_conflicts
from meshd.kube.inject import inject_review
from meshd.kube.inject_proxyconfig import ProxyConfigs, ProxySettings
from meshd.model.store import ConfigStore
from meshd.sources.directory import DirectorySource
from meshd.wiring.webhooks import current_proxy_configs
from tests.unit.kube.test_inject import CONFIG, container, injected, make_pod, make_review

ROOT = "istio-system"


def proxy_config(name: str, namespace: str, spec: dict[str, Any], *, created: str = "") -> ProxyConfig:
    meta: dict[str, Any] = {"name": name, "namespace": namespace}
    if created:
        meta["creationTimestamp"] = created
    doc = {"apiVersion": "networking.istio.io/v1beta1", "kind": "ProxyConfig", "metadata": meta, "spec": spec}
    resource = parse_resource(doc)
    assert isinstance(resource, ProxyConfig)
    return resource


def with_configs(*configs: ProxyConfig, mesh: ProxySettings | None = None) -> Any:
    return dataclasses.replace(
        CONFIG, proxy_configs=ProxyConfigs(mesh=mesh or ProxySettings(), configs=configs, root_namespace=ROOT)
    )


def sidecar(pod: dict[str, Any], config: Any) -> tuple[str | None, dict[str, str]]:
    """(--envoy-concurrency or None, the environment variables set by value) of the injected istio-proxy."""
    proxy = container(injected(pod, config), "istio-proxy")
    args = proxy["args"]
    concurrency = args[args.index("--envoy-concurrency") + 1] if "--envoy-concurrency" in args else None
    return concurrency, {e["name"]: e["value"] for e in proxy["env"] if "value" in e}


def test_each_level_wins_over_the_one_below_in_istios_order() -> None:
    mesh = ProxySettings(1, (("LEVEL", "mesh"), ("MESH_ONLY", "m")))
    root = proxy_config("mesh-wide", ROOT, {"concurrency": 2, "environmentVariables": {"LEVEL": "root", "ROOT": "r"}})
    namespace = proxy_config("ns", "shop", {"concurrency": 3, "environmentVariables": {"LEVEL": "namespace"}})
    workload = proxy_config(
        "web", "shop", {"selector": {"matchLabels": {"app": "web"}}, "environmentVariables": {"LEVEL": "workload"}}
    )
    pod = make_pod(labels={"app": "web"})
    assert sidecar(make_pod(), with_configs(mesh=mesh)) == ("1", {"LEVEL": "mesh", "MESH_ONLY": "m"})
    assert sidecar(make_pod(), with_configs(root, mesh=mesh)) == ("2", {"LEVEL": "root", "MESH_ONLY": "m", "ROOT": "r"})
    assert sidecar(pod, with_configs(root, namespace, mesh=mesh))[0] == "3"
    assert sidecar(pod, with_configs(root, namespace, mesh=mesh))[1]["LEVEL"] == "namespace"
    # the workload's ProxyConfig sets no concurrency: the namespace's stays; its variable wins
    assert sidecar(pod, with_configs(root, namespace, workload, mesh=mesh)) == (
        "3", {"LEVEL": "workload", "MESH_ONLY": "m", "ROOT": "r"}
    )  # fmt: skip
    # the annotation: above the namespace's ProxyConfig, below the workload's
    annotated = make_pod(
        labels={"app": "web"},
        annotations={"proxy.istio.io/config": "concurrency: 5\nproxyMetadata: {LEVEL: annotation, OWN: o}\n"},
    )
    concurrency, env = sidecar(annotated, with_configs(root, namespace, mesh=mesh))
    assert (concurrency, env["LEVEL"], env["OWN"]) == ("5", "annotation", "o")
    concurrency, env = sidecar(annotated, with_configs(root, namespace, workload, mesh=mesh))
    assert (concurrency, env["LEVEL"], env["OWN"]) == ("5", "workload", "o")
    # a workload ProxyConfig with concurrency overrides the annotation's; 0 means meshd's default (no flag)
    pinned = proxy_config("pinned", "shop", {"selector": {"matchLabels": {"app": "web"}}, "concurrency": 0})
    assert sidecar(annotated, with_configs(namespace, pinned))[0] is None


def test_selection_namespace_labels_and_the_oldest_of_a_level() -> None:
    other_ns = proxy_config("ns", "other", {"concurrency": 7})
    other_labels = proxy_config("db", "shop", {"selector": {"matchLabels": {"app": "db"}}, "concurrency": 7})
    assert sidecar(make_pod(labels={"app": "web"}), with_configs(other_ns, other_labels)) == (None, {})
    newer = proxy_config("a-newer", "shop", {"concurrency": 9}, created="2026-12-02T00:00:00Z")
    older = proxy_config("z-older", "shop", {"concurrency": 4}, created="2026-12-01T00:00:00Z")
    assert sidecar(make_pod(), with_configs(newer, older))[0] == "4"
    # a ProxyConfig with a selector in the root namespace selects pods of the root namespace only
    root_selecting = proxy_config("sel", ROOT, {"selector": {"matchLabels": {"app": "web"}}, "concurrency": 6})
    assert sidecar(make_pod(labels={"app": "web"}), with_configs(root_selecting))[0] is None


def test_a_second_proxy_config_without_selector_in_a_namespace_gets_a_warning() -> None:
    older = proxy_config("a-older", "shop", {"concurrency": 4}, created="2026-12-01T00:00:00Z")
    newer = proxy_config("b-newer", "shop", {"concurrency": 9}, created="2026-12-02T00:00:00Z")
    other = proxy_config("c-other", "other", {"concurrency": 9}, created="2026-12-02T00:00:00Z")
    selecting = proxy_config("d-sel", "shop", {"selector": {"matchLabels": {"app": "web"}}})
    [warning] = namespace_conflicts([newer, other, selecting, older])
    assert (str(warning.key), warning.field, warning.severity) == (
        "ProxyConfig shop/b-newer",
        "spec.selector",
        "warning",
    )
    assert "ProxyConfig shop/a-older (older) already applies to the namespace" in warning.message


def test_one_second_of_creation_time_orders_them_and_then_the_name() -> None:
    """Creation timestamps have whole seconds: within one, the name decides (Istio's order)."""
    second = "2026-12-02T00:00:00Z"
    wide, a = proxy_config("ns-wide", "shop", {}, created=second), proxy_config("ns-a", "shop", {}, created=second)
    [warning] = namespace_conflicts([wide, a])
    assert str(warning.key) == "ProxyConfig shop/ns-wide" and "shop/ns-a (older)" in warning.message
    z = proxy_config("ns-z", "shop", {}, created="2026-12-01T23:59:59Z")  # a second earlier: first, whatever its name
    warnings = namespace_conflicts([wide, a, z])
    assert sorted(str(w.key) for w in warnings) == ["ProxyConfig shop/ns-a", "ProxyConfig shop/ns-wide"]
    assert all("shop/ns-z (older)" in w.message for w in warnings)


def test_a_gateway_pod_gets_them_too() -> None:
    pod = make_pod(labels={"istio": "ingressgateway"}, annotations={"inject.istio.io/templates": "gateway"})
    pod["spec"]["containers"] = [{"name": "istio-proxy", "image": "auto"}]
    config = with_configs(proxy_config("ns", "shop", {"concurrency": 3, "environmentVariables": {"A": "b"}}))
    assert sidecar(pod, config) == ("3", {"A": "b"})


@pytest.mark.parametrize(
    ("spec", "field", "words"),
    [
        ({"concurrency": -1}, "spec.concurrency", "greater than or equal to 0"),
        ({"image": {"imageType": "distroless"}}, "spec.image.imageType", "meshd ships one image"),
        ({"image": {"imageType": "debug"}}, "spec.image.imageType", "meshd ships one image"),
        ({"environmentVariables": {"1BAD": "x"}}, "spec.environmentVariables.1BAD", "environment variable name"),
        ({"environmentVariables": {"POD_NAME": "x"}}, "spec.environmentVariables.POD_NAME", "set by meshd"),
        ({"selector": {"matchLabels": {}}}, "spec.selector.matchLabels", "selects no workload"),
        ({"concurency": 2}, "spec.concurency", "unknown field"),
        ({"selector": {"labels": {"a": "b"}}}, "spec.selector.labels", "unknown field"),
    ],
)
def test_what_meshd_cannot_apply_is_refused_naming_the_field(spec: dict[str, Any], field: str, words: str) -> None:
    with pytest.raises(InvalidResource) as caught:
        proxy_config("bad", "shop", spec)
    assert caught.value.field == field and words in caught.value.message, caught.value


def test_image_type_default_is_accepted() -> None:
    assert proxy_config("img", "shop", {"image": {"imageType": "default"}}).spec.image is not None


@pytest.mark.parametrize(
    ("value", "words"),
    [
        ("proxyMetadata: [a]", "proxyMetadata must be a map of strings"),
        ("proxyMetadata: {'1X': a}", "not a container environment variable name"),
        ("proxyMetadata: {INSTANCE_IP: a}", "set by meshd's injector"),
    ],
)
def test_a_bad_annotation_proxy_metadata_refuses_the_pod(value: str, words: str) -> None:
    response = inject_review(make_review(make_pod(annotations={"proxy.istio.io/config": value})), config=CONFIG)
    assert response["response"]["allowed"] is False
    assert words in response["response"]["status"]["message"], response


def test_the_mesh_default_config_and_the_store_feed_the_injector() -> None:
    mesh = parse_mesh_config("defaultConfig:\n  concurrency: 2\n  proxyMetadata: {A: b}\nrootNamespace: root\n")
    assert (mesh.proxy_concurrency, mesh.proxy_metadata, mesh.unused) == (2, (("A", "b"),), ())
    with pytest.raises(InvalidMeshConfig, match=r"defaultConfig\.proxyMetadata\.POD_NAME"):
        parse_mesh_config("defaultConfig: {proxyMetadata: {POD_NAME: x}}")
    with pytest.raises(InvalidMeshConfig, match=r"defaultConfig\.concurrency"):
        parse_mesh_config("defaultConfig: {concurrency: many}")
    store = ConfigStore()
    config = proxy_config("ns", "root", {"concurrency": 3})
    store.replace_origin("k8s", {config.key: config}, [])
    found = current_proxy_configs(mesh, store)
    assert found == ProxyConfigs(mesh=ProxySettings(2, (("A", "b"),)), configs=(config,), root_namespace="root")


async def test_standalone_refuses_a_proxy_config_naming_why(tmp_path: pathlib.Path) -> None:
    from meshd.clock import SystemClock

    (tmp_path / "pc.yaml").write_text(
        "apiVersion: networking.istio.io/v1beta1\nkind: ProxyConfig\nmetadata: {name: pc, namespace: shop}\n"
        "spec: {concurrency: 3}\n"
    )
    store = ConfigStore()
    source = DirectorySource(
        directory=tmp_path, store=store, clock=SystemClock(), interval_s=1.0, log=logging.getLogger("test")
    )
    source.scan()
    assert store.of_kind("ProxyConfig") == []
    [error] = store.errors()
    assert str(error.key) == "ProxyConfig shop/pc" and error.field == "kind", error
    assert "applies when meshd injects a sidecar (Kubernetes mode)" in error.message
