"""Kubernetes mode with a real kube-apiserver (tests/kubereal): AuthorizationPolicies applied through the API
server are read by meshd and enforced by the `web` sidecar.

The API server refuses loopback EndpointSlice addresses, so `web` (the app and its Envoy sidecar) runs in a
network namespace (tests/e2e/netns.py, a bridge in the host namespace); meshd listens on every address so
that sidecar reaches it over the bridge; the client sidecar stays on loopback. Scenarios:
- a DENY policy blocks what it matches (403 `RBAC: access denied`), the rest still flows;
- an edit moves the denial, a delete lifts it;
- an invalid policy (it passes the API server's schema, not meshd's validation: no webhook here) gets
  Istio-style status naming its field, and its workload fails closed until it is deleted;
- the `istio` mesh ConfigMap is a live input: rootNamespace decides which namespace's policies are
  mesh-wide, trustDomain (with trustDomainAliases) the principals web's Envoy holds."""

from __future__ import annotations

import json
import os
import pathlib
import sys
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio

from meshd.agent.bootstrap import build_bootstrap
from meshd.agent.envoy import EnvoyProcess, default_envoy_path
from tests.e2e.harness import Mesh, eventually, logs_on_failure
from tests.e2e.netns import Lab, netns_unavailable
from tests.kubeapi import KubeRest
from tests.kubereal.control_plane import ControlPlane

pytestmark = [pytest.mark.e2e, pytest.mark.asyncio(loop_scope="module")]
NS = "meshd-authz-e2e"
APP = str(pathlib.Path(__file__).with_name("netns_app.py"))
POLICY = "security.istio.io/v1"
Obj = dict[str, Any]


def objects(web_ip: str) -> list[Obj]:
    return [
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web", "namespace": NS},
         "spec": {"selector": {"app": "web"}, "ports": [{"name": "http", "port": 9080, "targetPort": 8080}]}},
        {"apiVersion": "v1", "kind": "Pod",
         "metadata": {"name": "web", "namespace": NS, "labels": {"app": "web", "security.istio.io/tlsMode": "istio"}},
         "spec": {"serviceAccountName": "web", "containers": [{"name": "app", "image": "none"}]}},
        {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
         "metadata": {"name": "web-1", "namespace": NS, "labels": {"kubernetes.io/service-name": "web"}},
         "addressType": "IPv4", "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
         "endpoints": [{"addresses": [web_ip], "conditions": {"ready": True},
                        "targetRef": {"kind": "Pod", "name": "web", "namespace": NS}}]},
    ]  # fmt: skip


def policy(name: str, spec: Obj) -> Obj:
    return {
        "apiVersion": POLICY,
        "kind": "AuthorizationPolicy",
        "metadata": {"name": name, "namespace": NS},
        "spec": spec,
    }


def deny_path(path: str) -> Obj:
    return policy("deny-path", {"action": "DENY", "rules": [{"to": [{"operation": {"paths": [path]}}]}]})


class KubeAuthz:
    def __init__(self, mesh: Mesh, rest: KubeRest) -> None:
        self.mesh, self.rest = mesh, rest

    async def status(self, path: str) -> int:
        status, _, _ = await self.mesh.request(via_ip=self.mesh.ip(1), host="web:9080", path=path, timeout=5)
        return status

    async def statuses(self, *paths: str) -> dict[str, int]:
        return {path: await self.status(path) for path in paths}

    async def until(self, expected: dict[str, int], what: str) -> None:
        async def reached() -> bool:
            return await self.statuses(*expected) == expected

        await eventually(reached, timeout=30, what=what)


def _netns_envoy(namespace: str, work: pathlib.Path) -> str:
    """An `envoy` that runs in a network namespace (EnvoyProcess execs it with Envoy's arguments)."""
    wrapper = work / "envoy-in-netns"
    wrapper.write_text(f'#!/bin/sh\nexec ip netns exec {namespace} {default_envoy_path()} "$@"\n')
    wrapper.chmod(0o755)
    return str(wrapper)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def kube(real_kube: ControlPlane, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[KubeAuthz]:
    if (why := netns_unavailable()) is not None or os.geteuid() != 0:
        pytest.skip(f"the real API server needs network-namespace app hosts: {why or 'needs root'}")
    work = tmp_path_factory.mktemp("authz-kube")
    rest = KubeRest.from_kubeconfig(real_kube.kubeconfig)
    lab = Lab(host_bridge=True)
    # every address: the client sidecar dials loopback, the web sidecar the bridge
    args = ("--kube-crd-recheck", "1", "--namespace", NS, "--xds-host", "0.0.0.0")
    mesh = Mesh(work_dir=work, delta=False, kubeconfig=real_kube.kubeconfig, meshd_args=args)
    web_envoy: EnvoyProcess | None = None
    try:
        async with logs_on_failure(mesh):
            await lab.start()
            await rest.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}})
            web = await lab.pod("web")
            proc = await lab.spawn(web, sys.executable, APP, "web", "v1", "web", "8080")
            assert proc.stdout is not None and await proc.stdout.readline() == b"ready\n"
            for obj in objects(web.ip):
                await rest.apply(obj)
            status = {"podIP": web.ip, "podIPs": [{"ip": web.ip}], "phase": "Running"}
            await rest.patch("v1", "Pod", NS, "web", {"status": status}, subresource="status")
            await mesh.meshd.start()
            node = f"sidecar~{web.ip}~web.{NS}~{NS}.svc.cluster.local"
            bootstrap = build_bootstrap(
                node_id=node, cluster=f"web.{NS}", xds_host=lab.node.ip, xds_port=mesh.meshd.xds_port,
                admin_host=web.ip, admin_port=15000, delta=False,
            )  # fmt: skip
            web_envoy = EnvoyProcess(
                bootstrap=bootstrap, work_dir=work, admin_host=web.ip, admin_port=15000, name="web",
                envoy_path=_netns_envoy(web.name, work), log_level="warning",
            )  # fmt: skip
            mesh.envoys["web"] = web_envoy
            await web_envoy.start()
            await web_envoy.wait_ready(timeout_s=30)
            await mesh.sidecar(pod="client", ip=mesh.ip(1), namespace=NS)
            out = KubeAuthz(mesh, rest)
            await out.until({"/": 200}, "traffic from the client through web's sidecar")
            yield out
    finally:
        for obj in reversed(objects("0.0.0.0")):
            await rest.delete(obj["apiVersion"], obj["kind"], NS, obj["metadata"]["name"])
        for name in ("deny-path", "deny-invalid"):
            await rest.delete(POLICY, "AuthorizationPolicy", NS, name)
        await rest.close()
        await lab.close()


async def test_a_deny_policy_applied_through_the_api_server_blocks_traffic(kube: KubeAuthz) -> None:
    await kube.rest.apply(deny_path("/private"))
    await kube.until({"/private": 403, "/public": 200}, "the DENY policy enforced by web's sidecar")
    status, _, body = await kube.mesh.request(via_ip=kube.mesh.ip(1), host="web:9080", path="/private")
    assert (status, body) == (403, "RBAC: access denied")
    # an edit moves the denial
    current = await kube.rest.get(POLICY, "AuthorizationPolicy", NS, "deny-path")
    assert current is not None
    current["spec"]["rules"][0]["to"][0]["operation"]["paths"] = ["/other"]
    await kube.rest.replace(current)
    await kube.until({"/private": 200, "/other": 403}, "the edited policy enforced")
    # a delete lifts it
    await kube.rest.delete(POLICY, "AuthorizationPolicy", NS, "deny-path")
    await kube.until({"/private": 200, "/other": 200}, "the deleted policy lifted")


async def test_an_invalid_policy_gets_status_and_its_workload_fails_closed(kube: KubeAuthz) -> None:
    invalid = policy(
        "deny-invalid",
        {"action": "DENY", "rules": [{"from": [{"source": {"ipBlocks": ["10.0.0.0/33"]}}]}]},
    )
    await kube.rest.apply(invalid)  # the API server's schema takes any string; meshd's validation does not
    await kube.until({"/public": 403}, "the invalid DENY policy failing closed")

    async def reported() -> Obj | None:
        found = await kube.rest.get(POLICY, "AuthorizationPolicy", NS, "deny-invalid")
        status = (found or {}).get("status") or {}
        return status if status.get("validationMessages") else None

    status = await eventually(reported, timeout=30, what="status written on the invalid policy")
    [message] = status["validationMessages"]
    assert message["type"]["name"] == "SchemaValidationError" and message["level"] == "ERROR"
    assert message["description"].startswith("spec.rules[0].from[0].source.ipBlocks: item 0 ('10.0.0.0/33')")
    [condition] = status["conditions"]
    assert (condition["type"], condition["status"], condition["reason"]) == ("Reconciled", "False", "Rejected")
    await kube.rest.delete(POLICY, "AuthorizationPolicy", NS, "deny-invalid")
    await kube.until({"/public": 200}, "the invalid policy deleted")


ROOT = "meshd-authz-root"


def mesh_configmap(text: str) -> Obj:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "istio", "namespace": NS},
        "data": {"mesh": text},
    }


async def _web_listeners(kube: KubeAuthz) -> str:
    dump = await kube.mesh.envoys["web"].config_dump(resource="dynamic_listeners")
    return json.dumps(dump)


async def test_the_mesh_configmap_is_a_live_input(kube: KubeAuthz) -> None:
    """Editing the `istio` ConfigMap (meshd's namespace, key `mesh`) changes which namespace is the root
    (its policies without selector become mesh-wide) and the trust domain of principals, without restart."""
    await kube.rest.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ROOT}})
    mesh_wide = policy(
        "deny-mesh-wide", {"action": "DENY", "rules": [{"to": [{"operation": {"paths": ["/mesh-wide"]}}]}]}
    )
    mesh_wide["metadata"]["namespace"] = ROOT
    by_principal = policy(
        "deny-principal",
        {"action": "DENY", "rules": [{"from": [{"source": {"principals": [f"cluster.local/ns/{NS}/sa/intruder"]}}]}]},
    )
    try:
        await kube.rest.apply(mesh_wide)
        await kube.rest.apply(by_principal)
        # the root namespace is meshd's own (no mesh config): the policy of another namespace does not apply
        await kube.until({"/mesh-wide": 200}, "a policy outside the root namespace not applied to web")
        await kube.rest.apply(mesh_configmap(f"rootNamespace: {ROOT}\n"))
        await kube.until({"/mesh-wide": 403, "/other": 200}, "the new root namespace's policy applied mesh-wide")

        # trustDomain: principals written in the old trust domain (listed as an alias) match both
        intruder = f"/ns/{NS}/sa/intruder"
        assert f"spiffe://cluster.local{intruder}" in await _web_listeners(kube)
        assert f"spiffe://td.example{intruder}" not in await _web_listeners(kube)
        await kube.rest.apply(
            mesh_configmap(f"rootNamespace: {ROOT}\ntrustDomain: td.example\ntrustDomainAliases: [cluster.local]\n")
        )

        async def both_domains() -> bool:
            held = await _web_listeners(kube)
            return f"spiffe://td.example{intruder}" in held and f"spiffe://cluster.local{intruder}" in held

        await eventually(both_domains, timeout=30, what="web's Envoy holding principals in the new trust domain")
        # a bad edit keeps the last good mesh config (the root stays), with the error reported
        await kube.rest.apply(mesh_configmap("rootNamespace: [not, a, string]\n"))

        async def reported() -> bool:
            errors = await kube.mesh.meshd.get_json("/debug/config_errors")
            return "rootNamespace: must be a string" in json.dumps(errors)

        await eventually(reported, timeout=30, what="the invalid mesh config reported")
        assert await kube.status("/mesh-wide") == 403
        # the ConfigMap deleted: meshd's namespace is the root again
        await kube.rest.delete("v1", "ConfigMap", NS, "istio")
        await kube.until({"/mesh-wide": 200}, "the root namespace back to meshd's own")
    finally:
        await kube.rest.delete("v1", "ConfigMap", NS, "istio")
        await kube.rest.delete(POLICY, "AuthorizationPolicy", ROOT, "deny-mesh-wide")
        await kube.rest.delete(POLICY, "AuthorizationPolicy", NS, "deny-principal")
