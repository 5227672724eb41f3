"""`meshd serve --mesh-config`: the MeshConfig file standalone mode reads at start (an unusable one stops meshd
with the reason: a CUSTOM policy must never run against a half-read mesh config) and then watches: a good
change takes effect (the store is touched), a bad one keeps the last good mesh config with the error in the
store's errors, fields meshd does not use are reported as warnings."""

from __future__ import annotations

import logging
import pathlib

import pytest

from meshd.clock import SystemClock
from meshd.model.store import ConfigStore
from meshd.sources.mesh_file import MeshConfigFile, MeshConfigFileError


def _watch(path: pathlib.Path, store: ConfigStore | None = None) -> MeshConfigFile:
    return MeshConfigFile(
        path=path,
        store=store or ConfigStore(),
        clock=SystemClock(),
        interval_s=1.0,
        log=logging.getLogger("test"),
        root_namespace="istio-system",
        trust_domain="cluster.local",
    )


def test_a_mesh_config_file_is_read(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "mesh.yaml"
    path.write_text(
        "extensionProviders:\n- name: ext\n  envoyExtAuthzHttp: {service: a.b.svc.cluster.local, port: 8000}\n"
        "defaultConfig: {discoveryAddress: meshd:15012, gatewayTopology: {numTrustedProxies: 2}}\n"
        "rootNamespace: mesh-root\n"
    )
    mesh = _watch(path).mesh
    assert [p.name for p in mesh.policy.extension_providers] == ["ext"]
    assert (mesh.root_namespace, mesh.trust_domain, mesh.gateway_trusted_proxies) == ("mesh-root", "cluster.local", 2)


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("- a\n- b\n", "must be a mapping"),
        ("extensionProviders: [{name: x, envoyExtAuthzHttp: {service: s}}]\n", "envoyExtAuthzHttp.port"),
        ("pathNormalization: {normalization: SOMETIMES}\n", "pathNormalization.normalization"),
        ("defaultConfig: {gatewayTopology: {numTrustedProxies: -1}}\n", "gatewayTopology.numTrustedProxies"),
        ("key: [unclosed\n", "--mesh-config"),
    ],
)
def test_an_unusable_mesh_config_file_stops_meshd(tmp_path: pathlib.Path, text: str, reason: str) -> None:
    path = tmp_path / "mesh.yaml"
    path.write_text(text)
    with pytest.raises(MeshConfigFileError, match=reason.replace(".", r"\.").replace("[", r"\[")):
        _watch(path)
    with pytest.raises(MeshConfigFileError, match="No such file"):
        _watch(tmp_path / "missing.yaml")


def test_changes_apply_a_bad_one_keeps_the_last_good_and_unused_fields_are_reported(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "mesh.yaml"
    path.write_text("rootNamespace: first\n")
    store = ConfigStore()
    touched: list[int] = []
    store.subscribe(lambda: touched.append(store.revision))
    watch = _watch(path, store)
    assert watch.mesh.root_namespace == "first" and not store.errors()
    assert not watch.check() and not touched  # unchanged: nothing happens
    path.write_text("rootNamespace: second\ntrustDomain: td.example\nenableAutoMtls: false\n")
    assert watch.check() and touched
    assert (watch.mesh.root_namespace, watch.mesh.trust_domain) == ("second", "td.example")
    warnings = sorted(e.message for e in store.errors())
    assert all(e.severity == "warning" for e in store.errors())
    assert warnings[0].startswith("enableAutoMtls: not used by meshd, ignored")
    assert warnings[1].startswith("trustDomain: 'td.example' is used for principals and SAN checks")
    # a bad change: the last good mesh config stays, the error names the field
    touched.clear()
    path.write_text("rootNamespace: third\ndefaultConfig: {gatewayTopology: {numTrustedProxies: many}}\n")
    assert not watch.check() and not touched
    assert watch.mesh.root_namespace == "second"
    [error] = store.errors()
    assert error.severity == "error" and "defaultConfig.gatewayTopology.numTrustedProxies: 'many'" in error.message
    assert "the last good mesh config stays in effect" in error.message
    path.unlink()  # an unreadable file: the same
    assert not watch.check() and watch.mesh.root_namespace == "second"
    assert "cannot be read" in store.errors()[0].message
    path.write_text("rootNamespace: third\n")  # fixed: applied, the error gone
    assert watch.check() and watch.mesh.root_namespace == "third" and not store.errors()
