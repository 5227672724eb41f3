"""Istio's MeshConfig (YAML), as meshd reads it from the `istio` ConfigMap (key `mesh`) in Kubernetes mode and
from the `--mesh-config` file standalone. The fields meshd uses:
- rootNamespace (mesh-wide policies), trustDomain (SPIFFE identities in principals and SAN checks);
- defaultConfig.discoveryAddress, concurrency and proxyMetadata (injection, the lowest level of
  kube/inject_proxyconfig.py), defaultConfig.gatewayTopology.numTrustedProxies (the
  X-Forwarded-For hops a gateway trusts for the client address);
- discoverySelectors (Kubernetes label selectors on namespaces: when any is set, only objects in a
  namespace matching one of them count; Kubernetes mode only);
- what translation reads (`api.meshconfig.MeshPolicy`: extensionProviders, pathNormalization,
  trustDomainAliases, outboundTrafficPolicy.mode).
Every other field present is listed in `unused` (by its path), which the source reports once as a
warning: never silently dropped. A field meshd uses with a value it cannot use raises InvalidMeshConfig
naming it (the source keeps the last good mesh config)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import yaml

from meshd.api.meshconfig import InvalidMeshConfig, MeshPolicy, parse_mesh_policy
from meshd.api.meta import InvalidResource, ResourceKey
from meshd.api.proxyconfig import ENV_NAME, RESERVED_ENV

__all__ = ["InvalidMeshConfig", "LabelSelector", "MeshConfig", "Requirement", "parse_mesh_config"]

# Top-level fields meshd reads (discoverySelectors only in Kubernetes mode, see `parse_mesh_config`)
USED_FIELDS = frozenset(
    {
        "rootNamespace",
        "trustDomain",
        "trustDomainAliases",
        "defaultConfig",
        "discoverySelectors",
        "extensionProviders",
        "pathNormalization",
        "outboundTrafficPolicy",
        # telemetry (api/meshtelemetry.py)
        "accessLogFile",
        "accessLogFormat",
        "accessLogEncoding",
        "enableTracing",
        "defaultProviders",
    }
)
USED_DEFAULT_CONFIG = frozenset({"discoveryAddress", "gatewayTopology", "tracing", "concurrency", "proxyMetadata"})
USED_GATEWAY_TOPOLOGY = frozenset({"numTrustedProxies"})
MAX_TRUSTED_PROXIES = 64
MESH_FIELD = "data.mesh"  # where the ConfigMap holds the mesh config (the message names the field in it)


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
    # defaultConfig.gatewayTopology.numTrustedProxies
    gateway_trusted_proxies: int = 0
    # defaultConfig.concurrency (None: not set) and proxyMetadata: what injected proxies get by default
    proxy_concurrency: int | None = None
    proxy_metadata: tuple[tuple[str, str], ...] = ()
    # the paths of fields present that meshd does not use (reported once as warnings; not compared: a
    # change of them alone changes nothing meshd builds)
    unused: tuple[str, ...] = field(default=(), compare=False)

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


def _unused(raw: dict[str, Any], used: frozenset[str], prefix: str = "") -> list[str]:
    return [f"{prefix}{name}" for name in sorted(map(str, raw)) if name not in used]


PROXY_CONFIG_ANNOTATION = "proxy.istio.io/config"


def annotation_trusted_proxies(annotations: Mapping[str, str]) -> tuple[int | None, str]:
    """A pod's `proxy.istio.io/config` `gatewayTopology.numTrustedProxies` (None: not set), and what is wrong
    with it ("" when fine; other gatewayTopology fields are named as not used by meshd)."""
    raw = annotations.get(PROXY_CONFIG_ANNOTATION)
    if raw is None:
        return None, ""
    try:
        config = yaml.safe_load(raw) if raw.strip() else {}
    except yaml.YAMLError:
        return None, "not YAML/JSON"
    if not isinstance(config, dict):
        return None, "must be a ProxyConfig mapping"
    if "gatewayTopology" not in config:
        return None, ""
    try:
        value, unused = _trusted_proxies(config, where="gatewayTopology")
    except InvalidMeshConfig as exc:
        return None, str(exc)
    if unused:
        return value, f"{', '.join(unused)}: not used by meshd, ignored"
    return value, ""


def _trusted_proxies(
    default_config: dict[str, Any], *, where: str = "defaultConfig.gatewayTopology"
) -> tuple[int, list[str]]:
    topology = default_config.get("gatewayTopology") or {}
    if not isinstance(topology, dict):
        raise InvalidMeshConfig(f"{where}: must be a mapping")
    value = topology.get("numTrustedProxies", 0)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_TRUSTED_PROXIES:
        raise InvalidMeshConfig(f"{where}.numTrustedProxies: {value!r} is not a number of proxies (0..64)")
    return value, _unused(topology, USED_GATEWAY_TOPOLOGY, f"{where}.")


def _proxy_defaults(default_config: dict[str, Any]) -> tuple[int | None, tuple[tuple[str, str], ...]]:
    concurrency = default_config.get("concurrency")
    if concurrency is not None and (type(concurrency) is not int or concurrency < 0):
        raise InvalidMeshConfig(f"defaultConfig.concurrency: {concurrency!r} is not a non-negative integer")
    metadata = default_config.get("proxyMetadata") or {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise InvalidMeshConfig("defaultConfig.proxyMetadata: must be a map of strings")
    bad = sorted(str(k) for k in metadata if not isinstance(k, str) or not ENV_NAME.match(k) or k in RESERVED_ENV)
    if bad:
        raise InvalidMeshConfig(
            f"defaultConfig.proxyMetadata.{bad[0]}: not a container environment variable name meshd's injector can set"
        )
    return concurrency, tuple(sorted(metadata.items()))


def parse_mesh_config(
    text: str,
    *,
    default_root: str = "istio-system",
    default_trust_domain: str = "cluster.local",
    kubernetes: bool = True,
) -> MeshConfig:
    """A MeshConfig document; raises InvalidMeshConfig naming the field. `kubernetes`: discoverySelectors
    apply (standalone, they are reported unused)."""
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
    if not isinstance(default_config, dict):
        raise InvalidMeshConfig("defaultConfig: must be a mapping")
    for name in ("rootNamespace", "trustDomain"):
        if name in raw and raw[name] is not None and not isinstance(raw[name], str):
            raise InvalidMeshConfig(f"{name}: must be a string")
    trusted, unused_topology = _trusted_proxies(default_config)
    proxy_concurrency, proxy_metadata = _proxy_defaults(default_config)
    used = USED_FIELDS if kubernetes else USED_FIELDS - {"discoverySelectors"}
    unused = _unused(raw, used) + _unused(default_config, USED_DEFAULT_CONFIG, "defaultConfig.") + unused_topology
    return MeshConfig(
        root_namespace=str(raw.get("rootNamespace") or default_root),
        trust_domain=str(raw.get("trustDomain") or default_trust_domain),
        discovery_address=str(default_config.get("discoveryAddress", "")),
        discovery_selectors=tuple(_selector(s, f"discoverySelectors[{i}]") for i, s in enumerate(selectors))
        if kubernetes
        else (),
        policy=parse_mesh_policy(raw),
        gateway_trusted_proxies=trusted,
        proxy_concurrency=proxy_concurrency,
        proxy_metadata=proxy_metadata,
        unused=tuple(unused),
    )


def mesh_warnings(mesh: MeshConfig, *, key: ResourceKey, origin: str, ca_trust_domain: str) -> list[InvalidResource]:
    """What the source reports (warnings, once per change) about a mesh config it applies: the fields meshd
    does not use, and a trust domain that is not the one meshd's CA issues identities in."""
    found = [
        InvalidResource(
            key,
            MESH_FIELD,
            f"{path}: not used by meshd, ignored (meshd reads rootNamespace, trustDomain, trustDomainAliases, "
            "defaultConfig.discoveryAddress, concurrency, proxyMetadata, gatewayTopology.numTrustedProxies, "
            "discoverySelectors, "
            "extensionProviders, pathNormalization, outboundTrafficPolicy)",
            origin,
            severity="warning",
        )
        for path in mesh.unused
    ]
    if mesh.trust_domain != ca_trust_domain:
        found.append(
            InvalidResource(
                key,
                MESH_FIELD,
                f"trustDomain: {mesh.trust_domain!r} is used for principals and SAN checks, but meshd's CA "
                f"issues identities in {ca_trust_domain!r} (--trust-domain); while they differ, list "
                f"{ca_trust_domain!r} in trustDomainAliases",
                origin,
                severity="warning",
            )
        )
    return found
