"""Injection of a user-deployed gateway (Istio's `inject.istio.io/templates: gateway`): the pod declares a
placeholder container `istio-proxy` (Istio's examples give it `image: auto`); the injector makes it a gateway
proxy, `meshd agent --proxy-type router`, with the sidecar's identity, token, root certificate and socket
volumes. Unlike a sidecar: no init container (nothing is captured), no `security.istio.io/tlsMode` label, the
pod may bind ports below 1024 as UID 1337 (sysctl `net.ipv4.ip_unprivileged_port_start=0`, as Istio's gateway
template sets), and what the user set on the placeholder (ports, resources, env) is kept.
"""

from __future__ import annotations

import json
from typing import Any

from meshd.kube.inject_options import SidecarOptions
from meshd.kube.inject_template import PROXY_NAME, VOLUMES, InjectionConfig, proxy_container, volumes

UNPRIVILEGED_PORTS = {"name": "net.ipv4.ip_unprivileged_port_start", "value": "0"}
KEPT = ("ports", "resources")


def _proxy(placeholder: dict[str, Any] | None, generated: dict[str, Any]) -> dict[str, Any]:
    """The generated proxy container with what the user set on the placeholder kept."""
    if placeholder is None:
        return generated
    merged = dict(generated)
    for field in KEPT:
        if placeholder.get(field):
            merged[field] = placeholder[field]
    if placeholder.get("env"):
        own = {e.get("name") for e in generated["env"]}
        merged["env"] = generated["env"] + [e for e in placeholder["env"] if e.get("name") not in own]
    return merged


def gateway_ops(
    spec: dict[str, Any],
    *,
    config: InjectionConfig,
    options: SidecarOptions,
    labels: dict[str, str],
    ports: list[int],
) -> tuple[list[dict[str, Any]], dict[str, str]]:
    """JSONPatch operations on the pod spec, and the status annotation's value."""
    containers: list[dict[str, Any]] = spec["containers"]
    index = next((i for i, c in enumerate(containers) if c.get("name") == PROXY_NAME), None)
    placeholder = containers[index] if index is not None else None
    proxy = _proxy(placeholder, proxy_container(config, options, labels=labels, ports=ports, router=True))
    ops: list[dict[str, Any]] = []
    if index is not None:
        ops.append({"op": "replace", "path": f"/spec/containers/{index}", "value": proxy})
    else:
        ops.append({"op": "add", "path": "/spec/containers/-", "value": proxy})
    current = spec.get("volumes")
    if not current:
        ops.append({"op": "add", "path": "/spec/volumes", "value": volumes(config)})
    else:
        ops.extend({"op": "add", "path": "/spec/volumes/-", "value": v} for v in volumes(config))
    security = spec.get("securityContext")
    if not isinstance(security, dict) or not security:
        ops.append({"op": "add", "path": "/spec/securityContext", "value": {"sysctls": [UNPRIVILEGED_PORTS]}})
    elif not security.get("sysctls"):
        ops.append({"op": "add", "path": "/spec/securityContext/sysctls", "value": [UNPRIVILEGED_PORTS]})
    elif all(s.get("name") != UNPRIVILEGED_PORTS["name"] for s in security["sysctls"] if isinstance(s, dict)):
        ops.append({"op": "add", "path": "/spec/securityContext/sysctls/-", "value": UNPRIVILEGED_PORTS})
    status = {
        "initContainers": [],
        "containers": [PROXY_NAME],
        "volumes": list(VOLUMES),
        "imagePullSecrets": None,
        "revision": config.revision,
    }
    return ops, {"sidecar.istio.io/status": json.dumps(status, separators=(",", ":"))}
