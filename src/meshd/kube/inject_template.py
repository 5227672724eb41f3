"""The containers and volumes the injector adds to a pod (pure), laid out as Istio's sidecar template
lays them out: init container `istio-init` (`meshd iptables`, NET_ADMIN/NET_RAW, root), sidecar
`istio-proxy` (`meshd agent`, UID 1337, read-only root filesystem, readiness on 15021
`/healthz/ready`, 15090 for Prometheus), a projected service-account token with audience `istio-ca`,
the `istio-ca-root-cert` ConfigMap, and emptyDirs for the workload socket and Envoy's files.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from meshd.kube.inject_options import SidecarOptions, inbound_exclusions
from meshd.kube.inject_proxyconfig import ProxyConfigs

INIT_NAME = "istio-init"
PROXY_NAME = "istio-proxy"
PROXY_UID = 1337
STATUS_PORT = 15021
ADMIN_PORT = 15000
PROMETHEUS_PORT = 15090

TOKEN_DIR = "/var/run/secrets/tokens"
TOKEN_FILE = f"{TOKEN_DIR}/istio-token"
ROOT_DIR = "/var/run/secrets/istio"
ROOT_FILE = f"{ROOT_DIR}/root-cert.pem"
SOCKET_DIR = "/var/run/secrets/workload-spiffe-uds"
ENVOY_DIR = "/etc/istio/proxy"
DATA_DIR = "/var/lib/istio/data"
PODINFO_DIR = "/etc/istio/pod"
TOKEN_AUDIENCE = "istio-ca"
ROOT_CONFIGMAP = "istio-ca-root-cert"

VOLUMES = ("workload-socket", "istio-envoy", "istio-data", "istio-podinfo", "istio-token", "istiod-ca-cert")


@dataclass(frozen=True)
class InjectionConfig:
    """What every injected sidecar shares (from meshd's settings, later the chart's values)."""

    image: str = "meshd:latest"
    image_pull_policy: str = "IfNotPresent"
    xds_address: str = "istiod.istio-system.svc:15012"
    xds_server_name: str = "istiod.istio-system.svc"
    ca_address: str | None = None  # default: xds_address
    trust_domain: str = "cluster.local"
    cluster_id: str = "Kubernetes"
    revision: str = "default"
    token_expiration_s: int = 43200
    # the mesh's defaultConfig and the ProxyConfig resources (kube/inject_proxyconfig.py)
    proxy_configs: ProxyConfigs = field(default_factory=ProxyConfigs)


def _env(name: str, field: str) -> dict[str, Any]:
    return {"name": name, "valueFrom": {"fieldRef": {"apiVersion": "v1", "fieldPath": field}}}


def init_container(config: InjectionConfig, options: SidecarOptions) -> dict[str, Any]:
    args = [
        "iptables",
        "--proxy-uid", str(PROXY_UID),
        "--include-outbound-ip-ranges", options.include_outbound_ip_ranges,
        "--exclude-outbound-ip-ranges", options.exclude_outbound_ip_ranges,
        "--include-inbound-ports", options.include_inbound_ports,
        "--exclude-inbound-ports", inbound_exclusions(options),
        "--exclude-outbound-ports", options.exclude_outbound_ports,
    ]  # fmt: skip
    return {
        "name": INIT_NAME,
        "image": options.image or config.image,
        "imagePullPolicy": config.image_pull_policy,
        "command": ["meshd"],
        "args": args,
        "resources": {"limits": {"cpu": "2", "memory": "1Gi"}, "requests": {"cpu": "10m", "memory": "40Mi"}},
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "privileged": False,
            "capabilities": {"add": ["NET_ADMIN", "NET_RAW"], "drop": ["ALL"]},
            "readOnlyRootFilesystem": False,
            "runAsGroup": 0,
            "runAsNonRoot": False,
            "runAsUser": 0,
        },
    }


def proxy_container(
    config: InjectionConfig,
    options: SidecarOptions,
    *,
    labels: dict[str, str],
    ports: list[int],
    router: bool = False,
) -> dict[str, Any]:
    """The `istio-proxy` container: a sidecar (traffic captured: REDIRECT), or with `router` a gateway
    proxy (`--proxy-type router`, Istio's `proxy router`: Gateway listeners, no capture)."""
    xds_address = options.discovery_address or config.xds_address
    args = [
        "agent",
        "--xds-address", xds_address,
        "--xds-server-name", config.xds_server_name,
        "--ca-address", config.ca_address or xds_address,
        "--root-cert", ROOT_FILE,
        "--token-file", TOKEN_FILE,
        "--trust-domain", config.trust_domain,
        "--cluster-id", config.cluster_id,
        "--workdir", ENVOY_DIR,
        "--sds-socket", f"{SOCKET_DIR}/socket",
        "--admin-port", str(ADMIN_PORT),
        "--status-port", str(STATUS_PORT),
        *(("--proxy-type", "router") if router else ("--interception-mode", "REDIRECT")),
    ]  # fmt: skip
    if labels:
        args += ["--labels", ",".join(f"{k}={v}" for k, v in sorted(labels.items()))]
    if ports:
        args += ["--pod-ports", ",".join(str(p) for p in ports)]
    if options.log_level:
        args += ["--envoy-log-level", options.log_level]
    if options.concurrency:
        args += ["--envoy-concurrency", str(options.concurrency)]
    return {
        "name": PROXY_NAME,
        "image": options.image or config.image,
        "imagePullPolicy": config.image_pull_policy,
        "command": ["meshd"],
        "args": args,
        # the agent reads its identity from the downward API (flags win over these)
        "env": [
            _env("POD_NAME", "metadata.name"),
            _env("POD_NAMESPACE", "metadata.namespace"),
            _env("INSTANCE_IP", "status.podIP"),
            _env("SERVICE_ACCOUNT", "spec.serviceAccountName"),
            _env("HOST_IP", "status.hostIP"),
            *({"name": name, "value": value} for name, value in options.environment),
        ],
        "ports": [{"containerPort": PROMETHEUS_PORT, "name": "http-envoy-prom", "protocol": "TCP"}],
        "readinessProbe": {
            "httpGet": {"path": "/healthz/ready", "port": STATUS_PORT},
            "initialDelaySeconds": 1,
            "periodSeconds": 2,
            "timeoutSeconds": 3,
            "failureThreshold": 4,
        },
        "resources": {"limits": {"cpu": "2", "memory": "1Gi"}, "requests": {"cpu": "100m", "memory": "128Mi"}},
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "privileged": False,
            "capabilities": {"drop": ["ALL"]},
            "readOnlyRootFilesystem": True,
            "runAsGroup": PROXY_UID,
            "runAsNonRoot": True,
            "runAsUser": PROXY_UID,
        },
        "volumeMounts": [
            {"name": "workload-socket", "mountPath": SOCKET_DIR},
            {"name": "istiod-ca-cert", "mountPath": ROOT_DIR, "readOnly": True},
            {"name": "istio-data", "mountPath": DATA_DIR},
            {"name": "istio-envoy", "mountPath": ENVOY_DIR},
            {"name": "istio-token", "mountPath": TOKEN_DIR, "readOnly": True},
            {"name": "istio-podinfo", "mountPath": PODINFO_DIR},
        ],
    }


def volumes(config: InjectionConfig) -> list[dict[str, Any]]:
    return [
        {"name": "workload-socket", "emptyDir": {}},
        {"name": "istio-envoy", "emptyDir": {"medium": "Memory"}},
        {"name": "istio-data", "emptyDir": {}},
        {
            "name": "istio-podinfo",
            "downwardAPI": {
                "items": [
                    {"path": "labels", "fieldRef": {"fieldPath": "metadata.labels"}},
                    {"path": "annotations", "fieldRef": {"fieldPath": "metadata.annotations"}},
                ]
            },
        },
        {
            "name": "istio-token",
            "projected": {
                "sources": [
                    {
                        "serviceAccountToken": {
                            "audience": TOKEN_AUDIENCE,
                            "expirationSeconds": config.token_expiration_s,
                            "path": "istio-token",
                        }
                    }
                ]
            },
        },
        {"name": "istiod-ca-cert", "configMap": {"name": ROOT_CONFIGMAP}},
    ]
