"""The `istio` ConfigMap's mesh config (key `mesh`): parsed by `meshd.api.mesh` (shared with standalone's
`--mesh-config` file)."""

from meshd.api.mesh import InvalidMeshConfig, LabelSelector, MeshConfig, Requirement, parse_mesh_config

__all__ = ["InvalidMeshConfig", "LabelSelector", "MeshConfig", "Requirement", "parse_mesh_config"]
