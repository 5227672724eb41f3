"""Every tunable of meshd, in one pydantic model passed explicitly to whoever needs it."""

from __future__ import annotations

import pathlib
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class Settings(BaseModel):
    """Process-wide settings. Built once by the CLI (or a test) and passed down; never global."""

    model_config = ConfigDict(frozen=True)

    config_dir: pathlib.Path | None = None
    xds_host: str = "0.0.0.0"
    xds_port: int = 15010
    http_host: str = "0.0.0.0"
    http_port: int = 15014
    debounce_quiet_s: float = Field(default=0.1, ge=0)
    debounce_max_s: float = Field(default=10.0, gt=0)
    file_poll_interval_s: float = Field(default=0.5, gt=0)
    # "events": file events (inotify); "poll": stat the directory every file_poll_interval_s
    file_watch: Literal["events", "poll"] = "events"
    domain_suffix: str = "cluster.local"
    root_namespace: str = "istio-system"
    # Standalone mode has no traffic capture: outbound listeners bind on the sidecar's own
    # address, and workloads with a sidecar are reached through its inbound listener.
    inbound_port: int = 15006
    # A proxy that does not take a response within this time is disconnected (it reconnects and
    # gets the current state); it never delays the others.
    send_timeout_s: float = Field(default=30.0, gt=0)
    # Streams computing or writing a push at once; the rest wait their turn.
    max_concurrent_pushes: int = Field(default=100, ge=1)
    # Leader election and status (kube/leader.py, kube/status.py): with a cluster (Kubernetes mode,
    # or a kubeconfig next to --config-dir), one replica holds the Lease and writes status.
    leader_election: bool = True
    lease_name: str = "meshd-leader"
    lease_namespace: str | None = None  # default: root_namespace
    lease_duration_s: float = Field(default=30.0, ge=1)
    leader_identity: str | None = None  # default: hostname + random suffix
    write_status: bool = True
    status_interval_s: float = Field(default=1.0, gt=0)
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
