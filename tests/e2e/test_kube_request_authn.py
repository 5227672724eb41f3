"""RequestAuthentication in Kubernetes mode against a real kube-apiserver (tests/kubereal; skipped without
KUBEBUILDER_ASSETS or network namespaces): the workload is a network-namespace host (a real API server refuses
loopback endpoints) running the app and a real Envoy sidecar fed by `meshd serve --kubeconfig`. A
RequestAuthentication applied through the API server (the chart's strict CRD) turns on jwt_authn: an invalid
token gets 401, a valid one reaches the app with its payload; a rule meshd cannot give keys to, and a spec
the CRD admits but meshd refuses (kept to fail closed), are on the objects' status, written by the leader."""

from __future__ import annotations

import json
import pathlib
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest

from meshd.agent.bootstrap import build_bootstrap
from meshd.agent.envoy import default_envoy_path
from tests.e2e.harness import Meshd, eventually, free_port
from tests.e2e.netns import Lab, Namespace, netns_unavailable
from tests.jwt_tokens import SigningKey, decode_payload, jwks, tampered, token
from tests.kubeapi import KubeRest
from tests.kubereal.control_plane import ControlPlane

pytestmark = pytest.mark.e2e
NS = "meshd-jwt"
APP = str(pathlib.Path(__file__).with_name("netns_app.py"))
KEY = SigningKey("kube-key")
ISSUER = "https://issuer.kube.example"


def objects(ip: str) -> list[dict[str, Any]]:
    return [
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "web", "namespace": NS},
            "spec": {"selector": {"app": "web"}, "ports": [{"name": "http", "port": 9080, "targetPort": 8080}]},
        },
        {
            "apiVersion": "discovery.k8s.io/v1",
            "kind": "EndpointSlice",
            "metadata": {"name": "web-1", "namespace": NS, "labels": {"kubernetes.io/service-name": "web"}},
            "addressType": "IPv4",
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
            "endpoints": [{"addresses": [ip], "targetRef": {"kind": "Pod", "name": "web", "namespace": NS}}],
        },
    ]


def request_authentication(name: str, rule: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "security.istio.io/v1",
        "kind": "RequestAuthentication",
        "metadata": {"name": name, "namespace": NS},
        "spec": {"selector": {"matchLabels": {"app": "web"}}, "jwtRules": [rule]},
    }


@dataclass
class Workload:
    meshd: Meshd
    rest: KubeRest
    pod: Namespace

    async def call(self, jwt: str | None) -> tuple[int, dict[str, str]]:
        headers = {"Host": "web:9080"} | ({"Authorization": f"Bearer {jwt}"} if jwt else {})
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session,
            session.get(f"http://{self.pod.ip}:15006/", headers=headers) as resp,
        ):
            body = await resp.text()
        try:
            return resp.status, json.loads(body)["request"]["headers"]
        except (ValueError, KeyError, TypeError):
            return resp.status, {}


async def _sidecar(lab: Lab, pod: Namespace, work: pathlib.Path, xds_port: int) -> None:
    """A real Envoy in the pod's namespace, bound to its address (no capture), fed over the host bridge."""
    bootstrap = build_bootstrap(
        node_id=f"sidecar~{pod.ip}~web.{NS}~{NS}.svc.cluster.local",
        cluster=f"web.{NS}",
        xds_host=lab.node.ip,
        xds_port=xds_port,
        admin_host=pod.ip,
        admin_port=15000,
        delta=False,
    )
    path = work / "web-envoy.json"
    path.write_text(json.dumps(bootstrap))
    envoy = (default_envoy_path(), "-c", str(path), "--disable-hot-restart", "--concurrency", "1", "-l", "warning")
    await lab.spawn(pod, *envoy)


@pytest.fixture
async def workload(real_kube: ControlPlane, tmp_path: pathlib.Path) -> AsyncIterator[Workload]:
    if (why := netns_unavailable()) is not None:
        pytest.skip(f"the real API server needs network-namespace app hosts: {why}")
    rest = KubeRest.from_kubeconfig(real_kube.kubeconfig)
    lab = Lab(host_bridge=True)
    meshd = Meshd(
        log_path=tmp_path / "meshd.log",
        kubeconfig=real_kube.kubeconfig,
        extra_args=("--namespace", NS, "--xds-host", "0.0.0.0", "--webhook-port", str(free_port()),
                    "--status-interval", "0.2"),
    )  # fmt: skip
    try:
        await rest.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}})
        await lab.start()
        pod = await lab.pod("jwt-web")
        proc = await lab.spawn(pod, sys.executable, APP, "web", "v1", "web", "8080")
        assert proc.stdout is not None and await proc.stdout.readline() == b"ready\n"
        pod_doc = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "web", "namespace": NS, "labels": {"app": "web"}},
            "spec": {"serviceAccountName": "web", "containers": [{"name": "app", "image": "none"}]},
        }
        if await rest.get("v1", "Pod", NS, "web") is None:
            await rest.create(pod_doc)
        status = {"podIP": pod.ip, "podIPs": [{"ip": pod.ip}], "phase": "Running"}
        await rest.patch("v1", "Pod", NS, "web", {"status": status}, subresource="status")
        for obj in objects(pod.ip):
            await rest.apply(obj)
        await meshd.start()
        await _sidecar(lab, pod, tmp_path, meshd.xds_port)
        yield Workload(meshd, rest, pod)
    except BaseException:
        print(f"----- meshd log -----\n{meshd.log()[-6000:]}")
        raise
    finally:
        for kind, name in (("RequestAuthentication", n) for n in ("web", "no-keys", "broken")):
            await rest.delete("security.istio.io/v1", kind, NS, name)
        for obj in objects(""):
            await rest.delete(obj["apiVersion"], obj["kind"], NS, obj["metadata"]["name"])
        await rest.delete("v1", "Pod", NS, "web")
        await meshd.close()
        await rest.close()
        await lab.close()


async def test_request_authentication_applied_through_the_api_server(workload: Workload) -> None:
    good = token(KEY, issuer=ISSUER, sub="kube-user")

    async def answers(jwt: str | None, expected: int) -> bool:
        return (await workload.call(jwt))[0] == expected

    await eventually(lambda: answers(tampered(good), 200), timeout=30, what="the sidecar serving web, no JWT check")

    rule = {"issuer": ISSUER, "jwks": jwks(KEY), "outputPayloadToHeader": "x-jwt-payload"}
    await workload.rest.apply(request_authentication("web", rule))
    await eventually(lambda: answers(tampered(good), 401), timeout=30, what="an invalid token rejected with 401")
    status, seen = await workload.call(good)
    assert status == 200 and decode_payload(seen["x-jwt-payload"])["sub"] == "kube-user", seen
    assert await answers(None, 200)  # no token: authentication passes

    # a rule with nowhere to take keys from: on the object's status (the leader writes it), its tokens rejected
    await workload.rest.apply(request_authentication("no-keys", {"issuer": "someone@example.com"}))

    async def rejected_status() -> list[Any]:
        obj = await workload.rest.get("security.istio.io/v1", "RequestAuthentication", NS, "no-keys")
        messages: list[Any] = ((obj or {}).get("status") or {}).get("validationMessages") or []
        return messages

    messages = await eventually(rejected_status, timeout=30, what="the status of the RequestAuthentication")
    assert "every token of this rule is rejected" in messages[0]["description"], messages
    assert messages[0]["level"] == "ERROR"
    assert await answers(token(KEY, issuer="someone@example.com"), 401)
    assert await answers(good, 200)

    # a spec the CRD admits but meshd refuses (no webhook here): on its status, and it fails closed
    broken = request_authentication("broken", {"issuer": "https://b.example", "fromHeaders": [{"name": "x y"}]})
    await workload.rest.apply(broken)

    async def broken_status() -> list[Any]:
        obj = await workload.rest.get("security.istio.io/v1", "RequestAuthentication", NS, "broken")
        messages: list[Any] = ((obj or {}).get("status") or {}).get("validationMessages") or []
        return messages

    messages = await eventually(broken_status, timeout=30, what="the refused RequestAuthentication's status")
    assert "spec.jwtRules[0].fromHeaders[0].name" in messages[0]["description"], messages
    assert await answers(token(KEY, issuer="https://b.example"), 401)
    assert await answers(good, 200)  # the valid policy's tokens still verify
