"""The real Kubernetes API server of the side-by-side benchmark, and writing the mesh into it.

etcd + kube-apiserver come from ../shared/envtest (KUBEBUILDER_ASSETS, else unpacked by
tools/envtest-assets.sh), started by tests/kubereal/control_plane.py: loopback ports only, a PKI of
its own, `--enable-aggregator-routing` (it never dials a cluster IP), stopped by pid. Istio 1.14's CRDs
(../shared/peers/istiod-1.14/istio-1.14-crds.yaml) are installed: both meshd and istiod read them.

Objects are written over REST by KubeRest (tests/kubeapi/client.py), many requests in flight; a
Pod's status through its /status subresource. An edit is one merge patch; its event time is the
moment the request is sent, so the API server's write and watch fan-out count for both control planes.
"""

from __future__ import annotations

import asyncio
import os
import pathlib
import subprocess
import time
from collections.abc import Awaitable, Callable
from typing import Any

import yaml

from benchmarks.kubemesh import KubeMesh
from tests.kubeapi import KubeRest
from tests.kubereal.control_plane import ASSETS_VARIABLE, ControlPlane, install_crds
from tests.peers import PEERS

REPO = pathlib.Path(__file__).resolve().parents[1]
ISTIO_CRDS = PEERS / "istio-1.14-crds.yaml"
MESH_NAMESPACE = "istio-system"  # the control plane's own (istiod's leader-election locks, meshd's Lease)
WRITERS = 16  # requests in flight while writing the mesh


def envtest_assets() -> tuple[pathlib.Path | None, str]:
    """The directory holding etcd and kube-apiserver, or None and why not."""
    assets = os.environ.get(ASSETS_VARIABLE)
    if not assets:
        script = REPO / "tools" / "envtest-assets.sh"
        assets = subprocess.run(["sh", str(script)], capture_output=True, text=True, check=True).stdout.strip()
    if not assets:
        return None, f"no envtest assets: {ASSETS_VARIABLE} unset and ../shared/envtest absent"
    for binary in ("etcd", "kube-apiserver"):
        if not os.access(pathlib.Path(assets, binary), os.X_OK):
            return None, f"{assets} has no executable {binary}"
    if not ISTIO_CRDS.is_file():
        return None, f"{ISTIO_CRDS} is absent (Istio 1.14's CRDs)"
    return pathlib.Path(assets), ""


async def start_cluster(*, work: pathlib.Path, assets: pathlib.Path) -> ControlPlane:
    """etcd + kube-apiserver ready, Istio 1.14's CRDs Established. The caller stops it (plane.stop())."""
    plane = ControlPlane(work, assets=assets)
    try:
        await asyncio.to_thread(plane.start)
        crds = [d for d in yaml.safe_load_all(ISTIO_CRDS.read_text()) if d and d["kind"] == "CustomResourceDefinition"]
        await asyncio.to_thread(install_crds, plane, crds)
    except BaseException:
        plane.stop()
        raise
    return plane


async def _bounded(jobs: list[Callable[[], Awaitable[Any]]], *, limit: int = WRITERS) -> None:
    gate = asyncio.Semaphore(limit)

    async def one(job: Callable[[], Awaitable[Any]]) -> None:
        async with gate:
            await job()

    await asyncio.gather(*(one(job) for job in jobs))


async def _pod(rest: KubeRest, pod: dict[str, Any], status: dict[str, Any]) -> None:
    await rest.create(pod)
    meta = pod["metadata"]
    await rest.patch("v1", "Pod", meta["namespace"], meta["name"], {"status": status}, subresource="status")


async def write_mesh(rest: KubeRest, mesh: KubeMesh) -> dict[str, Any]:
    """Namespaces, pods (with status), then Services, EndpointSlices and Istio objects; counts and seconds."""
    t0 = time.time()
    namespaces = [{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": MESH_NAMESPACE}}]
    namespaces += mesh.namespace_objects()
    await _bounded([lambda o=o: rest.create(o) for o in namespaces])  # type: ignore[misc]
    pods = [p for i in range(mesh.spec.services) for p in mesh.pods(i)] + mesh.gateway_pods()
    await _bounded([lambda p=p: _pod(rest, *p) for p in pods])  # type: ignore[misc]
    config = mesh.config_objects()
    await _bounded([lambda o=o: rest.create(o) for o in config])  # type: ignore[misc]
    return {"namespaces": len(namespaces), "pods": len(pods), "objects": len(config), "s": round(time.time() - t0, 1)}


async def patch(rest: KubeRest, obj: dict[str, Any]) -> float:
    """Merge-patch `obj` (lists are replaced whole); returns the time the request was sent."""
    meta = obj["metadata"]
    body = {k: v for k, v in obj.items() if k not in ("apiVersion", "kind", "metadata")}
    t = time.time()
    await rest.patch(obj["apiVersion"], obj["kind"], meta["namespace"], meta["name"], body)
    return t
