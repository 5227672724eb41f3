"""networking.istio.io ProxyConfig (v1beta1), as Istio defines it: settings of the proxy process itself, applied
when a sidecar is injected (a change needs a restart of the workload, as in Istio). `selector` (workload labels;
none: the namespace, or the mesh from the root namespace), `concurrency` (Envoy's worker threads; 0: meshd's
default), `environmentVariables` (set on the `istio-proxy` container: the agent and Envoy see them), and
`image.imageType`.

How a pod's settings are merged, and what meshd does with them: `kube/inject_proxyconfig.py`.

Strict: unknown fields are refused by path; `imageType` other than `default` is refused by name (meshd ships
one image: there is no debug or distroless variant to switch to), and so are environment variable names that
are not valid container variable names or that meshd sets on the container itself (the agent's identity)."""

from __future__ import annotations

import re
from collections.abc import Iterable

from pydantic import Field, field_validator, model_validator

from meshd.api.meta import InvalidResource, Resource, StrictModel

PROXY_CONFIG_VERSIONS = ("networking.istio.io/v1beta1",)
# a container environment variable name, as Kubernetes validates it
ENV_NAME = re.compile(r"^[-._a-zA-Z][-._a-zA-Z0-9]*$")
# set by the injector on the `istio-proxy` container (kube/inject_template.py, kube/inject_metrics.py)
RESERVED_ENV = frozenset(
    {"POD_NAME", "POD_NAMESPACE", "INSTANCE_IP", "SERVICE_ACCOUNT", "HOST_IP", "ISTIO_PROMETHEUS_ANNOTATIONS"}
)
MAX_CONCURRENCY = 1024
# standalone mode (a directory of YAML) injects no pod: a ProxyConfig would change nothing, so it is refused
STANDALONE_REFUSAL = (
    "ProxyConfig applies when meshd injects a sidecar (Kubernetes mode); standalone, no proxy would get it: "
    "give `meshd agent` --envoy-concurrency and set the agent's environment (it passes it to Envoy)"
)


class ProxyConfigSelector(StrictModel):
    match_labels: dict[str, str] = Field(default_factory=dict)


class ProxyImage(StrictModel):
    image_type: str = "default"

    @field_validator("image_type")
    @classmethod
    def _one_image(cls, value: str) -> str:
        if value not in ("", "default"):
            known = "Istio's debug and distroless" if value in ("debug", "distroless") else "other"
            raise ValueError(
                f"{value!r} is not supported by meshd: meshd ships one image, with no {known} variants "
                "(use default, or name an image with the pod annotation sidecar.istio.io/proxyImage)"
            )
        return value


class ProxyConfigSpec(StrictModel):
    selector: ProxyConfigSelector | None = None
    concurrency: int | None = Field(default=None, ge=0, le=MAX_CONCURRENCY)
    environment_variables: dict[str, str] = Field(default_factory=dict, max_length=256)
    image: ProxyImage | None = None

    @field_validator("environment_variables")
    @classmethod
    def _names(cls, env: dict[str, str]) -> dict[str, str]:
        for name, value in env.items():
            if not ENV_NAME.match(name) or len(name) > 256:
                raise ValueError(f"{name}: not a container environment variable name")
            if name in RESERVED_ENV:
                raise ValueError(f"{name}: set by meshd's injector on the istio-proxy container (the agent's identity)")
            if len(value) > 32768:
                raise ValueError(f"{name}: longer than 32768 characters")
        return env

    @model_validator(mode="after")
    def _selector(self) -> ProxyConfigSpec:
        if self.selector is not None and not self.selector.match_labels:
            # Istio applies a ProxyConfig with an empty selector to no workload and not to the namespace either
            raise ValueError(
                "selector.matchLabels: an empty selector selects no workload (omit selector for the whole namespace)"
            )
        return self


class ProxyConfig(Resource):
    spec: ProxyConfigSpec


def oldest_first(configs: Iterable[ProxyConfig]) -> list[ProxyConfig]:
    """Istio's order among ProxyConfigs of one level: creation time, then name; the first one applies."""
    return sorted(configs, key=lambda c: (c.metadata.creation_timestamp, c.metadata.name))


def namespace_conflicts(configs: Iterable[ProxyConfig]) -> list[InvalidResource]:
    """Warnings on the ProxyConfigs without selector that do not apply: Istio allows one per namespace (the
    oldest applies). Workload selectors that overlap depend on the pods, and are not checked."""
    by_namespace: dict[str, list[ProxyConfig]] = {}
    for config in configs:
        if config.spec.selector is None:
            by_namespace.setdefault(config.metadata.namespace, []).append(config)
    out = []
    for namespace, found in sorted(by_namespace.items()):
        first, *rest = oldest_first(found)
        out += [
            InvalidResource(
                c.key,
                "spec.selector",
                f"ProxyConfig {namespace}/{first.metadata.name} (older) already applies to the namespace: one "
                "ProxyConfig without selector per namespace, this one is ignored",
                severity="warning",
            )
            for c in rest
        ]
    return out
