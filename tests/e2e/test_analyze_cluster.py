"""`meshd analyze --kubeconfig` against the real kube-apiserver: the cluster read as `meshd serve` reads it,
problems reported as Istio analysis messages, exit 1 on errors, namespaces filtered as istioctl does."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from tests.kubeapi import KubeRest
from tests.kubereal.control_plane import ControlPlane

pytestmark = [pytest.mark.e2e, pytest.mark.asyncio(loop_scope="module")]
NS = "meshd-analyze"


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def rest(real_kube: ControlPlane) -> AsyncIterator[KubeRest]:
    client = KubeRest.from_kubeconfig(real_kube.kubeconfig)
    await client.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}})
    yield client
    await client.close()


async def _analyze(kubeconfig: object, *args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "meshd", "analyze", "--kubeconfig", str(kubeconfig), *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_a_missing_subset_in_the_cluster_is_found(rest: KubeRest, real_kube: ControlPlane) -> None:
    await rest.apply({
        "apiVersion": "v1", "kind": "Service", "metadata": {"name": "web", "namespace": NS},
        "spec": {"selector": {"app": "web"}, "ports": [{"name": "http", "port": 9080, "targetPort": 8080}]},
    })  # fmt: skip
    code, out, err = await _analyze(real_kube.kubeconfig, "-n", NS)
    assert code == 0, (out, err)
    assert f"No validation issues found when analyzing namespace {NS}" in out

    await rest.apply({
        "apiVersion": "networking.istio.io/v1", "kind": "VirtualService", "metadata": {"name": "web", "namespace": NS},
        "spec": {"hosts": ["web"], "http": [{"route": [{"destination": {"host": "web", "subset": "v9"}}]}]},
    })  # fmt: skip
    code, out, err = await _analyze(real_kube.kubeconfig, "-n", NS)
    assert code == 1, (out, err)
    assert out.startswith(f"Error [IST0101] (VirtualService {NS}/web kube:VirtualService/{NS}/web) "), out
    assert "subset 'v9' is not defined" in out

    code, out, _ = await _analyze(real_kube.kubeconfig, "-n", "some-other-namespace")
    assert code == 0 and "No validation issues" in out  # only the namespace asked for
    code, out, _ = await _analyze(real_kube.kubeconfig, "-A")
    assert code == 1 and f"VirtualService {NS}/web" in out
    await rest.delete("networking.istio.io/v1", "VirtualService", NS, "web")
