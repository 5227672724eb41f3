"""Sidecar injection (pure): an `admission.k8s.io/v1` AdmissionReview for a Pod CREATE in, the response
with a JSONPatch (base64, `patchType: JSONPatch`) out.

Which pods reach the webhook is decided by the MutatingWebhookConfiguration's selectors, as Istio's:
pods in namespaces labelled `istio-injection=enabled` (objectSelector `sidecar.istio.io/inject NotIn
[false]`), and pods labelled `sidecar.istio.io/inject=true` in namespaces without that label. Here the
pod-level rules apply on top (Istio's order): a pod on the host network or in a Kubernetes system
namespace is left alone; the `sidecar.istio.io/inject` label wins over the annotation of that name;
a false value (`false`, `no`, `n`, `off`) opts out, any other leaves the policy (inject). A pod that
already has a sidecar (`sidecar.istio.io/status` or an `istio-proxy` container) gets no patch, so
injecting twice adds one sidecar. A review that is not a Pod CREATE the injector can use is refused
with a message naming `Pod ns/name` and the field; one that is not an AdmissionReview raises BadReview.
A pod annotated `inject.istio.io/templates: gateway` (a user-deployed gateway) gets Istio's gateway
template instead (kube/inject_gateway.py); another template name is refused.
"""

from __future__ import annotations

import base64
import dataclasses
import json
from typing import Any

from meshd.kube.admission import admission_request
from meshd.kube.inject_gateway import gateway_ops
from meshd.kube.inject_metrics import APP_ENV, BadMetricsAnnotation, metrics_merge
from meshd.kube.inject_options import BadAnnotation, SidecarOptions, sidecar_options
from meshd.kube.inject_proxyconfig import ProxySettings, effective_settings
from meshd.kube.inject_template import (
    INIT_NAME,
    PROXY_NAME,
    VOLUMES,
    InjectionConfig,
    init_container,
    proxy_container,
    volumes,
)

INJECT = "sidecar.istio.io/inject"
TEMPLATES = "inject.istio.io/templates"
STATUS = "sidecar.istio.io/status"
TLS_MODE = "security.istio.io/tlsMode"
CANONICAL_NAME = "service.istio.io/canonical-name"
CANONICAL_REVISION = "service.istio.io/canonical-revision"
DEFAULT_CONTAINER = "kubectl.kubernetes.io/default-container"
IGNORED_NAMESPACES = frozenset({"kube-system", "kube-public", "kube-node-lease", "local-path-storage"})
_YES = frozenset({"y", "yes", "true", "on"})
_NO = frozenset({"n", "no", "false", "off"})


class Refused(ValueError):
    """The pod cannot be injected: `allowed: false` with this message."""


def _escape(key: str) -> str:
    return key.replace("~", "~0").replace("/", "~1")


def _mapping(meta: dict[str, Any], key: str, where: str) -> dict[str, str]:
    value = meta.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        raise Refused(f"{where}: metadata.{key} must be a map of strings")
    return value


def templates(annotations: dict[str, str], where: str) -> str:
    """The injection template the pod asks for: "sidecar" (the default) or "gateway"."""
    asked = [t.strip() for t in annotations.get(TEMPLATES, "sidecar").split(",") if t.strip()] or ["sidecar"]
    unknown = [t for t in asked if t not in ("sidecar", "gateway")]
    if unknown or len(asked) > 1:
        raise Refused(
            f"{where}: metadata.annotations[{TEMPLATES}]: {annotations[TEMPLATES]!r}: one of sidecar or gateway"
        )
    return asked[0]


def skip_reason(
    pod: dict[str, Any], *, namespace: str, labels: dict[str, str], annotations: dict[str, str], gateway: bool = False
) -> str:
    """Why this pod gets no sidecar, or "" to inject it. A gateway's `istio-proxy` container is the
    placeholder the injector fills in, not a sign it was injected."""
    spec = pod.get("spec") or {}
    if STATUS in annotations or (
        not gateway and any(isinstance(c, dict) and c.get("name") == PROXY_NAME for c in spec.get("containers") or [])
    ):
        return "already injected"
    if spec.get("hostNetwork") is True:
        return "host network"
    if namespace in IGNORED_NAMESPACES:
        return f"namespace {namespace}"
    wish = labels.get(INJECT, annotations.get(INJECT))  # the label wins over the annotation
    if wish is not None and wish.strip().lower() in _NO:
        return f"{INJECT}={wish}"
    return ""


def canonical_name(pod: dict[str, Any], labels: dict[str, str]) -> str:
    for key in (CANONICAL_NAME, "app.kubernetes.io/name", "app"):
        if labels.get(key):
            return labels[key]
    meta = pod.get("metadata") or {}
    if meta.get("name"):
        return str(meta["name"])
    name = str(meta.get("generateName") or "").rstrip("-")
    owners = meta.get("ownerReferences") or []
    if any(isinstance(o, dict) and o.get("kind") == "ReplicaSet" for o in owners) and "-" in name:
        name = name.rsplit("-", 1)[0]  # the Deployment's name: drop the ReplicaSet's hash
    return name or "unknown"


def canonical_revision(labels: dict[str, str]) -> str:
    for key in (CANONICAL_REVISION, "app.kubernetes.io/version", "version"):
        if labels.get(key):
            return labels[key]
    return "latest"


def _container_ports(containers: list[Any]) -> list[int]:
    ports: set[int] = set()
    for container in containers:
        for port in container.get("ports") or [] if isinstance(container, dict) else []:
            if isinstance(port, dict) and isinstance(port.get("containerPort"), int):
                ports.add(port["containerPort"])
    return sorted(ports)


def _add_items(ops: list[dict[str, Any]], path: str, current: Any, items: list[Any]) -> None:
    if not current:
        ops.append({"op": "add", "path": path, "value": items})
    else:
        ops.extend({"op": "add", "path": f"{path}/-", "value": item} for item in items)


def _add_map(ops: list[dict[str, Any]], path: str, current: dict[str, str], entries: dict[str, str]) -> None:
    if not entries:
        return
    if not current:
        ops.append({"op": "add", "path": path, "value": entries})
    else:
        ops.extend({"op": "add", "path": f"{path}/{_escape(k)}", "value": v} for k, v in entries.items())


def _with_proxy_configs(
    options: SidecarOptions, config: InjectionConfig, *, namespace: str, labels: dict[str, str]
) -> SidecarOptions:
    """The annotation's concurrency and proxyMetadata merged with the mesh's and the ProxyConfigs'."""
    annotation = ProxySettings(options.concurrency, options.environment)
    merged = effective_settings(config.proxy_configs, namespace=namespace, labels=labels, annotation=annotation)
    return dataclasses.replace(options, concurrency=merged.concurrency, environment=merged.environment)


def injection_patch(pod: dict[str, Any], *, namespace: str, config: InjectionConfig) -> list[dict[str, Any]]:
    """The JSONPatch that injects the sidecar ([] if the pod gets none). Raises Refused."""
    meta = pod.get("metadata")
    if meta is None:
        meta = {}
    if not isinstance(meta, dict):
        raise Refused(f"Pod {namespace}/: metadata must be a mapping")
    where = f"Pod {namespace}/{meta.get('name') or meta.get('generateName') or ''}"
    labels = _mapping(meta, "labels", where)
    annotations = _mapping(meta, "annotations", where)
    spec = pod.get("spec")
    if not isinstance(spec, dict):
        raise Refused(f"{where}: spec is missing")
    containers = spec.get("containers")
    if not isinstance(containers, list) or not containers or not all(isinstance(c, dict) for c in containers):
        raise Refused(f"{where}: spec.containers must be a non-empty list of containers")
    for field in ("initContainers", "volumes"):
        if spec.get(field) is not None and not isinstance(spec[field], list):
            raise Refused(f"{where}: spec.{field} must be a list")
    gateway = templates(annotations, where) == "gateway"
    if skip_reason(pod, namespace=namespace, labels=labels, annotations=annotations, gateway=gateway):
        return []
    try:
        options = sidecar_options(annotations)
    except BadAnnotation as exc:
        raise Refused(f"{where}: {exc}") from None
    options = _with_proxy_configs(options, config, namespace=namespace, labels=labels)
    if gateway:
        return _gateway_patch(pod, spec, labels=labels, annotations=annotations, config=config, options=options)
    taken = {str(v.get("name")) for v in spec.get("volumes") or [] if isinstance(v, dict)}
    clash = sorted(taken & set(VOLUMES))
    if clash:
        raise Refused(f"{where}: spec.volumes: name {clash[0]!r} is reserved for the sidecar")
    if any(isinstance(c, dict) and c.get("name") == INIT_NAME for c in spec.get("initContainers") or []):
        raise Refused(f"{where}: spec.initContainers: name {INIT_NAME!r} is reserved for the sidecar")

    new_labels = {TLS_MODE: "istio"} if TLS_MODE not in labels else {}
    new_labels.update(
        {key: value for key, value in ((CANONICAL_NAME, canonical_name(pod, labels)),
                                       (CANONICAL_REVISION, canonical_revision(labels))) if key not in labels}
    )  # fmt: skip
    status = {
        "initContainers": [INIT_NAME],
        "containers": [PROXY_NAME],
        "volumes": list(VOLUMES),
        "imagePullSecrets": None,
        "revision": config.revision,
    }
    try:
        merged, app_metrics = metrics_merge(annotations)
    except BadMetricsAnnotation as exc:
        raise Refused(f"{where}: {exc}") from None
    new_annotations = {STATUS: json.dumps(status, separators=(",", ":")), **merged}
    if DEFAULT_CONTAINER not in annotations and isinstance(containers[0].get("name"), str):
        new_annotations[DEFAULT_CONTAINER] = containers[0]["name"]

    ops: list[dict[str, Any]] = []
    if not pod.get("metadata"):
        ops.append({"op": "add", "path": "/metadata", "value": {}})
    _add_map(ops, "/metadata/labels", labels, new_labels)
    _add_map(ops, "/metadata/annotations", annotations, new_annotations)
    _add_items(ops, "/spec/initContainers", spec.get("initContainers"), [init_container(config, options)])
    proxy = proxy_container(config, options, labels={**labels, **new_labels}, ports=_container_ports(containers))
    if app_metrics is not None:  # the application's metrics, merged into the agent's 15020 endpoint
        proxy["env"].append({"name": APP_ENV, "value": app_metrics})
    _add_items(ops, "/spec/containers", containers, [proxy])
    _add_items(ops, "/spec/volumes", spec.get("volumes"), volumes(config))
    return ops


def _gateway_patch(
    pod: dict[str, Any],
    spec: dict[str, Any],
    *,
    labels: dict[str, str],
    annotations: dict[str, str],
    config: InjectionConfig,
    options: Any,
) -> list[dict[str, Any]]:
    """Istio's `gateway` template: the `istio-proxy` placeholder becomes a router proxy (kube/inject_gateway.py)."""
    new_labels = {
        key: value
        for key, value in (
            (CANONICAL_NAME, canonical_name(pod, labels)),
            (CANONICAL_REVISION, canonical_revision(labels)),
        )
        if key not in labels
    }
    others = [c for c in spec["containers"] if c.get("name") != PROXY_NAME]
    spec_ops, status = gateway_ops(
        spec, config=config, options=options, labels={**labels, **new_labels}, ports=_container_ports(others)
    )
    ops: list[dict[str, Any]] = []
    if not pod.get("metadata"):
        ops.append({"op": "add", "path": "/metadata", "value": {}})
    _add_map(ops, "/metadata/labels", labels, new_labels)
    _add_map(ops, "/metadata/annotations", annotations, status)
    return ops + spec_ops


def inject_review(body: Any, *, config: InjectionConfig) -> dict[str, Any]:
    """Answer one AdmissionReview for the injector. Raises BadReview for a body that is not one."""
    api_version, request = admission_request(body)
    uid = request["uid"]
    response: dict[str, Any] = {"uid": uid, "allowed": True}
    kind = request.get("kind")
    namespace = request.get("namespace") if isinstance(request.get("namespace"), str) else ""
    try:
        if not isinstance(kind, dict) or kind.get("kind") != "Pod" or kind.get("group", "") != "":
            raise Refused(f"request.kind: the injector handles Pods only, got {json.dumps(kind)[:200]}")
        if request.get("operation") == "CREATE":
            obj = request.get("object")
            if not isinstance(obj, dict):
                raise Refused(f"Pod {namespace}/{request.get('name') or ''}: request.object is missing")
            if obj.get("kind", "Pod") != "Pod":
                raise Refused(f"request.object: not a Pod (kind {str(obj.get('kind'))[:100]!r})")
            obj_ns = (obj.get("metadata") or {}).get("namespace") if isinstance(obj.get("metadata"), dict) else None
            ops = injection_patch(obj, namespace=namespace or obj_ns or "default", config=config)
            if ops:
                response["patchType"] = "JSONPatch"
                response["patch"] = base64.b64encode(json.dumps(ops, separators=(",", ":")).encode()).decode()
    except Refused as exc:
        response = {
            "uid": uid,
            "allowed": False,
            "status": {"status": "Failure", "code": 400, "reason": "BadRequest", "message": str(exc)},
        }
    return {"apiVersion": api_version, "kind": "AdmissionReview", "response": response}
