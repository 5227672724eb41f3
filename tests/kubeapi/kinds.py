"""The kinds the fake API server serves: built-in Kubernetes kinds meshd reads or writes, and the
Istio CRDs. Paths, plurals and scopes are Kubernetes' own."""

from __future__ import annotations

from dataclasses import dataclass

# Kubernetes' version priority: GA before beta before alpha, higher numbers first.
_STABILITY = {"": 3, "beta": 2, "alpha": 1}


def version_priority(version: str) -> tuple[int, int, int]:
    """Sort key (descending = preferred) for Kubernetes API versions like v1, v1beta1, v1alpha3."""
    rest = version[1:]
    major = ""
    while rest and rest[0].isdigit():
        major, rest = major + rest[0], rest[1:]
    stability = "beta" if rest.startswith("beta") else "alpha" if rest.startswith("alpha") else ""
    minor = rest[len(stability) :]
    return (_STABILITY[stability], int(major or 0), int(minor or 0))


@dataclass(frozen=True)
class Kind:
    group: str  # "" is the core group
    kind: str
    plural: str
    namespaced: bool = True
    versions: tuple[str, ...] = ("v1",)
    status: bool = False  # has a /status subresource
    crd: bool = False

    @property
    def key(self) -> tuple[str, str]:
        return (self.group, self.plural)

    def api_version(self, version: str) -> str:
        return f"{self.group}/{version}" if self.group else version

    @property
    def preferred(self) -> str:
        return max(self.versions, key=version_priority)


BUILTIN = (
    Kind("", "Namespace", "namespaces", namespaced=False, status=True),
    Kind("", "Node", "nodes", namespaced=False, status=True),
    Kind("", "Pod", "pods", status=True),
    Kind("", "Service", "services", status=True),
    Kind("", "Endpoints", "endpoints"),
    Kind("", "ConfigMap", "configmaps"),
    Kind("", "Secret", "secrets"),
    Kind("", "ServiceAccount", "serviceaccounts"),
    Kind("apps", "Deployment", "deployments", status=True),
    Kind("discovery.k8s.io", "EndpointSlice", "endpointslices"),
    Kind("coordination.k8s.io", "Lease", "leases"),
    Kind("admissionregistration.k8s.io", "ValidatingWebhookConfiguration", "validatingwebhookconfigurations", False),
    Kind("admissionregistration.k8s.io", "MutatingWebhookConfiguration", "mutatingwebhookconfigurations", False),
    Kind("apiextensions.k8s.io", "CustomResourceDefinition", "customresourcedefinitions", False, status=True),
)

NETWORKING_VERSIONS = ("v1", "v1beta1", "v1alpha3")
SECURITY_VERSIONS = ("v1", "v1beta1")

ISTIO = (
    *(
        Kind("networking.istio.io", kind, plural, versions=NETWORKING_VERSIONS, status=True, crd=True)
        for kind, plural in (
            ("VirtualService", "virtualservices"),
            ("DestinationRule", "destinationrules"),
            ("Gateway", "gateways"),
            ("ServiceEntry", "serviceentries"),
            ("WorkloadEntry", "workloadentries"),
            ("WorkloadGroup", "workloadgroups"),
            ("Sidecar", "sidecars"),
        )
    ),
    Kind("networking.istio.io", "EnvoyFilter", "envoyfilters", versions=("v1alpha3",), status=True, crd=True),
    Kind("networking.istio.io", "ProxyConfig", "proxyconfigs", versions=("v1beta1",), status=True, crd=True),
    Kind("telemetry.istio.io", "Telemetry", "telemetries", versions=("v1", "v1alpha1"), status=True, crd=True),
    Kind("extensions.istio.io", "WasmPlugin", "wasmplugins", versions=("v1alpha1",), status=True, crd=True),
    *(
        Kind("security.istio.io", kind, plural, versions=SECURITY_VERSIONS, status=True, crd=True)
        for kind, plural in (
            ("PeerAuthentication", "peerauthentications"),
            ("AuthorizationPolicy", "authorizationpolicies"),
            ("RequestAuthentication", "requestauthentications"),
        )
    ),
)

ALL = BUILTIN + ISTIO

# Kubernetes Gateway API kinds: known to the client (the real API server serves them with the chart's
# crds.gatewayApi CRDs); the fake server does not serve them.
GATEWAY_API = (
    Kind("gateway.networking.k8s.io", "GatewayClass", "gatewayclasses", False, ("v1", "v1beta1"), True, True),
    *(
        Kind("gateway.networking.k8s.io", kind, plural, versions=("v1", "v1beta1"), status=True, crd=True)
        for kind, plural in (("Gateway", "gateways"), ("HTTPRoute", "httproutes"))
    ),
    Kind("gateway.networking.k8s.io", "GRPCRoute", "grpcroutes", versions=("v1",), status=True, crd=True),
    Kind("gateway.networking.k8s.io", "TCPRoute", "tcproutes", versions=("v1alpha2",), status=True, crd=True),
    Kind("gateway.networking.k8s.io", "TLSRoute", "tlsroutes", versions=("v1alpha2",), status=True, crd=True),
    Kind("gateway.networking.k8s.io", "ReferenceGrant", "referencegrants", versions=("v1beta1",), crd=True),
    Kind(
        "gateway.networking.k8s.io",
        "BackendTLSPolicy",
        "backendtlspolicies",
        versions=("v1", "v1alpha3"),
        status=True,
        crd=True,
    ),
)


def by_kind(api_version: str, kind: str, kinds: tuple[Kind, ...] = ALL + GATEWAY_API) -> Kind:
    group = api_version.rpartition("/")[0]
    for candidate in kinds:
        if candidate.group == group and candidate.kind == kind:
            return candidate
    raise KeyError(f"unknown kind {api_version} {kind}")


def collection_path(kind: Kind, version: str, namespace: str | None) -> str:
    prefix = f"/apis/{kind.group}/{version}" if kind.group else f"/api/{version}"
    if kind.namespaced and namespace:
        return f"{prefix}/namespaces/{namespace}/{kind.plural}"
    return f"{prefix}/{kind.plural}"


def object_path(kind: Kind, version: str, namespace: str | None, name: str, subresource: str = "") -> str:
    path = f"{collection_path(kind, version, namespace)}/{name}"
    return f"{path}/{subresource}" if subresource else path
