"""Render a golden case: Istio + Kubernetes YAML in, per-proxy xDS JSON out (one dict per type),
and an Envoy bootstrap that loads the same resources statically for `envoy --mode validate`."""

from __future__ import annotations

import copy
import dataclasses
import json
import pathlib
from typing import Any

from envoy.config.bootstrap.v3.bootstrap_pb2 import Bootstrap
from google.protobuf import json_format

from meshd.api.envoy_value import resolve_types
from meshd.api.kube import Pod
from meshd.api.mesh import parse_mesh_config
from meshd.generate.generator import ConfigGenerator
from meshd.generate.options import GenerateOptions
from meshd.model.world import World, build_world
from meshd.sources.yaml_file import parse_file
from meshd.translate.envoyfilter.bootstrap import AGENT_METADATA, BOOTSTRAP_PATCH, apply_patches
from meshd.translate.proxy import parse_node_id
from meshd.xds.resource import CLUSTER, ENDPOINT, LISTENER, ROUTE, SECRET, XdsResource

TYPES = {"clusters": CLUSTER, "endpoints": ENDPOINT, "listeners": LISTENER, "routes": ROUTE}
# Written only for cases whose proxies are served any (SDS secrets for DestinationRule credentialName).
ECDS = "type.googleapis.com/envoy.config.core.v3.TypedExtensionConfig"
# ECDS extension configs (WasmPlugins, EnvoyFilter EXTENSION_CONFIG) are written and inlined for validation.
# EnvoyFilter BOOTSTRAP patches for the node agent (`# proxies: bootstrap-patches`): merged into the
# validation bootstrap, so Envoy validates the patched bootstrap.
OPTIONAL_TYPES = {"secrets": SECRET, "extensions": ECDS, "bootstrap": BOOTSTRAP_PATCH}
DEFAULT_PROXY = "sidecar~127.0.0.99~client.default~default.svc.cluster.local"
# A case whose text holds a line `# proxies: <flags>` renders its proxies with those flags: `sds` (run
# by the node agent: mTLS), `capture` (node metadata INTERCEPTION_MODE REDIRECT: capture-mode listeners),
# `proxyless` (node metadata GENERATOR grpc: proxyless gRPC clients; not Envoy, so not validated by Envoy),
# `bootstrap-patches` (node metadata MESHD_BOOTSTRAP_PATCHES: its agent applies EnvoyFilter BOOTSTRAP patches).
PROXIES_MARKER = "# proxies:"
SDS_MARKER = "# proxies: sds"
SDS_CLUSTER = "sds-grpc"
# A case may come with `<case>.mesh.yaml`: a MeshConfig (extensionProviders, pathNormalization...).
MESH_SUFFIX = ".mesh.yaml"
# `# routers: <pod>.<namespace> ...`: those pods are gateway proxies (node type `router`).
ROUTERS_MARKER = "# routers:"


def load_case(path: pathlib.Path) -> tuple[World, list[str], list[str]]:
    text = path.read_text()
    result = parse_file(text, origin=path.name)
    world = build_world(result.resources.values(), domain_suffix="cluster.local")
    pods = sorted(
        (r for r in result.resources.values() if isinstance(r, Pod) and r.status.pod_ip),
        key=lambda p: (p.metadata.namespace, p.metadata.name),
    )
    routers = {
        name
        for line in text.splitlines()
        if line.startswith(ROUTERS_MARKER)
        for name in line.removeprefix(ROUTERS_MARKER).split()
    }
    proxies = [
        f"{'router' if f'{p.metadata.name}.{p.metadata.namespace}' in routers else 'sidecar'}~{p.status.pod_ip}~"
        f"{p.metadata.name}.{p.metadata.namespace}~{p.metadata.namespace}.svc.cluster.local"
        for p in pods
    ] or [DEFAULT_PROXY]
    return world, proxies, [str(e) for e in result.errors]


def proxy_flags(text: str) -> set[str]:
    return {
        flag
        for line in text.splitlines()
        if line.startswith(PROXIES_MARKER)
        for flag in line.removeprefix(PROXIES_MARKER).split()
    }


def _to_dict(resource: XdsResource) -> dict[str, Any]:
    if resource.type_url == BOOTSTRAP_PATCH:
        return {"name": resource.name, "patch": json_format.MessageToDict(Bootstrap.FromString(resource.body))}
    return json_format.MessageToDict(resource.to_any())


def render(path: pathlib.Path) -> dict[str, Any]:
    """{type: {proxy: [resource, ...]}} plus "errors": [message, ...]."""
    world, proxies, errors = load_case(path)
    mesh_file = path.with_name(path.name.removesuffix(".in.yaml") + MESH_SUFFIX)
    options = GenerateOptions(inbound_port=15006, sidecar_endpoint_port=15006)
    if mesh_file.exists():
        found = parse_mesh_config(mesh_file.read_text())
        options = dataclasses.replace(
            options,
            mesh=found.policy,
            root_namespace=found.root_namespace,
            trust_domain=found.trust_domain,
            gateway_trusted_proxies=found.gateway_trusted_proxies,
        )
    generator = ConfigGenerator(world, options=options, check=True)
    generator.precompute()
    out: dict[str, Any] = {kind: {} for kind in (*TYPES, *OPTIONAL_TYPES)}
    flags = proxy_flags(path.read_text())
    for node_id in proxies:
        proxy = dataclasses.replace(
            parse_node_id(node_id), sds="sds" in flags, capture="capture" in flags, proxyless="proxyless" in flags,
            metadata=((AGENT_METADATA, "true"),) if "bootstrap-patches" in flags else (),
        )  # fmt: skip
        snapshot = generator.snapshot(proxy)
        for kind, type_url in (TYPES | OPTIONAL_TYPES).items():
            out[kind][f"{proxy.pod}.{proxy.namespace}"] = [_to_dict(r) for r in snapshot.select(type_url, None)]
    for kind in OPTIONAL_TYPES:
        if not any(out[kind].values()):
            del out[kind]
    out["errors"] = errors + [str(e) for e in generator.errors]
    return out


def _inline_secrets(holder: dict[str, Any], secrets: dict[str, dict[str, Any]], files: dict[str, str]) -> None:
    """SDS references of a cluster's (or filter chain's) TLS context replaced by the secrets the proxy is
    served (as Envoy assembles them), and certificate file paths by files that exist (validate mode
    opens them)."""
    common = holder.get("transportSocket", {}).get("typedConfig", {}).get("commonTlsContext")
    if common is None:
        return
    if any(_from_agent(s) for s in common.get("tlsCertificateSdsSecretConfigs", [])):
        return  # the node agent's secrets: left to the bootstrap's sds-grpc cluster
    for sds in common.pop("tlsCertificateSdsSecretConfigs", []):
        common.setdefault("tlsCertificates", []).append(secrets[sds["name"]]["tlsCertificate"])
    combined = common.pop("combinedValidationContext", None)
    if combined is not None and _from_agent(combined["validationContextSdsSecretConfig"]):
        common["combinedValidationContext"] = combined
    elif combined is not None:
        # a CA meshd does not serve (a reference that does not resolve: the proxy waits for it, then fails the
        # connections) is left out here with its SAN matchers, for Envoy to validate the rest
        served = secrets.get(combined["validationContextSdsSecretConfig"]["name"], {}).get("validationContext")
        common["validationContext"] = {**combined["defaultValidationContext"], **served} if served else {}
    for certificate in common.get("tlsCertificates", []):
        for part in certificate.values():
            if "filename" in part:
                part["filename"] = files.get(part["filename"], part["filename"])
    for part in common.get("validationContext", {}).values():
        if isinstance(part, dict) and "filename" in part:
            part["filename"] = files.get(part["filename"], part["filename"])


def _local_files(node: Any, files: dict[str, str]) -> None:
    """Certificate file paths anywhere in a resource (a listener's TLS) replaced by files that exist."""
    if isinstance(node, dict):
        if isinstance(node.get("filename"), str):
            node["filename"] = files.get(node["filename"], node["filename"])
        for value in node.values():
            _local_files(value, files)
    elif isinstance(node, list):
        for value in node:
            _local_files(value, files)


def _from_agent(sds: dict[str, Any]) -> bool:
    return "apiConfigSource" in sds.get("sdsConfig", {})


def _sds_cluster(path: str) -> dict[str, Any]:
    """The agent's SDS server as Istio's bootstrap declares it (validate mode never connects)."""
    return {
        "name": SDS_CLUSTER,
        "type": "STATIC",
        "connectTimeout": "1s",
        "typedExtensionProtocolOptions": {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                "explicitHttpConfig": {"http2ProtocolOptions": {}},
            }
        },
        "loadAssignment": {
            "clusterName": SDS_CLUSTER,
            "endpoints": [{"lbEndpoints": [{"endpoint": {"address": {"pipe": {"path": path}}}}]}],
        },
    }


def validation_bootstrap(
    rendered: dict[str, Any], proxy: str, *, files: dict[str, str] | None = None
) -> dict[str, Any]:
    """A bootstrap holding one proxy's resources statically: EDS clusters get their assignment
    inline, RDS references get their route configuration inline, SDS references their secret, ECDS
    references (HTTP and network filters with a config_discovery) their extension config; certificate files named in
    `files` are replaced by the given paths (so are Wasm module files)."""
    extensions = {e["name"]: e for e in rendered.get("extensions", {}).get(proxy, [])}
    routes = {r["name"]: r for r in rendered["routes"][proxy]}
    assignments = {a["clusterName"]: a for a in rendered["endpoints"][proxy]}
    secrets = {s["name"]: s for s in rendered.get("secrets", {}).get(proxy, [])}
    clusters = []
    for cluster in copy.deepcopy(rendered["clusters"][proxy]):
        cluster.pop("@type")
        _inline_secrets(cluster, secrets, files or {})
        _local_files(cluster, files or {})  # also in transport sockets that wrap the TLS one (PROXY protocol)
        if cluster.get("type") == "EDS":
            name = cluster.pop("edsClusterConfig")["serviceName"]
            cluster["type"] = "STATIC"
            assignment = dict(assignments.get(name, {"clusterName": name}))
            assignment.pop("@type", None)
            cluster["loadAssignment"] = assignment
        clusters.append(cluster)
    listeners = []
    for listener in copy.deepcopy(rendered["listeners"][proxy]):
        listener.pop("@type")
        _local_files(listener, files or {})
        default_chain = [listener["defaultFilterChain"]] if "defaultFilterChain" in listener else []
        for chain in listener.get("filterChains", []) + default_chain:
            _inline_secrets(chain, secrets, files or {})
            for filt in chain.get("filters", []):
                if "configDiscovery" in filt:  # a network filter over ECDS (a NETWORK WasmPlugin)
                    del filt["configDiscovery"]
                    filt["typedConfig"] = copy.deepcopy(extensions[filt["name"]]["typedConfig"])
                    _local_files(filt, files or {})
                config = filt.get("typedConfig", {})
                if "rds" in config:
                    route = dict(routes[config.pop("rds")["routeConfigName"]])
                    route.pop("@type", None)
                    config["routeConfig"] = route
                for http_filter in config.get("httpFilters", []):
                    if "configDiscovery" in http_filter:
                        del http_filter["configDiscovery"]
                        http_filter["typedConfig"] = copy.deepcopy(extensions[http_filter["name"]]["typedConfig"])
                        _local_files(http_filter, files or {})
        listeners.append(listener)
    if SDS_CLUSTER in json.dumps([clusters, listeners]):
        clusters.append(_sds_cluster("/var/run/secrets/workload-spiffe-uds/socket"))
    config = {
        "node": {"id": DEFAULT_PROXY, "cluster": "validate"},
        "admin": {"address": {"socketAddress": {"address": "127.0.0.1", "portValue": 0}}},
        "staticResources": {"clusters": clusters, "listeners": listeners},
    }
    served = rendered.get("bootstrap", {}).get(proxy, [])
    patches = [(p["name"], json_format.ParseDict(p["patch"], Bootstrap())) for p in served]
    if patches:  # as the node agent applies them (each must apply: a refused one would fail the case)
        resolve_types(config)
        patched, refused = apply_patches(json_format.ParseDict(config, Bootstrap()), patches)
        assert not refused, refused
        config = json_format.MessageToDict(patched)
    return config
