"""The Gateway API Gateways meshd owns and their listeners: which are valid (protocol, TLS, references,
conflicts), the conditions the specification gives each, and the Istio Gateway each valid listener becomes
(one per listener, so a route attaches to exactly the listeners it names).

A Gateway is meshd's when its `gatewayClassName` names a GatewayClass of one of meshd's controllers
(`istio.io/gateway-controller`, `meshd.io/gateway-controller`), or the built-in class `istio` / `meshd` when no
GatewayClass object of that name exists. Its listeners are served by the gateway proxies of its namespace
labelled `gateway.networking.k8s.io/gateway-name: <name>` (manual deployment: meshd deploys no proxy).
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field

from meshd.api.gateway import GATEWAY_SDS_PREFIX, Gateway
from meshd.api.gateway_api import BUILTIN_CLASSES, CONTROLLER_NAMES, GatewayClass, KubernetesGateway, Listener
from meshd.api.meta import GATEWAY_API_GROUP
from meshd.model.gateway_api.conditions import Condition, cond
from meshd.model.gateway_api.grants import Grants

GATEWAY_NAME_LABEL = "gateway.networking.k8s.io/gateway-name"
# On the Istio Gateways meshd derives from a Gateway API listener: they select gateway proxies of their own
# namespace only (translate/gateway/select.py), as a Gateway API Gateway's pods live with it.
LISTENER_ANNOTATION = "internal.meshd.io/gateway-api-listener"
PROTOCOLS = ("HTTP", "HTTPS", "TCP", "TLS")
# The route kinds each listener protocol (TLS: and mode) takes.
ROUTE_KINDS = {
    "HTTP": ("HTTPRoute", "GRPCRoute"),
    "HTTPS": ("HTTPRoute", "GRPCRoute"),
    "TCP": ("TCPRoute",),
    "TLS/Passthrough": ("TLSRoute",),
    "TLS/Terminate": ("TCPRoute",),
}


def route_kinds(listener: Listener) -> tuple[str, ...]:
    """The route kinds a listener serves (a TLS listener: TLSRoute passed through, TCPRoute terminated)."""
    if listener.protocol == "TLS":
        return ROUTE_KINDS[f"TLS/{listener.tls.mode if listener.tls is not None else 'Terminate'}"]
    return ROUTE_KINDS.get(listener.protocol, ())


@dataclass
class ListenerView:
    gateway: KubernetesGateway
    index: int
    listener: Listener
    supported_kinds: tuple[str, ...]
    conditions: list[Condition] = field(default_factory=list)
    attached: int = 0
    istio: Gateway | None = None  # the Istio Gateway serving it (None: the listener is not valid)

    @property
    def valid(self) -> bool:
        return self.istio is not None

    @property
    def istio_name(self) -> str:
        return f"{self.gateway.metadata.name}~{self.listener.name}"


def class_verdicts(classes: Collection[GatewayClass]) -> dict[str, tuple[bool, str, str]]:
    """Class name -> (accepted, message, controller name) for every class meshd's controllers own (built-in
    ones included)."""
    out: dict[str, tuple[bool, str, str]] = {name: (True, "", c) for name, c in BUILTIN_CLASSES.items()}
    for gc in classes:
        name, controller = gc.metadata.name, gc.spec.controller_name
        if controller not in CONTROLLER_NAMES:
            out.pop(name, None)
        elif gc.spec.parameters_ref is not None:
            out[name] = (False, "parametersRef is not supported by meshd (no parameters are applied)", controller)
        else:
            out[name] = (True, "", controller)
    return out


def listener_views(
    gateway: KubernetesGateway, *, grants: Grants, secrets: Collection[tuple[str, str]] | None
) -> list[ListenerView]:
    views = []
    for i, listener in enumerate(gateway.spec.listeners):
        kinds = _supported_kinds(listener)
        views.append(ListenerView(gateway, i, listener, kinds))
    _check_conflicts(views)
    for view in views:
        _check_listener(view, grants=grants, secrets=secrets)
    return views


def _supported_kinds(listener: Listener) -> tuple[str, ...]:
    allowed = route_kinds(listener)
    asked = listener.allowed_routes.kinds
    if not asked:
        return allowed
    return tuple(k.kind for k in asked if k.group == GATEWAY_API_GROUP and k.kind in allowed)


def _check_conflicts(views: list[ListenerView]) -> None:
    """Listeners of one port must share a protocol, and then differ by hostname."""
    by_port: dict[int, list[ListenerView]] = {}
    for view in views:
        by_port.setdefault(view.listener.port, []).append(view)
    for port, group in by_port.items():
        protocols = sorted({v.listener.protocol for v in group})
        for view in group:
            same_host = [v for v in group if v.listener.hostname == view.listener.hostname]
            if len(protocols) > 1:
                message = f"the listeners of port {port} have different protocols ({', '.join(protocols)})"
                view.conditions.append(cond("Conflicted", True, "ProtocolConflict", message))
            elif len(same_host) > 1:
                message = f"another listener of port {port} has the hostname {view.listener.hostname or '(none)'!r}"
                view.conditions.append(cond("Conflicted", True, "HostnameConflict", message))


def _check_listener(view: ListenerView, *, grants: Grants, secrets: Collection[tuple[str, str]] | None) -> None:
    listener, gateway = view.listener, view.gateway
    conflicted = bool(view.conditions)
    if not conflicted:
        view.conditions.append(cond("Conflicted", False, "NoConflicts", "no conflict"))
    if listener.protocol not in PROTOCOLS:
        view.conditions.append(
            cond(
                "Accepted",
                False,
                "UnsupportedProtocol",
                f"protocol {listener.protocol} is not supported by meshd yet (supported: {', '.join(PROTOCOLS)})",
            )
        )
    else:
        view.conditions.append(cond("Accepted", True, "Accepted", "listener accepted"))
    refs = _resolve_tls(listener, namespace=gateway.metadata.namespace, grants=grants, secrets=secrets)
    if refs is None and len(view.supported_kinds) < max(1, len(listener.allowed_routes.kinds)):
        refs = (
            "InvalidRouteKinds",
            "allowedRoutes.kinds names a kind meshd does not serve on this listener "
            f"(supported: {', '.join(route_kinds(listener)) or 'none'})",
        )
    if refs is not None:
        view.conditions.append(cond("ResolvedRefs", False, *refs))
    else:
        view.conditions.append(cond("ResolvedRefs", True, "ResolvedRefs", "references resolved"))
    usable = listener.protocol in PROTOCOLS and not conflicted and (refs is None or refs[0] == "InvalidRouteKinds")
    usable = usable and (refs is None or bool(view.supported_kinds))
    if usable:
        view.istio = _istio_gateway(view)
        view.conditions.append(
            cond(
                "Programmed",
                True,
                "Programmed",
                f"served by the gateway proxies labelled {GATEWAY_NAME_LABEL}={gateway.metadata.name}",
            )
        )
    else:
        view.conditions.append(cond("Programmed", False, "Invalid", "the listener is not valid (see its conditions)"))


def _resolve_tls(
    listener: Listener, *, namespace: str, grants: Grants, secrets: Collection[tuple[str, str]] | None
) -> tuple[str, str] | None:
    """None when the listener's TLS settings are usable, else (ResolvedRefs reason, message)."""
    tls = listener.tls
    if listener.protocol == "HTTP":
        return ("InvalidCertificateRef", "tls: an HTTP listener takes no TLS settings") if tls is not None else None
    if listener.protocol == "TCP":
        return ("InvalidCertificateRef", "tls: a TCP listener takes no TLS settings") if tls is not None else None
    if listener.protocol == "TLS" and tls is not None and tls.mode == "Passthrough":
        return None  # the client's TLS passes through: no certificate of the Gateway's
    if listener.protocol not in ("HTTPS", "TLS"):
        return None
    if tls is None or tls.mode != "Terminate" or not tls.certificate_refs:
        return "InvalidCertificateRef", f"an {listener.protocol} listener needs tls.mode Terminate and certificateRefs"
    if len(tls.certificate_refs) > 2:
        return "InvalidCertificateRef", "at most 2 certificateRefs (an RSA and an ECDSA certificate) are supported"
    for i, ref in enumerate(tls.certificate_refs):
        where = f"tls.certificateRefs[{i}]"
        if ref.group not in ("", "core") or ref.kind != "Secret":
            return "InvalidCertificateRef", f"{where}: {ref.group or 'core'}/{ref.kind} is not a Secret"
        if (
            ref.namespace
            and ref.namespace != namespace
            and not grants.allows(
                from_kind="Gateway",
                from_namespace=namespace,
                to_kind="Secret",
                to_namespace=ref.namespace,
                name=ref.name,
            )
        ):
            return "RefNotPermitted", f"{where}: Secret {ref.namespace}/{ref.name}: no ReferenceGrant allows it"
        if secrets is not None and (ref.namespace or namespace, ref.name) not in secrets:
            return "InvalidCertificateRef", f"{where}: Secret {ref.namespace or namespace}/{ref.name} does not exist"
    return None


def _istio_gateway(view: ListenerView) -> Gateway:
    gateway, listener = view.gateway, view.listener
    server: dict[str, object] = {
        "port": {"number": listener.port, "name": listener.name, "protocol": listener.protocol},
        "hosts": [f"*/{listener.hostname or '*'}"],
    }
    if listener.protocol == "TCP":
        server["hosts"] = ["*/*"]
    if listener.protocol == "TLS" and listener.tls is not None and listener.tls.mode == "Passthrough":
        server["tls"] = {"mode": "PASSTHROUGH"}
    elif listener.protocol in ("HTTPS", "TLS") and listener.tls is not None:
        namespace = gateway.metadata.namespace
        # another namespace's Secret (allowed by a ReferenceGrant: checked above, and again where it is served)
        names = [
            ref.name if ref.namespace in ("", namespace) else f"{GATEWAY_SDS_PREFIX}{ref.namespace}/{ref.name}"
            for ref in listener.tls.certificate_refs
        ]
        server["tls"] = (
            {"mode": "SIMPLE", "credentialName": names[0]}
            if len(names) == 1
            else {
                "mode": "SIMPLE",
                "credentialNames": names,
            }
        )
    return Gateway.model_validate(
        {
            "apiVersion": "networking.istio.io/v1",
            "kind": "Gateway",
            "metadata": {
                "name": view.istio_name,
                "namespace": gateway.metadata.namespace,
                "creationTimestamp": gateway.metadata.creation_timestamp,
                "annotations": {LISTENER_ANNOTATION: f"{gateway.metadata.namespace}/{gateway.metadata.name}"},
            },
            "spec": {"selector": {GATEWAY_NAME_LABEL: gateway.metadata.name}, "servers": [server]},
        }
    )
