"""Every tunable of meshd, in one pydantic model passed explicitly to whoever needs it."""

from __future__ import annotations

import pathlib
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class Settings(BaseModel):
    """Process-wide settings. Built once by the CLI (or a test) and passed down; never global."""

    model_config = ConfigDict(frozen=True)

    config_dir: pathlib.Path | None = None
    xds_host: str = "0.0.0.0"
    xds_port: int = 15010
    http_host: str = "0.0.0.0"
    http_port: int = 15014
    # /debug/* on the ops port answer only loopback clients unless exposed (they show every proxy's config)
    debug_expose: bool = False
    debounce_quiet_s: float = Field(default=0.1, ge=0)
    # the quiet period of a change that finds the push loop calm (no push for debounce_quiet_s):
    # push/debounce.py; equal to debounce_quiet_s, every change waits that (Istio's PILOT_DEBOUNCE_AFTER)
    debounce_calm_quiet_s: float = Field(default=0.01, ge=0)
    debounce_max_s: float = Field(default=10.0, gt=0)
    file_poll_interval_s: float = Field(default=0.5, gt=0)
    # "events": file events (inotify); "poll": stat the directory every file_poll_interval_s
    file_watch: Literal["events", "poll"] = "events"
    # A config file larger than this is refused (what it contributed before stays).
    max_config_file_bytes: int = Field(default=16 * 1024 * 1024, ge=1)
    domain_suffix: str = "cluster.local"
    root_namespace: str = "istio-system"
    # Standalone mode has no traffic capture: outbound listeners bind on the sidecar's own
    # address, and workloads with a sidecar are reached through its inbound listener.
    inbound_port: int = 15006
    # A proxy that does not take a response within this time is disconnected (it reconnects and
    # gets the current state); it never delays the others.
    send_timeout_s: float = Field(default=30.0, gt=0)
    # ADS streams each gRPC server admits (beyond: RESOURCE_EXHAUSTED, Envoy retries), and on the
    # plaintext port per peer address (a pod is one address with one ADS stream).
    max_xds_streams: int = Field(default=20_000, ge=1)
    max_xds_streams_per_peer: int = Field(default=1_000, ge=1)
    # Processes serving the xDS ports, plaintext and secure (SO_REUSEPORT), fed by the main process
    # (wiring/workers.py); 1: the main process serves them itself. `meshd serve` defaults to
    # `--workers auto` (wiring/worker_count.py).
    workers: int = Field(default=1, ge=1, le=256)
    # Which worker serves a connection to the secure port: "namespace": the main process accepts it and
    # hands it to the worker that serves the caller's namespace (wiring/secure_placement.py), so a
    # namespace's scopes are built in one worker; "kernel": every worker binds the port (SO_REUSEPORT).
    worker_placement: Literal["namespace", "kernel"] = "namespace"
    # Leader election and status (kube/leader.py, kube/status.py): with a cluster (Kubernetes mode,
    # or a kubeconfig next to --config-dir), one replica holds the Lease and writes status.
    leader_election: bool = True
    lease_name: str = "meshd-leader"
    lease_namespace: str | None = None  # default: namespace (meshd's own)
    lease_duration_s: float = Field(default=30.0, ge=1)
    leader_identity: str | None = None  # default: hostname + random suffix
    write_status: bool = True
    status_interval_s: float = Field(default=1.0, gt=0)
    # The leader checks every namespace's istio-ca-root-cert this often, besides watching them.
    root_cert_resync_s: float = Field(default=60.0, gt=0)
    # Gateway API automated deployment (kube/gateway_deploy.py): the leader creates and owns a Deployment,
    # Service and ServiceAccount per Gateway of an `istio`/`meshd` class (the injection image and addresses);
    # a full pass (repairs, orphans) this often, besides every Gateway change
    gateway_deploy: bool = True
    gateway_deploy_resync_s: float = Field(default=60.0, gt=0)
    # Validating admission webhook (kube/webhook.py): served when both files are given.
    webhook_host: str = "0.0.0.0"
    webhook_port: int = 15017
    webhook_cert: pathlib.Path | None = None
    webhook_key: pathlib.Path | None = None
    # Freeze the live config out of GC passes after each push; a full collection every N pushes.
    gc_freeze: bool = True
    gc_full_every_pushes: int = Field(default=100, ge=1)
    enable_test_hooks: bool = False
    # Standalone sidecars share meshd's filesystem: certificate files named by DestinationRules
    # are checked here, and clusters naming a missing one are left out instead of being NACKed.
    check_tls_files: bool = True
    # Kubernetes mode (no config_dir): a kubeconfig file, else the in-cluster service account.
    kubeconfig: pathlib.Path | None = None
    namespace: str = "istio-system"  # meshd's own namespace (the `istio` mesh ConfigMap lives here)
    kube_watch_timeout_s: float = Field(default=300.0, gt=0)  # each watch asks for up to twice this
    kube_crd_recheck_s: float = Field(default=30.0, gt=0)  # how often an absent Istio CRD is looked up again
    # --- CA and the secure (TLS) port: issue 5 -----------------------------------------------
    ca_enabled: bool = False  # `meshd serve` turns it on unless --no-ca
    # Standalone CA store: ca-cert.pem, ca-key.pem, cert-chain.pem, root-cert.pem (+ cacerts/ plugged-in)
    ca_dir: pathlib.Path = pathlib.Path(".meshd/ca")
    ca_token_file: pathlib.Path | None = None  # standalone: token -> {namespace, serviceAccount}
    # SPIFFE identities are spiffe://<trust_domain>/ns/<ns>/sa/<sa> (issued certificates, mTLS SAN checks)
    trust_domain: str = "cluster.local"
    cluster_id: str = "Kubernetes"  # a CSR's ClusterID header naming another cluster is refused
    secure_host: str = "0.0.0.0"
    secure_port: int = 15012
    # Extra SANs on meshd's serving certificate besides meshd.<ns>.svc and istiod.<ns>.svc: what clients dial.
    secure_sans: tuple[str, ...] = ("localhost", "127.0.0.1")
    ca_default_ttl_s: int = Field(default=24 * 3600, gt=0)
    ca_max_ttl_s: int = Field(default=90 * 24 * 3600, gt=0)
    # Connection hygiene (ca/tls_front.py, netlimits.py): open-connection caps per listener (a refused
    # connection is counted in meshd_connections_refused), the TLS handshake timeout, and how long a TLS
    # connection to the secure port may stay open without sending a request.
    secure_max_connections: int = Field(default=8192, ge=1)
    xds_max_connections: int = Field(default=8192, ge=1)
    webhook_max_connections: int = Field(default=512, ge=1)
    tls_handshake_timeout_s: float = Field(default=10.0, gt=0)
    first_request_timeout_s: float = Field(default=30.0, gt=0)
    # meshd's own serving certificates (secure port, CA-issued webhook): renewed at half this life.
    # None: ca_max_ttl_s.
    serving_cert_ttl_s: int | None = Field(default=None, gt=0)
    # auto mTLS (Istio's enableAutoMtls): client sidecars use mTLS toward workloads that have a sidecar
    enable_auto_mtls: bool = True
    # The mesh's outboundTrafficPolicy.mode for capture-mode proxies (a Sidecar's mode wins): unknown
    # destinations go to PassthroughCluster (ALLOW_ANY) or BlackHoleCluster (REGISTRY_ONLY).
    outbound_traffic_policy: Literal["ALLOW_ANY", "REGISTRY_ONLY"] = "ALLOW_ANY"
    # Standalone: a MeshConfig YAML file (api/mesh.py: rootNamespace, trustDomain, extensionProviders...),
    # read at start and watched (sources/mesh_file.py); Kubernetes mode reads the `istio` ConfigMap instead.
    mesh_config: pathlib.Path | None = None
    # Gateways select gateway workloads of their own namespace only (Istio's PILOT_SCOPE_GATEWAY_TO_NAMESPACE)
    scope_gateway_to_namespace: bool = False
    # Where gateway listeners bind: "any" (0.0.0.0, as Istio), "proxy-ip" (the gateway proxy's own address,
    # the standalone convention), "auto": proxy-ip standalone, any in Kubernetes mode
    gateway_bind: Literal["auto", "any", "proxy-ip"] = "auto"
    # meshConfig.protocolDetectionTimeout: how long a sniffed port (no protocol in its name or appProtocol)
    # waits for the client's first bytes before carrying on as TCP; 0: no limit (Istio's default)
    protocol_detection_timeout_s: float = Field(default=0.0, ge=0, le=3600)
    # --- RequestAuthentication key sets (sources/jwks.py): fetched by meshd and inlined -------------
    jwks_refresh_s: float = Field(default=1200.0, gt=0)  # Istio's default: 20 minutes
    jwks_retry_s: float = Field(default=5.0, gt=0)  # a failed fetch is retried after this, doubling up to refresh
    jwks_fetch_timeout_s: float = Field(default=5.0, gt=0)  # a rule without `timeout` (Istio's default)
    jwks_max_bytes: int = Field(default=1024 * 1024, ge=1)  # a larger response is a failed fetch
    # jwksUri is user input that makes meshd connect: loopback, link-local and cloud metadata addresses
    # are refused unless allowed here
    jwks_allow_loopback: bool = False
    jwks_allow_link_local: bool = False
    # --- Sidecar injection and webhook configurations: issue 7 ----------------------------------
    # `/inject` on the webhook server (kube/inject.py); what the injected containers run and dial.
    inject_enabled: bool = True
    inject_image: str = "meshd:latest"
    inject_image_pull_policy: str = "IfNotPresent"
    inject_xds_address: str | None = None  # default: istiod.<namespace>.svc:15012
    inject_ca_address: str | None = None  # default: the xDS address
    # Kubernetes mode with the CA, no --webhook-cert: the webhook certificate is issued by meshd's CA for
    # <webhook_service>.<namespace>.svc (+ meshd/istiod), and the leader patches these configurations'
    # caBundle (and the validating one's failurePolicy to Fail once ready). "" skips one.
    webhook_service: str = "meshd"
    injector_webhook_config: str = "meshd-sidecar-injector"
    validator_webhook_config: str = "meshd-validator"


class AgentSettings(BaseModel):
    """Settings of `meshd agent` (the node agent next to one Envoy). Paths are relative to `workdir`."""

    model_config = ConfigDict(frozen=True)

    pod: str
    namespace: str = "default"
    ip: str = "127.0.0.1"
    service_account: str = "default"
    labels: dict[str, str] = Field(default_factory=dict)
    workload_name: str | None = None  # default: label `app`, else the pod name
    pod_ports: tuple[int, ...] = ()
    cluster_id: str = "Kubernetes"
    mesh_id: str = "cluster.local"
    domain_suffix: str = "cluster.local"
    trust_domain: str = "cluster.local"  # the SPIFFE id the CSR names (the CA decides the issued one)
    # meshd: xDS over mTLS on 15012 (the server name is sent as SNI and checked in meshd's certificate),
    # or plaintext (xds_plaintext, e.g. 15010)
    xds_address: str = "127.0.0.1:15012"
    xds_server_name: str = "istiod.istio-system.svc"
    xds_plaintext: bool = False
    delta: bool = False
    # meshd's CA (IstioCertificateService on the TLS port), the root that verifies it, and the token
    ca_address: str | None = None  # default: xds_address
    root_cert: pathlib.Path | None = None
    token_file: pathlib.Path | None = None
    cert_ttl_s: int = Field(default=24 * 3600, ge=0)  # requested lifetime; 0 = the CA's default
    grace_ratio: float = Field(default=0.5, gt=0, lt=1)  # rotate this far into the lifetime
    ca_retry_base_s: float = Field(default=0.5, gt=0)
    ca_retry_max_s: float = Field(default=30.0, gt=0)
    # local files and ports
    workdir: pathlib.Path = pathlib.Path(".")
    sds_socket: pathlib.Path = pathlib.Path("./var/run/secrets/workload-spiffe-uds/socket")
    sds_delta: bool = False
    admin_port: int = 15000
    status_port: int = 15021  # /healthz/ready; 0 disables it
    # Prometheus: Envoy's /stats/prometheus (Istio's 15090 listener) and the agent's merged endpoint (15020:
    # Envoy's + the agent's + the application's metrics); 0 disables either
    stats_port: int = 15090
    metrics_port: int = 15020
    # the application's metrics merged into 15020 (the injector's ISTIO_PROMETHEUS_ANNOTATIONS): (port, path)
    app_metrics: tuple[int, str] | None = None
    # INTERCEPTION_MODE in the node metadata: REDIRECT when iptables captures the workload's traffic
    # (meshd then serves the capture-mode listeners), NONE for listeners bound on the workload's address.
    interception_mode: Literal["REDIRECT", "NONE"] = "NONE"
    # Istio's node type: a `sidecar` next to an app, or a `router` (a gateway: Gateway listeners only, no
    # traffic capture), as `pilot-agent proxy router` runs gateways
    proxy_type: Literal["sidecar", "router"] = "sidecar"
    # EnvoyFilter applyTo BOOTSTRAP: fetch the patches from meshd and apply them before Envoy starts (Istio's
    # BOOTSTRAP_XDS_AGENT), waiting at most this long for them at the first start (agent/bootstrap_patches.py)
    bootstrap_patches: bool = False
    bootstrap_patches_wait_s: float = Field(default=30.0, gt=0)

    @model_validator(mode="after")
    def _router_captures_nothing(self) -> AgentSettings:
        if self.proxy_type == "router" and self.interception_mode == "REDIRECT":
            raise ValueError("a router (gateway) has no traffic capture: --interception-mode REDIRECT does not apply")
        return self

    # Envoy and its supervision
    envoy_path: str | None = None
    envoy_log_level: str = "warning"
    envoy_concurrency: int = Field(default=2, ge=1)
    envoy_args: tuple[str, ...] = ()
    # the environment Envoy starts with (the agent's own, read by agent/cli.py; the metrics identity is added)
    envoy_environment: dict[str, str] = Field(default_factory=dict, repr=False)
    restart_base_s: float = Field(default=0.5, gt=0)
    restart_max_s: float = Field(default=30.0, gt=0)
    max_restarts: int = Field(default=5, ge=0)
    stable_after_s: float = Field(default=30.0, gt=0)
