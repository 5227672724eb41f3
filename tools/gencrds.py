"""Generate the Istio CRDs of the Helm chart (deploy/helm/meshd/templates/crds.yaml) from meshd's own
pydantic models, converted to Kubernetes structural OpenAPI v3 schemas.

    python tools/gencrds.py            # rewrite the chart's CRD template
    python tools/gencrds.py --check    # exit 1 if the committed file is stale

Conversion rules (Kubernetes "structural schema"): every `$ref` inlined, a `type` on every node, no
defaults (the API server would write them into stored objects), an int|str union as
`x-kubernetes-int-or-string`, Go durations as plain strings. Every Istio model is strict
(`api.meta.StrictModel`: unknown fields refused), so every spec schema is closed: no unknown field is
preserved, and the API server refuses it (or prunes it, with a warning) instead of storing what meshd would
not read. Fields of Istio's API that meshd refuses are in the schema, typed, with a description saying so:
they reach meshd, which refuses the object naming them.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel

ROOT = Path(__file__).resolve().parent.parent
OUTPUT = ROOT / "deploy" / "helm" / "meshd" / "templates" / "crds.yaml"
# The Kubernetes Gateway API CRDs (standard channel kinds meshd reads), written from meshd's own models too;
# installed only with `crds.gatewayApi` (clusters usually install the Gateway API CRDs themselves).
GATEWAY_API_OUTPUT = ROOT / "deploy" / "helm" / "meshd" / "templates" / "crds-gateway-api.yaml"

sys.path.insert(0, str(ROOT / "src"))

from meshd.api.authorization import AuthorizationPolicySpec  # noqa: E402
from meshd.api.backendtls import BackendTLSPolicySpec  # noqa: E402
from meshd.api.destinationrule import DestinationRuleSpec  # noqa: E402
from meshd.api.envoyfilter import EnvoyFilterSpec  # noqa: E402
from meshd.api.gateway import GatewaySpec  # noqa: E402
from meshd.api.gateway_api import GatewayClassSpec, KubernetesGatewaySpec, ReferenceGrantSpec  # noqa: E402
from meshd.api.gateway_l4route import TCPRouteSpec, TLSRouteSpec  # noqa: E402
from meshd.api.grpcroute import GRPCRouteSpec  # noqa: E402
from meshd.api.httproute import HTTPRouteSpec  # noqa: E402
from meshd.api.meta import REFUSED_MARK  # noqa: E402
from meshd.api.networking import ServiceEntrySpec, SidecarSpec, WorkloadEntrySpec  # noqa: E402
from meshd.api.proxyconfig import ProxyConfigSpec  # noqa: E402
from meshd.api.request_authentication import RequestAuthenticationSpec  # noqa: E402
from meshd.api.security import PeerAuthenticationSpec  # noqa: E402
from meshd.api.telemetry import TelemetrySpec  # noqa: E402
from meshd.api.virtualservice import VirtualServiceSpec  # noqa: E402
from meshd.api.wasmplugin import WasmPluginSpec  # noqa: E402

NETWORKING = "networking.istio.io"
SECURITY = "security.istio.io"
TELEMETRY = "telemetry.istio.io"
GATEWAY_API = "gateway.networking.k8s.io"
EXTENSIONS = "extensions.istio.io"
# Served versions as Istio serves them; the storage version is Istio's, so a later switch to Istio's
# own CRDs keeps the stored objects readable.
VERSIONS = {
    NETWORKING: ("v1alpha3", "v1beta1", "v1"),
    SECURITY: ("v1beta1", "v1"),
    TELEMETRY: ("v1alpha1", "v1"),
    GATEWAY_API: ("v1beta1", "v1"),
    EXTENSIONS: ("v1alpha1",),
}
STORAGE = {
    NETWORKING: "v1alpha3",
    SECURITY: "v1beta1",
    TELEMETRY: "v1alpha1",
    GATEWAY_API: "v1",
    EXTENSIONS: "v1alpha1",
}
CATEGORIES = {
    NETWORKING: ["istio-io", "networking-istio-io"],
    SECURITY: ["istio-io", "security-istio-io"],
    TELEMETRY: ["istio-io", "telemetry-istio-io"],
    GATEWAY_API: ["gateway-api"],
    EXTENSIONS: ["istio-io", "extensions-istio-io"],
}

# JSON-schema keywords that carry over unchanged into OpenAPI v3 value validation.
_VALIDATIONS = (
    "enum",
    "minimum",
    "maximum",
    "minLength",
    "maxLength",
    "pattern",
    "minItems",
    "maxItems",
    "minProperties",
    "maxProperties",
    "format",
    "description",
)


@dataclass(frozen=True)
class CrdKind:
    group: str
    kind: str
    plural: str
    short_names: tuple[str, ...]
    spec_model: type[BaseModel] | None  # None: permissive spec
    scope: str = "Namespaced"
    versions: tuple[str, ...] = ()  # served versions when not the group's (EnvoyFilter: v1alpha3 only)
    storage: str = ""  # "" -> STORAGE of the group, or the only served version


KINDS = (
    CrdKind(NETWORKING, "VirtualService", "virtualservices", ("vs",), VirtualServiceSpec),
    CrdKind(NETWORKING, "DestinationRule", "destinationrules", ("dr",), DestinationRuleSpec),
    CrdKind(NETWORKING, "Gateway", "gateways", ("gw",), GatewaySpec),
    CrdKind(NETWORKING, "ServiceEntry", "serviceentries", ("se",), ServiceEntrySpec),
    CrdKind(NETWORKING, "WorkloadEntry", "workloadentries", ("we",), WorkloadEntrySpec),
    CrdKind(NETWORKING, "Sidecar", "sidecars", (), SidecarSpec),
    CrdKind(NETWORKING, "EnvoyFilter", "envoyfilters", (), EnvoyFilterSpec, versions=("v1alpha3",)),
    CrdKind(NETWORKING, "ProxyConfig", "proxyconfigs", (), ProxyConfigSpec, versions=("v1beta1",)),
    CrdKind(SECURITY, "PeerAuthentication", "peerauthentications", ("pa",), PeerAuthenticationSpec),
    CrdKind(SECURITY, "AuthorizationPolicy", "authorizationpolicies", ("ap",), AuthorizationPolicySpec),
    CrdKind(SECURITY, "RequestAuthentication", "requestauthentications", ("ra",), RequestAuthenticationSpec),
    CrdKind(TELEMETRY, "Telemetry", "telemetries", ("telemetry",), TelemetrySpec),
    CrdKind(EXTENSIONS, "WasmPlugin", "wasmplugins", (), WasmPluginSpec),
)
# Gateway API v1.2 standard channel, and the experimental TCPRoute / TLSRoute.
GATEWAY_API_KINDS = (
    CrdKind(GATEWAY_API, "GatewayClass", "gatewayclasses", ("gc",), GatewayClassSpec, scope="Cluster"),
    CrdKind(GATEWAY_API, "Gateway", "gateways", ("gtw",), KubernetesGatewaySpec),
    CrdKind(GATEWAY_API, "HTTPRoute", "httproutes", (), HTTPRouteSpec),
    CrdKind(GATEWAY_API, "GRPCRoute", "grpcroutes", (), GRPCRouteSpec, versions=("v1",)),
    CrdKind(GATEWAY_API, "TCPRoute", "tcproutes", (), TCPRouteSpec, versions=("v1alpha2",)),
    CrdKind(GATEWAY_API, "TLSRoute", "tlsroutes", (), TLSRouteSpec, versions=("v1alpha2",)),
    CrdKind(
        GATEWAY_API, "ReferenceGrant", "referencegrants", ("refgrant",), ReferenceGrantSpec,
        versions=("v1alpha2", "v1beta1"), storage="v1beta1",
    ),
    CrdKind(
        GATEWAY_API, "BackendTLSPolicy", "backendtlspolicies", ("btlspolicy",), BackendTLSPolicySpec,
        versions=("v1alpha3", "v1"), storage="v1",
    ),
)  # fmt: skip

OPEN = {"type": "object", "x-kubernetes-preserve-unknown-fields": True}


def structural(node: Any, defs: dict[str, Any], seen: frozenset[str] = frozenset()) -> dict[str, Any]:
    """One pydantic JSON-schema node as a structural OpenAPI v3 schema. A field meshd refuses (`refused(...)`
    in the model) keeps its type, so the API server hands it to meshd (which names it) instead of pruning it."""
    if isinstance(node, dict) and REFUSED_MARK in node:
        out = structural({k: v for k, v in node.items() if k != REFUSED_MARK}, defs, seen)
        out["description"] = f"Refused by meshd when set: {node[REFUSED_MARK]}"
        return out
    if not isinstance(node, dict) or not node:
        return {"x-kubernetes-preserve-unknown-fields": True}
    if "$ref" in node:
        name = node["$ref"].rsplit("/", 1)[-1]
        if name in seen:  # recursive model: Kubernetes schemas cannot recurse
            return dict(OPEN)
        out = structural(defs[name], defs, seen | {name})
        if "description" in node:
            out["description"] = node["description"]
        return out
    if "anyOf" in node or "oneOf" in node:
        branches = [b for b in node.get("anyOf", node.get("oneOf", [])) if b.get("type") != "null"]
        if len(branches) == 1:
            out = structural(branches[0], defs, seen)
            if "description" in node:
                out["description"] = node["description"]
            return out
        types = {structural(b, defs, seen).get("type") for b in branches}
        if types == {"integer", "string"}:
            return {"x-kubernetes-int-or-string": True}
        if len(types) == 1 and None not in types:
            return {"type": types.pop(), "x-kubernetes-preserve-unknown-fields": True}
        return {"x-kubernetes-preserve-unknown-fields": True}
    kind = node.get("type")
    out: dict[str, Any] = {k: node[k] for k in _VALIDATIONS if k in node}
    if "exclusiveMinimum" in node:
        out.update(minimum=node["exclusiveMinimum"], exclusiveMinimum=True)
    if "exclusiveMaximum" in node:
        out.update(maximum=node["exclusiveMaximum"], exclusiveMaximum=True)
    if kind == "object":
        out["type"] = "object"
        if "properties" in node:  # a model: open, as meshd's models ignore unknown fields, unless strict
            out["properties"] = {k: structural(v, defs, seen) for k, v in sorted(node["properties"].items())}
            if node.get("required"):
                out["required"] = sorted(node["required"])
            if node.get("additionalProperties") is not False:  # a strict model: unknown fields refused
                out["x-kubernetes-preserve-unknown-fields"] = True
        elif isinstance(node.get("additionalProperties"), dict) and node["additionalProperties"]:
            out["additionalProperties"] = structural(node["additionalProperties"], defs, seen)
        else:
            out["x-kubernetes-preserve-unknown-fields"] = True
        return out
    if kind == "array":
        out["type"] = "array"
        out["items"] = structural(node.get("items", {}), defs, seen)
        return out
    if kind in ("string", "integer", "number", "boolean"):
        out["type"] = kind
        return out
    return {"x-kubernetes-preserve-unknown-fields": True}


def spec_schema(model: type[BaseModel] | None) -> dict[str, Any]:
    if model is None:
        return {
            "type": "object",
            "x-kubernetes-preserve-unknown-fields": True,
            "description": "Not modelled in detail by meshd: any Istio spec is accepted.",
        }
    raw = model.model_json_schema(by_alias=True, mode="validation")
    return structural(raw, raw.get("$defs", {}))


def crd(kind: CrdKind) -> dict[str, Any]:
    schema = {
        "type": "object",
        "properties": {
            "spec": spec_schema(kind.spec_model),
            "status": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
        },
    }
    names: dict[str, Any] = {
        "kind": kind.kind,
        "listKind": f"{kind.kind}List",
        "plural": kind.plural,
        "singular": kind.kind.lower(),
        "categories": CATEGORIES[kind.group],
    }
    if kind.short_names:
        names["shortNames"] = list(kind.short_names)
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{kind.plural}.{kind.group}"},
        "spec": {
            "group": kind.group,
            "names": names,
            "scope": kind.scope,
            "versions": [
                {
                    "name": version,
                    "served": True,
                    "storage": version == (kind.storage or STORAGE[kind.group]) or len(kind.versions) == 1,
                    "subresources": {"status": {}},
                    "schema": {"openAPIV3Schema": schema},
                }
                for version in kind.versions or VERSIONS[kind.group]
            ],
        },
    }


def all_crds(kinds: tuple[CrdKind, ...] = KINDS) -> list[dict[str, Any]]:
    return [crd(kind) for kind in kinds]


HEADER = """\
# GENERATED by tools/gencrds.py from meshd's pydantic models (src/meshd/api/): do not edit.
{{- if .Values.crds.install }}
"""
FOOTER = "{{- end }}\n"
META = """\
  labels:
    {{- include "meshd.labels" . | nindent 4 }}
  annotations:
    # kept on `helm uninstall`: deleting a CRD deletes every object of its kind
    helm.sh/resource-policy: keep
"""


GATEWAY_API_HEADER = """\
# GENERATED by tools/gencrds.py from meshd's pydantic models (src/meshd/api/): do not edit.
# The Kubernetes Gateway API CRDs (gateway.networking.k8s.io, standard channel kinds), only with crds.gatewayApi.
{{- if .Values.crds.gatewayApi }}
"""


# a *.k8s.io group requires it; the value is the Gateway API project's approval
GATEWAY_API_META = META + "    api-approved.kubernetes.io: https://github.com/kubernetes-sigs/gateway-api/pull/2466\n"


def render(kinds: tuple[CrdKind, ...] = KINDS, header: str = HEADER, meta: str = META) -> str:
    parts = [header]
    for doc in all_crds(kinds):
        # a JSON round trip unshares repeated sub-schemas, so the YAML has no anchors/aliases
        text = yaml.safe_dump(json.loads(json.dumps(doc)), sort_keys=False, width=1000)
        if "{{" in text or "}}" in text:
            raise SystemExit(f"{doc['metadata']['name']}: a schema contains template delimiters")
        head, _, rest = text.partition("\nspec:\n")
        parts.append("---\n" + head + "\n" + meta + "spec:\n" + rest)
    parts.append(FOOTER)
    return "".join(parts)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if the committed file is stale")
    args = parser.parse_args(argv)
    outputs = (
        (OUTPUT, render()),
        (GATEWAY_API_OUTPUT, render(GATEWAY_API_KINDS, GATEWAY_API_HEADER, GATEWAY_API_META)),
    )
    if args.check:
        for path, text in outputs:
            if not path.exists() or path.read_text() != text:
                print(f"{path.relative_to(ROOT)} is stale: run `python tools/gencrds.py`", file=sys.stderr)
                return 1
        return 0
    for path, text in outputs:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        print(f"wrote {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
