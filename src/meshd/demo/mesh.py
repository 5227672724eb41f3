"""The example mesh as the demo sees it: where it lives, its workloads, and the canary weights file.

Workloads come from the Pods in the example YAML (single source of truth for names and IPs): the pods
with a sidecar, and the ingress gateway (a `router` proxy) the traffic enters by; who calls whom is the
apps' business logic (`CALLS`).
"""

from __future__ import annotations

import os
import pathlib
from dataclasses import dataclass
from typing import Any

import yaml

import meshd

VIRTUAL_SERVICE_FILE = "catalog-virtualservice.yaml"
CANARY_SERVICE = "catalog"
SERVICE_PORT = 9080
APP_PORT = 8080
ADMIN_PORT = 15000
INBOUND_PORT = 15006
STATUS_PORT = 15021  # the agent's /healthz/ready
METRICS_PORT = 15020  # the agent's merged /stats/prometheus (Istio's metrics, read by the demo)
STATS_PORT = 15090  # Envoy's own /stats/prometheus
CALLS = {"frontend": "catalog", "catalog": "backend"}
GATEWAY_APP = "istio-ingressgateway"  # the ingress gateway: where the demo's traffic enters
GATEWAY_LABEL = ("istio", "ingressgateway")
GATEWAY_PORT = 8080  # its Gateway server's port (unprivileged: the demo may run as any user)
ENTRY_SERVICE = "frontend"


class MeshError(RuntimeError):
    """The example mesh is missing or not what the demo expects."""


@dataclass(frozen=True)
class Workload:
    """One pod of the example mesh, with a sidecar."""

    pod: str
    namespace: str
    app: str
    version: str
    ip: str
    domain: str = "cluster.local"
    service_account: str = "default"
    router: bool = False  # a gateway proxy (node type `router`), not a sidecar

    @property
    def node_id(self) -> str:
        kind = "router" if self.router else "sidecar"
        return f"{kind}~{self.ip}~{self.pod}.{self.namespace}~{self.namespace}.svc.{self.domain}"

    @property
    def cluster(self) -> str:
        return f"{self.app}.{self.namespace}"


def example_dir() -> pathlib.Path:
    """examples/bookinfo of the source checkout meshd is installed from (editable install)."""
    path = pathlib.Path(meshd.__file__).resolve().parents[2] / "examples" / "bookinfo"
    if not (path / VIRTUAL_SERVICE_FILE).is_file():
        raise MeshError(
            f"example mesh not found at {path}: `meshd demo` runs from a source checkout"
            " (pip install -e . in the repository that has examples/bookinfo)"
        )
    return path


def _documents(*, directory: pathlib.Path) -> list[dict[str, Any]]:
    documents: list[dict[str, Any]] = []
    for path in sorted(directory.glob("*.yaml")):
        for document in yaml.safe_load_all(path.read_text()):
            if isinstance(document, dict):
                documents.append(document)
    return documents


def load_workloads(*, directory: pathlib.Path) -> list[Workload]:
    """Pods with a sidecar (label security.istio.io/tlsMode=istio) and the ingress gateway, ordered by IP."""
    workloads: list[Workload] = []
    for document in _documents(directory=directory):
        if document.get("kind") != "Pod":
            continue
        metadata = document.get("metadata") or {}
        labels = metadata.get("labels") or {}
        ip = (document.get("status") or {}).get("podIP")
        router = labels.get(GATEWAY_LABEL[0]) == GATEWAY_LABEL[1]
        if (labels.get("security.istio.io/tlsMode") != "istio" and not router) or not ip:
            continue
        workloads.append(
            Workload(
                pod=metadata["name"],
                namespace=metadata.get("namespace", "default"),
                app=labels.get("app", metadata["name"]),
                version=labels.get("version", "v1"),
                ip=ip,
                service_account=(document.get("spec") or {}).get("serviceAccountName") or "default",
                router=router,
            )
        )
    workloads.sort(key=lambda workload: tuple(int(part) for part in workload.ip.split(".")))
    apps = {workload.app for workload in workloads}
    missing = ({GATEWAY_APP, ENTRY_SERVICE} | set(CALLS) | set(CALLS.values())) - apps
    if missing:
        raise MeshError(f"{directory}: no pod with a sidecar (or gateway) for app(s) {sorted(missing)}")
    return workloads


def call_chain() -> tuple[str, ...]:
    """The proxies and apps a request goes through, the ingress gateway first."""
    chain = [GATEWAY_APP, ENTRY_SERVICE]
    while chain[-1] in CALLS and len(chain) <= len(CALLS) + 1:
        chain.append(CALLS[chain[-1]])
    return tuple(chain)


def canary_versions(*, workloads: list[Workload]) -> list[str]:
    return sorted({workload.version for workload in workloads if workload.app == CANARY_SERVICE})


def read_weights(*, path: pathlib.Path) -> dict[str, int]:
    """Subset -> weight of the first HTTP route of the VirtualService in `path`."""
    document = yaml.safe_load(path.read_text())
    try:
        route = document["spec"]["http"][0]["route"]
    except (KeyError, IndexError, TypeError) as err:
        raise MeshError(f"{path}: no spec.http[0].route") from err
    return {entry["destination"].get("subset", "?"): int(entry.get("weight", 100)) for entry in route}


def write_weights(*, path: pathlib.Path, weights: dict[str, int], scratch_dir: pathlib.Path) -> None:
    """Rewrite the VirtualService's first route to `weights`, atomically via a file in `scratch_dir`."""
    document = yaml.safe_load(path.read_text())
    host = document["spec"]["hosts"][0]
    document["spec"]["http"][0]["route"] = [
        {"destination": {"host": host, "subset": subset}, "weight": weight} for subset, weight in weights.items()
    ]
    description = " / ".join(f"{subset} {weight}%" for subset, weight in weights.items())
    text = f"# Rewritten by `meshd demo`: {description}.\n" + yaml.safe_dump(document, sort_keys=False)
    scratch = scratch_dir / f".{path.name}.tmp"
    scratch.write_text(text)
    os.replace(scratch, path)


def format_weights(*, weights: dict[str, int] | None, versions: list[str]) -> str:
    if weights is None:
        return "n/a"
    return " ".join(f"{version}={weights.get(version, 0)}" for version in versions)
