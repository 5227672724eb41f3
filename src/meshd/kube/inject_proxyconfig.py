"""Which proxy settings an injected pod gets (pure): the mesh config's `defaultConfig`, the ProxyConfig
resources and the pod's `proxy.istio.io/config` annotation, merged as Istio merges them at injection.

Precedence, lowest first (Istio's documented order: a ProxyConfig matching a workload wins over its annotation,
a mesh-wide ProxyConfig over `meshConfig.defaultConfig`):
1. the mesh config's `defaultConfig` (`concurrency`, `proxyMetadata`);
2. the ProxyConfig without selector in the root namespace (the mesh);
3. the ProxyConfig without selector in the pod's namespace;
4. the pod's annotation `proxy.istio.io/config` (`concurrency`, `proxyMetadata`);
5. the ProxyConfig in the pod's namespace whose `selector.matchLabels` the pod's labels match.
Where several ProxyConfigs qualify for one level, the oldest (creation time, then name) applies, as in Istio.
A field set at a level replaces the lower ones (`concurrency`, even 0: meshd's default); environment variables
merge name by name, the higher level's value winning.

ProxyConfigs apply when a pod is created (Istio: "changes will require restart of workloads")."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from meshd.api.proxyconfig import ProxyConfig, oldest_first


@dataclass(frozen=True)
class ProxySettings:
    """One level's settings: None / absent means "not set here"."""

    concurrency: int | None = None
    environment: tuple[tuple[str, str], ...] = ()

    @staticmethod
    def of(config: ProxyConfig | None) -> ProxySettings:
        if config is None:
            return ProxySettings()
        spec = config.spec
        return ProxySettings(spec.concurrency, tuple(sorted(spec.environment_variables.items())))


@dataclass(frozen=True)
class ProxyConfigs:
    """What the injector reads at one review: the mesh's defaults, the ProxyConfigs, the root namespace."""

    mesh: ProxySettings = field(default_factory=ProxySettings)
    configs: tuple[ProxyConfig, ...] = ()
    root_namespace: str = "istio-system"


def _oldest(configs: Iterable[ProxyConfig]) -> ProxyConfig | None:
    ordered = oldest_first(configs)
    return ordered[0] if ordered else None


def namespace_config(configs: Iterable[ProxyConfig], namespace: str) -> ProxyConfig | None:
    return _oldest(c for c in configs if c.metadata.namespace == namespace and c.spec.selector is None)


def workload_config(configs: Iterable[ProxyConfig], namespace: str, labels: Mapping[str, str]) -> ProxyConfig | None:
    return _oldest(
        c
        for c in configs
        if c.metadata.namespace == namespace
        and c.spec.selector is not None
        and all(labels.get(k) == v for k, v in c.spec.selector.match_labels.items())
    )


def merge(levels: Iterable[ProxySettings]) -> ProxySettings:
    """The levels merged, lowest first."""
    concurrency: int | None = None
    environment: dict[str, str] = {}
    for level in levels:
        if level.concurrency is not None:
            concurrency = level.concurrency
        environment.update(level.environment)
    return ProxySettings(concurrency, tuple(sorted(environment.items())))


def effective_settings(
    configs: ProxyConfigs, *, namespace: str, labels: Mapping[str, str], annotation: ProxySettings
) -> ProxySettings:
    """The settings a pod of `namespace` with `labels` and this annotation gets."""
    levels = [configs.mesh, ProxySettings.of(namespace_config(configs.configs, configs.root_namespace))]
    if namespace != configs.root_namespace:
        levels.append(ProxySettings.of(namespace_config(configs.configs, namespace)))
    levels.append(annotation)
    levels.append(ProxySettings.of(workload_config(configs.configs, namespace, labels)))
    return merge(levels)
