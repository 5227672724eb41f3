"""Validating admission (pure): an `admission.k8s.io/v1` AdmissionReview in, its response out.

The check is the one meshd applies when it reads a resource (`meshd.api.parse.parse_resource`:
schema, values, cross-field rules), so `kubectl apply` refuses exactly what meshd would reject,
with the text meshd logs (`Kind ns/name: field: message`). References to other resources are not
checked here: objects may be applied in any order. DELETE is always allowed, and so is any kind
meshd does not read.
"""

from __future__ import annotations

from typing import Any

from meshd.api.meta import GATEWAY_API_GROUP, InvalidResource
from meshd.api.parse import KINDS, parse_resource

ISTIO_GROUPS = frozenset(
    {"networking.istio.io", "security.istio.io", "telemetry.istio.io", "extensions.istio.io", GATEWAY_API_GROUP}
)
MAX_DEPTH = 100  # deeper JSON is refused before anything walks it


class BadReview(ValueError):
    """The body is not an AdmissionReview meshd can answer (-> HTTP 400)."""


def depth_exceeds(value: Any, limit: int = MAX_DEPTH) -> bool:
    """True if `value` nests containers deeper than `limit` (iterative: no recursion to blow)."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in children if isinstance(child, dict | list))
    return False


def validate_object(obj: Any, *, namespace: str, name: str = "") -> InvalidResource | None:
    """None if meshd accepts the object (or does not read its kind), else the rejection."""
    if not isinstance(obj, dict):
        return None
    kind = obj.get("kind")
    if not isinstance(kind, str):  # e.g. `kind: [Service]`: denied, whatever the group says
        return InvalidResource(None, "kind", f"must be a string, not {type(kind).__name__}")
    if kind not in KINDS:
        return None
    meta = obj.get("metadata")
    if isinstance(meta, dict):  # kubectl may leave both to the request
        meta = {**meta, "namespace": meta.get("namespace") or namespace}
        if name and not meta.get("name"):
            meta["name"] = name
        obj = {**obj, "metadata": meta}
    try:
        # strict: a spec meshd would keep only to fail closed (AuthorizationPolicy) is refused here
        parse_resource(obj, default_namespace=namespace or "default", fail_closed=False)
    except InvalidResource as err:
        return err
    return None


def admission_request(body: Any) -> tuple[str, dict[str, Any]]:
    """(apiVersion, request) of an AdmissionReview with a request uid. Raises BadReview otherwise."""
    if not isinstance(body, dict) or body.get("kind") != "AdmissionReview":
        raise BadReview("not an AdmissionReview")
    api_version = body.get("apiVersion")
    if api_version not in ("admission.k8s.io/v1", "admission.k8s.io/v1beta1"):
        raise BadReview(f"unsupported apiVersion {api_version!r}")
    request = body.get("request")
    if not isinstance(request, dict) or not isinstance(request.get("uid"), str) or not request["uid"]:
        raise BadReview("request.uid is missing")
    return str(api_version), request


def review(body: Any) -> dict[str, Any]:
    """Answer one AdmissionReview. Raises BadReview for a body that is not one."""
    api_version, request = admission_request(body)
    kind = request.get("kind")
    if not isinstance(kind, dict):
        raise BadReview("request.kind is missing")
    response: dict[str, Any] = {"uid": request["uid"], "allowed": True}
    operation = request.get("operation")
    group = kind.get("group")
    if operation in ("CREATE", "UPDATE") and isinstance(group, str) and group in ISTIO_GROUPS:
        obj = request.get("object")
        if not isinstance(obj, dict):
            raise BadReview("request.object is missing")
        namespace = request.get("namespace") if isinstance(request.get("namespace"), str) else ""
        name = request.get("name") if isinstance(request.get("name"), str) else ""
        error = validate_object(obj, namespace=namespace or "default", name=name or "")
        if error is not None:
            response = {
                "uid": request["uid"],
                "allowed": False,
                "status": {"status": "Failure", "code": 400, "reason": "Invalid", "message": str(error)},
            }
    return {"apiVersion": api_version, "kind": "AdmissionReview", "response": response}
