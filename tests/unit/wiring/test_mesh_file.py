"""`meshd serve --mesh-config`: the MeshConfig file standalone mode reads at start; an unusable one stops meshd
with the reason (a CUSTOM policy must never run against a half-read mesh config)."""

from __future__ import annotations

import pathlib

import pytest

from meshd.wiring.mesh import MeshConfigFileError, read_mesh_policy


def test_a_mesh_config_file_is_read(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "mesh.yaml"
    path.write_text(
        "extensionProviders:\n- name: ext\n  envoyExtAuthzHttp: {service: a.b.svc.cluster.local, port: 8000}\n"
        "defaultConfig: {discoveryAddress: meshd:15012}\n"  # fields meshd does not read are fine
    )
    assert [p.name for p in read_mesh_policy(path).extension_providers] == ["ext"]


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("- a\n- b\n", "must be a mapping"),
        ("extensionProviders: [{name: x, envoyExtAuthzHttp: {service: s}}]\n", "envoyExtAuthzHttp.port"),
        ("pathNormalization: {normalization: SOMETIMES}\n", "pathNormalization.normalization"),
        ("key: [unclosed\n", "--mesh-config"),
    ],
)
def test_an_unusable_mesh_config_file_stops_meshd(tmp_path: pathlib.Path, text: str, reason: str) -> None:
    path = tmp_path / "mesh.yaml"
    path.write_text(text)
    with pytest.raises(MeshConfigFileError, match=reason.replace(".", r"\.").replace("[", r"\[")):
        read_mesh_policy(path)
    with pytest.raises(MeshConfigFileError, match="No such file"):
        read_mesh_policy(tmp_path / "missing.yaml")
