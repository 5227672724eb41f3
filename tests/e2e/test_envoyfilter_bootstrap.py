"""EnvoyFilter applyTo BOOTSTRAP through real `meshd agent` processes and real Envoys: the agent fetches the
patches from meshd and Envoy starts with them (a runtime layer seen in Envoy's /runtime, node metadata in its
bootstrap config dump), over plaintext and over mTLS xDS; an agent that does not apply them is reported on
the EnvoyFilter; a patch Envoy would refuse (a PGV rule, or a duplicate cluster only `envoy --mode validate`
sees) is reported on its EnvoyFilter by name while Envoy runs with the rest; a change reaches Envoy at its
next start, not before (as Istio: a bootstrap change needs a restart)."""

from __future__ import annotations

import json
import os
import pathlib
import signal
from collections.abc import AsyncIterator
from typing import Any

import pytest

from tests.e2e.agents import AgentProcess, write_ca_tokens
from tests.e2e.harness import Mesh, eventually, logs_on_failure

pytestmark = pytest.mark.e2e

PODS = """\
apiVersion: v1
kind: Pod
metadata: {{name: {name}, namespace: default, labels: {{app: {name}}}}}
status: {{podIP: {ip}}}
"""
RUNTIME = """\
apiVersion: networking.istio.io/v1alpha3
kind: EnvoyFilter
metadata: {{name: runtime, namespace: istio-system}}
spec:
  configPatches:
  - applyTo: BOOTSTRAP
    patch:
      operation: MERGE
      value:
        layered_runtime:
          layers:
          - name: meshd-ef
            static_layer: {{meshd.ef.bootstrap: "{value}"}}
        node: {{metadata: {{EF_PATCHED: "yes"}}}}
"""
GATEWAY_ONLY = """\
apiVersion: networking.istio.io/v1alpha3
kind: EnvoyFilter
metadata: {name: gateway-only, namespace: istio-system}
spec:
  configPatches:
  - applyTo: BOOTSTRAP
    match: {context: GATEWAY}
    patch: {operation: MERGE, value: {node: {metadata: {GATEWAY_PATCHED: "yes"}}}}
"""
BAD = """\
apiVersion: networking.istio.io/v1alpha3
kind: EnvoyFilter
metadata: {name: duplicate-cluster, namespace: default}
spec:
  workloadSelector: {labels: {app: client}}
  configPatches:
  - applyTo: BOOTSTRAP
    patch:
      operation: MERGE
      value:
        static_resources:
          clusters:
          - name: xds-grpc
            type: STATIC
            load_assignment: {cluster_name: xds-grpc}
---
apiVersion: networking.istio.io/v1alpha3
kind: EnvoyFilter
metadata: {name: unnamed-layer, namespace: default}
spec:
  workloadSelector: {labels: {app: client}}
  configPatches:
  - applyTo: BOOTSTRAP
    patch: {operation: MERGE, value: {layered_runtime: {layers: [{name: "", static_layer: {}}]}}}
"""
KEY = "meshd.ef.bootstrap"


@pytest.fixture
async def mesh(tmp_path: pathlib.Path) -> AsyncIterator[Mesh]:
    async with logs_on_failure(Mesh(work_dir=tmp_path, delta=False)) as m:
        m.meshd.extra_args = (
            "--ca-token-file",
            str(write_ca_tokens(tmp_path / "tokens.yaml", {"tok": ("default", "client")})),
        )
        pods = [PODS.format(name=name, ip=m.ip(n)) for n, name in ((1, "client"), (2, "plain"))]
        m.write("pods.yaml", "---\n".join(pods))
        m.write("runtime.yaml", RUNTIME.format(value="v1"))
        m.write("gateway-only.yaml", GATEWAY_ONLY)
        await m.meshd.start()
        yield m


async def _runtime(agent: AgentProcess) -> dict[str, Any]:
    entries: dict[str, Any] = json.loads(await agent.admin_get("/runtime"))["entries"]
    return entries


async def _bootstrap(agent: AgentProcess) -> dict[str, Any]:
    """The bootstrap Envoy runs with (its config dump's BootstrapConfigDump)."""
    dump = json.loads(await agent.admin_get("/config_dump"))
    found: dict[str, Any] = next(c for c in dump["configs"] if c["@type"].endswith("BootstrapConfigDump"))["bootstrap"]
    return found


async def _node_metadata(agent: AgentProcess) -> dict[str, Any]:
    metadata: dict[str, Any] = (await _bootstrap(agent))["node"]["metadata"]
    return metadata


async def _client(mesh: Mesh) -> AgentProcess:
    agent: AgentProcess = await mesh.agent_sidecar(
        pod="client", ip=mesh.ip(1), labels={"app": "client"}, args=("--bootstrap-patches",)
    )
    return agent


async def _errors_on(mesh: Mesh, resource: str) -> list[str]:
    return [e["message"] for e in await mesh.meshd.get_json("/debug/config_errors") if e["resource"] == resource]


async def test_envoy_starts_with_the_patches_and_an_agent_without_them_is_reported(mesh: Mesh) -> None:
    agent = await mesh.agent_sidecar(
        pod="client", ip=mesh.ip(1), labels={"app": "client"}, args=("--bootstrap-patches",)
    )
    assert (await _runtime(agent))[KEY]["final_value"] == "v1"
    metadata = await _node_metadata(agent)
    assert metadata["EF_PATCHED"] == "yes" and metadata["NAMESPACE"] == "default"  # merged by key
    assert "GATEWAY_PATCHED" not in metadata  # context GATEWAY: routers only
    assert (await agent.status())["bootstrap_patches"]["applied"] == ["0/istio-system/runtime/0"]
    assert not await _errors_on(mesh, "EnvoyFilter istio-system/runtime")

    # an agent that does not apply bootstrap patches: Envoy has none, and the EnvoyFilter says so
    plain = await mesh.agent_sidecar(pod="plain", ip=mesh.ip(2), labels={"app": "plain"})
    assert KEY not in await _runtime(plain)

    async def reported() -> list[str]:
        found = await _errors_on(mesh, "EnvoyFilter istio-system/runtime")
        assert found and "does not apply bootstrap patches" in found[0], found
        return found

    await eventually(reported, what="the proxy the patch cannot reach to be reported")


async def test_a_router_gets_the_gateway_patches(mesh: Mesh) -> None:
    router = await mesh.agent_sidecar(
        pod="gw",
        ip=mesh.ip(3),
        labels={"istio": "ingressgateway"},
        args=("--bootstrap-patches", "--proxy-type", "router"),
    )
    metadata = await _node_metadata(router)
    assert metadata["GATEWAY_PATCHED"] == "yes" and metadata["EF_PATCHED"] == "yes"


async def test_refused_patches_are_reported_by_name_and_envoy_runs_with_the_rest_over_mtls(mesh: Mesh) -> None:
    mesh.write("bad.yaml", BAD)
    agent = await mesh.agent_sidecar(
        pod="client", ip=mesh.ip(1), labels={"app": "client"}, service_account="client", token="tok",
        args=("--bootstrap-patches",),
    )  # fmt: skip
    # the good patch applied, the bad ones not: one static xds-grpc cluster, no unnamed runtime layer
    assert (await _runtime(agent))[KEY]["final_value"] == "v1"
    dump = json.loads(await agent.admin_get("/config_dump?resource=static_clusters"))
    assert [c["cluster"]["name"] for c in dump["configs"]].count("xds-grpc") == 1
    layers = [layer["name"] for layer in (await _bootstrap(agent))["layered_runtime"]["layers"]]
    assert layers == ["static", "admin", "meshd-ef"]
    refused = {r["envoyfilter"]: r["error"] for r in (await agent.status())["bootstrap_patches"]["refused"]}
    assert set(refused) == {"default/duplicate-cluster", "default/unnamed-layer"}, refused

    async def reported() -> bool:
        duplicate = await _errors_on(mesh, "EnvoyFilter default/duplicate-cluster")
        assert duplicate and "the node agent rejected bootstrap patch '1/default/duplicate-cluster/0'" in duplicate[0]
        assert "xds-grpc" in duplicate[0], duplicate  # Envoy's own words (envoy --mode validate)
        unnamed = await _errors_on(mesh, "EnvoyFilter default/unnamed-layer")
        assert unnamed and "layered_runtime.layers[3].name" in unnamed[0], unnamed  # the PGV check
        assert not await _errors_on(mesh, "EnvoyFilter istio-system/runtime")
        return True

    await eventually(reported, what="the refused bootstrap patches to be reported on their EnvoyFilters")


async def test_a_change_reaches_envoy_at_its_next_start(mesh: Mesh) -> None:
    agent = await mesh.agent_sidecar(
        pod="client", ip=mesh.ip(1), labels={"app": "client"}, args=("--bootstrap-patches",)
    )
    assert (await _runtime(agent))[KEY]["final_value"] == "v1"
    pid = (await agent.status())["envoy"]["pid"]
    mesh.write("runtime.yaml", RUNTIME.format(value="v2"))

    async def noticed() -> bool:
        return "note=used_from_envoy_next_start" in agent.log()

    await eventually(noticed, what="the agent to receive the changed patch")
    assert (await _runtime(agent))[KEY]["final_value"] == "v1"  # the running Envoy keeps its bootstrap
    os.kill(pid, signal.SIGKILL)  # the supervisor starts Envoy again: with the new patch

    async def restarted() -> bool:
        status = await agent.status()
        if status["envoy"]["pid"] in (None, pid):
            return False
        try:
            return bool((await _runtime(agent))[KEY]["final_value"] == "v2")
        except (AssertionError, OSError):
            return False

    await eventually(restarted, timeout=60, what="Envoy restarted with the changed bootstrap patch")
