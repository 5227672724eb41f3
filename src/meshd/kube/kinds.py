"""The kinds meshd watches: where each lives in the API (group, versions, plural) and whether its
group is built in (always served) or a CRD (found by discovery, possibly absent)."""

from __future__ import annotations

from dataclasses import dataclass

from meshd.api.meta import GATEWAY_API_GROUP, kind_identity

CRD_VERSIONS = ("v1", "v1beta1", "v1alpha3")  # preference order for the Istio CRDs


@dataclass(frozen=True)
class KindSpec:
    group: str  # "" for the core group
    kind: str
    plural: str
    versions: tuple[str, ...]  # preference order; built-in kinds have exactly one
    crd: bool = False
    namespace: str | None = None  # watch one namespace only
    field_selector: str | None = None

    @property
    def identity(self) -> str:
        """The kind meshd identifies these objects by (`api.meta.kind_identity`): informers, handlers and store
        origins are keyed by it, so two groups' kinds of the same name stay apart."""
        return kind_identity(self.api_version("v1"), self.kind)

    def api_version(self, version: str) -> str:
        return f"{self.group}/{version}" if self.group else version

    def path(self, version: str) -> str:
        base = f"/apis/{self.group}/{version}" if self.group else f"/api/{version}"
        scope = f"/namespaces/{self.namespace}" if self.namespace else ""
        return f"{base}{scope}/{self.plural}"


MESH_CONFIGMAP = "istio"
# Secrets that can never hold a credentialName's TLS material are not listed at all.
SECRET_FIELD_SELECTOR = "type!=kubernetes.io/service-account-token,type!=helm.sh/release.v1"
# meshd's own CA keys: never served to a proxy, whatever a DestinationRule names.
PRIVATE_SECRETS = ("istio-ca-secret", "cacerts")


def watched_kinds(*, namespace: str) -> tuple[KindSpec, ...]:
    """Everything meshd reads from a cluster; `namespace` is meshd's own (for the mesh ConfigMap)."""
    net, sec, gw = "networking.istio.io", "security.istio.io", GATEWAY_API_GROUP
    gw_versions = ("v1", "v1beta1")
    return (
        KindSpec("", "Namespace", "namespaces", ("v1",)),
        # the `istio` mesh ConfigMap of meshd's namespace, and the CAs (`ca.crt`) BackendTLSPolicies name
        KindSpec("", "ConfigMap", "configmaps", ("v1",)),
        KindSpec("", "Node", "nodes", ("v1",)),
        KindSpec("", "Service", "services", ("v1",)),
        KindSpec("", "Pod", "pods", ("v1",)),
        KindSpec("discovery.k8s.io", "EndpointSlice", "endpointslices", ("v1",)),
        # DestinationRule credentialName: TLS material served over SDS to proxies of the same namespace
        KindSpec("", "Secret", "secrets", ("v1",), field_selector=SECRET_FIELD_SELECTOR),
        KindSpec(net, "VirtualService", "virtualservices", CRD_VERSIONS, crd=True),
        KindSpec(net, "DestinationRule", "destinationrules", CRD_VERSIONS, crd=True),
        KindSpec(net, "Gateway", "gateways", CRD_VERSIONS, crd=True),
        KindSpec(net, "ServiceEntry", "serviceentries", CRD_VERSIONS, crd=True),
        KindSpec(net, "WorkloadEntry", "workloadentries", CRD_VERSIONS, crd=True),
        KindSpec(net, "Sidecar", "sidecars", CRD_VERSIONS, crd=True),
        KindSpec(sec, "PeerAuthentication", "peerauthentications", ("v1", "v1beta1"), crd=True),
        KindSpec(sec, "AuthorizationPolicy", "authorizationpolicies", ("v1", "v1beta1"), crd=True),
        KindSpec(sec, "RequestAuthentication", "requestauthentications", ("v1", "v1beta1"), crd=True),
        KindSpec(net, "EnvoyFilter", "envoyfilters", ("v1", "v1alpha3"), crd=True),
        KindSpec("telemetry.istio.io", "Telemetry", "telemetries", ("v1", "v1alpha1"), crd=True),
        KindSpec("extensions.istio.io", "WasmPlugin", "wasmplugins", ("v1alpha1",), crd=True),
        # not translated yet (api/parse.py REFUSED_KINDS): watched so that each gets a status saying so
        KindSpec(net, "ProxyConfig", "proxyconfigs", ("v1beta1",), crd=True),
        KindSpec(net, "WorkloadGroup", "workloadgroups", CRD_VERSIONS, crd=True),
        # Kubernetes Gateway API (converted into gateways and routes, BackendTLSPolicy into DestinationRules;
        # UDPRoute is refused, api/parse.py REFUSED_KINDS)
        KindSpec(gw, "GatewayClass", "gatewayclasses", gw_versions, crd=True),
        KindSpec(gw, "Gateway", "gateways", gw_versions, crd=True),
        KindSpec(gw, "HTTPRoute", "httproutes", gw_versions, crd=True),
        KindSpec(gw, "ReferenceGrant", "referencegrants", ("v1beta1", "v1alpha2"), crd=True),
        KindSpec(gw, "GRPCRoute", "grpcroutes", ("v1",), crd=True),
        KindSpec(gw, "TCPRoute", "tcproutes", ("v1alpha2",), crd=True),
        KindSpec(gw, "TLSRoute", "tlsroutes", ("v1alpha2",), crd=True),
        KindSpec(gw, "UDPRoute", "udproutes", ("v1alpha2",), crd=True),
        KindSpec(gw, "BackendTLSPolicy", "backendtlspolicies", ("v1", "v1alpha3"), crd=True),
    )
