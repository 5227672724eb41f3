"""The stale-endpoints bug of issue 13 end to end, with the real EndpointSlice controller (tests/kubereal:
`real_kube_controllers`; skipped without KUBEBUILDER_ASSETS or network namespaces).

A Service with a selector and a Ready Pod (its status written through `/status`, its podIP the address of a
network-namespace test host that nothing dials: no traffic, no health checks): kube-controller-manager writes
the EndpointSlice, meshd serves the endpoint to a real Envoy. The pod is then relabelled out of the selector:
the controller writes the slice with `"endpoints": null`, and Envoy must lose the endpoint within a push (it
used to keep it forever: meshd refused the null list and kept the previous slice).
"""

from __future__ import annotations

import contextlib
import re
import time
import urllib.error
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest
import pytest_asyncio

from tests.e2e.harness import Mesh, eventually, logs_on_failure
from tests.e2e.netns import Lab, netns_unavailable
from tests.kubeapi import KubeRest
from tests.kubereal.control_plane import ControlPlane, request

pytestmark = [pytest.mark.e2e, pytest.mark.asyncio(loop_scope="module")]
NS = "meshd-ctl"
NODE = "meshd-ctl-node"  # a Node object only (no kubelet): the controller skips pods whose node it cannot find
WEB = f"outbound|9080||web.{NS}.svc.cluster.local"


@dataclass
class Cluster:
    mesh: Mesh
    rest: KubeRest
    pod_ip: str


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def cluster(
    real_kube_controllers: ControlPlane, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Cluster]:
    if (why := netns_unavailable()) is not None:
        pytest.skip(f"the pod address is a network-namespace test host: {why}")
    work = tmp_path_factory.mktemp("kube-ctl")
    rest = KubeRest.from_kubeconfig(real_kube_controllers.kubeconfig)
    mesh = Mesh(work_dir=work, delta=False, kubeconfig=real_kube_controllers.kubeconfig, meshd_args=("--namespace", NS))
    lab = Lab(host_bridge=True)
    try:
        async with logs_on_failure(mesh):
            await rest.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}})
            await rest.apply({"apiVersion": "v1", "kind": "Node", "metadata": {"name": NODE}})
            await lab.start()
            host = await lab.pod("web-1")  # its address only: no process listens, nothing dials it
            await mesh.meshd.start()
            await mesh.sidecar(pod="client", ip=mesh.ip(1), namespace=NS)
            yield Cluster(mesh, rest, host.ip)
    finally:
        # no kubelet confirms the pod's end: remove it outright, or the namespace stays Terminating
        with contextlib.suppress(urllib.error.HTTPError):
            request(real_kube_controllers, "DELETE", f"/api/v1/namespaces/{NS}/pods/web-1?gracePeriodSeconds=0")
        await rest.delete("v1", "Namespace", "", NS)
        await rest.delete("v1", "Node", "", NODE)
        await rest.close()
        await mesh.close()
        await lab.close()


async def endpoints_of(cluster: Cluster) -> set[str]:
    text = await cluster.mesh.envoys["client"].admin_get("/clusters")
    return set(re.findall(rf"^{re.escape(WEB)}::([\d.]+):\d+::cx_active", text, re.M))


async def slices(cluster: Cluster) -> list[dict[str, Any]]:
    found = await cluster.rest.list("discovery.k8s.io/v1", "EndpointSlice", NS)
    return [s for s in found if (s["metadata"].get("labels") or {}).get("kubernetes.io/service-name") == "web"]


async def test_pod_relabelled_out_of_the_selector_leaves_envoy(cluster: Cluster) -> None:
    rest = cluster.rest
    await rest.apply({
        "apiVersion": "v1", "kind": "Service", "metadata": {"name": "web", "namespace": NS},
        "spec": {"selector": {"app": "web"}, "ports": [{"name": "http", "port": 9080, "targetPort": 8080}]},
    })  # fmt: skip
    await rest.create({
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "web-1", "namespace": NS, "labels": {"app": "web"}},
        "spec": {"nodeName": NODE, "containers": [{"name": "app", "image": "none"}]},
    })  # fmt: skip
    ready = [{"type": t, "status": "True"} for t in ("Ready", "ContainersReady", "PodScheduled", "Initialized")]
    status = {"phase": "Running", "podIP": cluster.pod_ip, "podIPs": [{"ip": cluster.pod_ip}], "conditions": ready}
    await rest.patch("v1", "Pod", NS, "web-1", {"status": status}, subresource="status")

    async def served() -> bool:
        return await endpoints_of(cluster) == {cluster.pod_ip}

    await eventually(served, timeout=30, what="the controller's slice served to Envoy")
    [written] = await slices(cluster)
    assert [e["addresses"] for e in written["endpoints"]] == [[cluster.pod_ip]], written

    relabelled = time.monotonic()
    await rest.patch("v1", "Pod", NS, "web-1", {"metadata": {"labels": {"app": "elsewhere"}}})

    async def emptied() -> bool:
        return any(s.get("endpoints") is None for s in await slices(cluster))

    await eventually(emptied, timeout=30, what='the controller to write "endpoints": null')
    emptied_at = time.monotonic()
    [empty] = await slices(cluster)
    assert empty.get("endpoints") is None, empty  # what a real API server serves: null, not []

    async def gone() -> bool:
        return await endpoints_of(cluster) == set()

    await eventually(gone, timeout=10, what="the endpoint to leave Envoy")
    done = time.monotonic()
    print(
        f"pod relabelled -> slice emptied: {emptied_at - relabelled:.2f}s; "
        f"slice emptied -> endpoint gone from Envoy: {done - emptied_at:.2f}s"
    )
    assert done - emptied_at < 5, "within a push"
