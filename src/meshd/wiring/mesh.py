"""Standalone mode's mesh config: the `--mesh-config` file (MeshConfig YAML, as istiod's --meshConfig),
read once at start. A file that is not valid stops meshd with the reason (authorization policies naming
an extension provider must never run against a half-read mesh config)."""

from __future__ import annotations

import pathlib

import yaml

from meshd.api.meshconfig import InvalidMeshConfig, MeshPolicy, parse_mesh_policy


class MeshConfigFileError(RuntimeError):
    pass


def read_mesh_policy(path: pathlib.Path) -> MeshPolicy:
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise MeshConfigFileError(f"--mesh-config {path}: {exc}") from None
    if not isinstance(raw, dict):
        raise MeshConfigFileError(f"--mesh-config {path}: must be a mapping (MeshConfig YAML)")
    try:
        return parse_mesh_policy(raw)
    except InvalidMeshConfig as exc:
        raise MeshConfigFileError(f"--mesh-config {path}: {exc}") from None
