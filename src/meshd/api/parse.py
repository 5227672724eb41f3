"""Turn one decoded YAML/JSON document into a validated model, or an InvalidResource naming
the resource and the field."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pydantic import ValidationError

from meshd.api.authorization import AuthorizationPolicy, refused_policy
from meshd.api.backendtls import BACKEND_TLS_VERSIONS, BackendTLSPolicy, refused_backend_tls_policy
from meshd.api.destinationrule import DestinationRule
from meshd.api.envoyfilter import EnvoyFilter
from meshd.api.gateway import Gateway
from meshd.api.gateway_api import (
    GATEWAY_API_VERSIONS,
    REFERENCE_GRANT_VERSIONS,
    GatewayClass,
    KubernetesGateway,
    ReferenceGrant,
)
from meshd.api.gateway_l4route import L4_ROUTE_VERSIONS, KubernetesTCPRoute, KubernetesTLSRoute
from meshd.api.grpcroute import GRPCRoute
from meshd.api.httproute import HTTPRoute
from meshd.api.kube import ConfigMap, EndpointSlice, Namespace, Pod, Secret, Service
from meshd.api.meta import KUBERNETES_GATEWAY, InvalidResource, Resource, ResourceKey, field_path, kind_identity
from meshd.api.networking import NETWORKING_VERSIONS, ServiceEntry, Sidecar, WorkloadEntry
from meshd.api.proxyconfig import PROXY_CONFIG_VERSIONS, ProxyConfig
from meshd.api.request_authentication import RequestAuthentication, refused_request_authentication
from meshd.api.security import SECURITY_VERSIONS, PeerAuthentication
from meshd.api.telemetry import TELEMETRY_VERSIONS, Telemetry
from meshd.api.virtualservice import VirtualService
from meshd.api.wasmplugin import WasmPlugin

# kind identity (api.meta.kind_identity) -> (model, accepted apiVersions)
KINDS: dict[str, tuple[type[Resource], tuple[str, ...]]] = {
    "Service": (Service, ("v1",)),
    "Pod": (Pod, ("v1",)),
    "EndpointSlice": (EndpointSlice, ("discovery.k8s.io/v1",)),
    "Secret": (Secret, ("v1",)),
    "Namespace": (Namespace, ("v1",)),
    "ConfigMap": (ConfigMap, ("v1",)),  # the CA a BackendTLSPolicy names (`ca.crt`)
    "VirtualService": (VirtualService, NETWORKING_VERSIONS),
    "DestinationRule": (DestinationRule, NETWORKING_VERSIONS),
    "ServiceEntry": (ServiceEntry, NETWORKING_VERSIONS),
    "WorkloadEntry": (WorkloadEntry, NETWORKING_VERSIONS),
    "Sidecar": (Sidecar, NETWORKING_VERSIONS),
    "Gateway": (Gateway, NETWORKING_VERSIONS),
    "EnvoyFilter": (EnvoyFilter, ("networking.istio.io/v1alpha3",)),
    "PeerAuthentication": (PeerAuthentication, SECURITY_VERSIONS),
    "RequestAuthentication": (RequestAuthentication, SECURITY_VERSIONS),
    "AuthorizationPolicy": (AuthorizationPolicy, SECURITY_VERSIONS),
    "Telemetry": (Telemetry, TELEMETRY_VERSIONS),
    # Kubernetes Gateway API (gateway.networking.k8s.io): converted into gateways and routes (model/gateway_api/)
    "GatewayClass": (GatewayClass, GATEWAY_API_VERSIONS),
    KUBERNETES_GATEWAY: (KubernetesGateway, GATEWAY_API_VERSIONS),
    "HTTPRoute": (HTTPRoute, GATEWAY_API_VERSIONS),
    "GRPCRoute": (GRPCRoute, ("gateway.networking.k8s.io/v1",)),
    "ReferenceGrant": (ReferenceGrant, REFERENCE_GRANT_VERSIONS),
    "WasmPlugin": (WasmPlugin, ("extensions.istio.io/v1alpha1",)),
    "TCPRoute": (KubernetesTCPRoute, L4_ROUTE_VERSIONS),
    "TLSRoute": (KubernetesTLSRoute, L4_ROUTE_VERSIONS),
    "BackendTLSPolicy": (BackendTLSPolicy, BACKEND_TLS_VERSIONS),
    # applied when a sidecar is injected (kube/inject_proxyconfig.py), not translated
    "ProxyConfig": (ProxyConfig, PROXY_CONFIG_VERSIONS),
}
# Kinds without a namespace (their key's namespace is "").
CLUSTER_SCOPED = frozenset({"GatewayClass", "Namespace"})
# Security kinds that fail closed: a document of these kinds whose spec is invalid is not refused at the
# source but kept as a refused resource (what could be read of it, and the error), which translation
# turns into a denial on what it selects. Without this, a new policy with a typo would not exist at all.
FAIL_CLOSED: dict[str, Callable[[dict[str, Any], InvalidResource], Resource | None]] = {
    "AuthorizationPolicy": refused_policy,
    "RequestAuthentication": refused_request_authentication,
    "BackendTLSPolicy": refused_backend_tls_policy,  # its Services keep TLS (a CA never served): no plaintext
}


# Istio kinds meshd reads but does not translate yet: refused with what that means for traffic (in
# Kubernetes mode their CRDs are watched so each object gets this on its status, never silently ignored).
REFUSED_KINDS: dict[str, str] = {
    "WorkloadGroup": "networking.istio.io WorkloadGroup is not supported by meshd yet: no WorkloadEntry is created "
    "from it (declare WorkloadEntries)",
    "UDPRoute": "gateway.networking.k8s.io UDPRoute is not supported by meshd: UDP is not proxied",
}


def is_refused_kind(doc: Any) -> bool:
    return isinstance(doc, dict) and _kind(doc) in REFUSED_KINDS


def document_key(doc: Any) -> ResourceKey | None:
    """The identity of a document if it can be read, even when the rest is invalid."""
    if not isinstance(doc, dict):
        return None
    meta = doc.get("metadata")
    kind = doc.get("kind")
    if not isinstance(meta, dict) or not isinstance(kind, str) or not isinstance(meta.get("name"), str):
        return None
    kind = _kind(doc) or kind
    if kind in CLUSTER_SCOPED:
        return ResourceKey(kind, "", meta["name"])
    namespace = meta.get("namespace", "default")
    return ResourceKey(kind, namespace if isinstance(namespace, str) else "default", meta["name"])


def is_supported(doc: Any) -> bool:
    return isinstance(doc, dict) and _kind(doc) in KINDS


def _kind(doc: dict[Any, Any]) -> str | None:
    """The document's kind identity if its kind is a string (a list or mapping there is not hashable, not a
    kind): the kind, or a distinct identity where two API groups share the name (`api.meta.kind_identity`)."""
    kind, version = doc.get("kind"), doc.get("apiVersion")
    if not isinstance(kind, str):
        return None
    return kind_identity(version, kind) if isinstance(version, str) else kind


def parse_resource(
    doc: Any, *, origin: str = "", default_namespace: str = "default", fail_closed: bool = True
) -> Resource:
    """Validate a document. Raises InvalidResource with the resource key and field path, except for a
    FAIL_CLOSED kind whose spec is invalid (when `fail_closed`): that returns the refused resource."""
    key = document_key(doc)
    if not isinstance(doc, dict):
        raise InvalidResource(None, "<root>", "document is not a mapping", origin)
    kind = _kind(doc)
    if kind is not None and kind in REFUSED_KINDS:
        raise InvalidResource(key, "kind", REFUSED_KINDS[kind], origin)
    if kind is None or kind not in KINDS:
        raise InvalidResource(key, "kind", f"unsupported kind {_clip(repr(doc.get('kind')))}", origin)
    model, versions = KINDS[kind]
    if doc.get("apiVersion") not in versions:
        raise InvalidResource(
            key, "apiVersion", f"{_clip(repr(doc.get('apiVersion')))} is not one of {', '.join(versions)}", origin
        )
    meta = doc.get("metadata")
    if isinstance(meta, dict) and kind in CLUSTER_SCOPED:
        doc = {**doc, "metadata": {**meta, "namespace": ""}}
    elif isinstance(meta, dict) and "namespace" not in meta:
        doc = {**doc, "metadata": {**meta, "namespace": default_namespace}}
    try:
        return model.model_validate(doc)
    except ValidationError as exc:
        error = _validation_error(key, exc, origin)
        refused = FAIL_CLOSED.get(kind) if fail_closed and key is not None else None
        kept = refused(doc, error) if refused is not None and _in_spec(error.field) else None
        if kept is None:
            raise error from None
        return kept
    except (
        TypeError,
        ArithmeticError,
        LookupError,
        RecursionError,
    ) as exc:  # a validator meeting a type it did not expect
        raise InvalidResource(
            key, "<root>", f"invalid document: {type(exc).__name__}: {_clip(str(exc))}", origin
        ) from None


def _validation_error(key: ResourceKey | None, exc: ValidationError, origin: str) -> InvalidResource:
    first = exc.errors()[0]
    message = "unknown field" if first["type"] == "extra_forbidden" else first["msg"].removeprefix("Value error, ")
    field = field_path(first["loc"])
    # Cross-field validators report "<field>: message"; fold that into the path.
    head, sep, rest = message.partition(": ")
    if sep and head and " " not in head:
        field = f"{field}.{head}" if field != "<root>" else head
        message = rest
    return InvalidResource(key, field, message, origin)


def _in_spec(field: str) -> bool:
    """An error in the spec (or the annotations a spec reads): the resource's identity is sound."""
    return field.startswith(("spec", "metadata.annotations"))


def _clip(text: str, limit: int = 200) -> str:
    return text if len(text) <= limit else f"{text[:limit]}...({len(text)} chars)"
