"""The kinds meshd watches: where each lives in the API (group, versions, plural) and whether its
group is built in (always served) or a CRD (found by discovery, possibly absent)."""

from __future__ import annotations

from dataclasses import dataclass

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
    net, sec = "networking.istio.io", "security.istio.io"
    return (
        KindSpec("", "Namespace", "namespaces", ("v1",)),
        KindSpec("", "ConfigMap", "configmaps", ("v1",), namespace=namespace, field_selector="metadata.name=istio"),
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
        KindSpec(net, "EnvoyFilter", "envoyfilters", ("v1alpha3",), crd=True),
        KindSpec("telemetry.istio.io", "Telemetry", "telemetries", ("v1", "v1alpha1"), crd=True),
        KindSpec("extensions.istio.io", "WasmPlugin", "wasmplugins", ("v1alpha1",), crd=True),
        # not translated yet (api/parse.py REFUSED_KINDS): watched so that each gets a status saying so
        KindSpec(net, "ProxyConfig", "proxyconfigs", ("v1beta1",), crd=True),
        KindSpec(net, "WorkloadGroup", "workloadgroups", CRD_VERSIONS, crd=True),
    )
