"""Mesh config from the `istio` ConfigMap (key `mesh`, MeshConfig as YAML), the fields meshd reads:
rootNamespace, trustDomain, defaultConfig.discoveryAddress, discoverySelectors (Kubernetes label
selectors on namespaces: when any is set, only objects in a namespace matching one of them count), and
what authorization translation reads (`api.meshconfig.MeshPolicy`: extensionProviders,
pathNormalization, trustDomainAliases)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import yaml

from meshd.api.meshconfig import InvalidMeshConfig, MeshPolicy, parse_mesh_policy

__all__ = ["InvalidMeshConfig", "LabelSelector", "MeshConfig", "Requirement", "parse_mesh_config"]


@dataclass(frozen=True)
class Requirement:
    key: str
    operator: str  # In, NotIn, Exists, DoesNotExist
    values: tuple[str, ...] = ()

    def matches(self, labels: Mapping[str, str]) -> bool:
        if self.operator == "In":
            return labels.get(self.key) in self.values
        if self.operator == "NotIn":
            return labels.get(self.key) not in self.values
        if self.operator == "Exists":
            return self.key in labels
        return self.key not in labels  # DoesNotExist


@dataclass(frozen=True)
class LabelSelector:
    match_labels: tuple[tuple[str, str], ...] = ()
    match_expressions: tuple[Requirement, ...] = ()

    def matches(self, labels: Mapping[str, str]) -> bool:
        return all(labels.get(k) == v for k, v in self.match_labels) and all(
            r.matches(labels) for r in self.match_expressions
        )


@dataclass(frozen=True)
class MeshConfig:
    root_namespace: str = "istio-system"
    trust_domain: str = "cluster.local"
    discovery_address: str = ""
    discovery_selectors: tuple[LabelSelector, ...] = ()
    policy: MeshPolicy = field(default_factory=MeshPolicy)

    def selects(self, namespace_labels: Mapping[str, str] | None) -> bool:
        """Whether a namespace with these labels is part of the mesh (None: namespace unknown)."""
        if not self.discovery_selectors:
            return True
        if namespace_labels is None:
            return False
        return any(s.matches(namespace_labels) for s in self.discovery_selectors)


def _selector(raw: Any, where: str) -> LabelSelector:
    if not isinstance(raw, dict):
        raise InvalidMeshConfig(f"{where}: a label selector must be a mapping")
    labels = raw.get("matchLabels") or {}
    if not isinstance(labels, dict):
        raise InvalidMeshConfig(f"{where}.matchLabels: must be a mapping")
    requirements = []
    for i, expr in enumerate(raw.get("matchExpressions") or []):
        at = f"{where}.matchExpressions[{i}]"
        if not isinstance(expr, dict) or not isinstance(expr.get("key"), str):
            raise InvalidMeshConfig(f"{at}: needs a key")
        operator = expr.get("operator")
        values = expr.get("values") or []
        if operator not in ("In", "NotIn", "Exists", "DoesNotExist"):
            raise InvalidMeshConfig(f"{at}.operator: {operator!r} is not In, NotIn, Exists or DoesNotExist")
        if operator in ("In", "NotIn") and not values:
            raise InvalidMeshConfig(f"{at}.values: {operator} needs values")
        requirements.append(Requirement(expr["key"], operator, tuple(str(v) for v in values)))
    return LabelSelector(tuple(sorted((str(k), str(v)) for k, v in labels.items())), tuple(requirements))


def parse_mesh_config(text: str, *, default_root: str = "istio-system") -> MeshConfig:
    try:
        raw = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise InvalidMeshConfig(f"not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise InvalidMeshConfig("must be a mapping")
    selectors = raw.get("discoverySelectors") or []
    if not isinstance(selectors, list):
        raise InvalidMeshConfig("discoverySelectors: must be a list")
    default_config = raw.get("defaultConfig") or {}
    return MeshConfig(
        root_namespace=str(raw.get("rootNamespace") or default_root),
        trust_domain=str(raw.get("trustDomain") or "cluster.local"),
        discovery_address=str(default_config.get("discoveryAddress", "")) if isinstance(default_config, dict) else "",
        discovery_selectors=tuple(_selector(s, f"discoverySelectors[{i}]") for i, s in enumerate(selectors)),
        policy=parse_mesh_policy(raw),
    )
