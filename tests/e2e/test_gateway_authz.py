"""AuthorizationPolicy and RequestAuthentication on an ingress gateway: a real gateway Envoy (node type `router`,
labels `istio: ingressgateway` in istio-system) fed by meshd in standalone mode, a real backend behind a
Gateway and a VirtualService, written from Istio's ingress security tasks:
- DENY by path on the ingress gateway (`/admin` and its non-normalised forms), then lifted;
- allow-nothing on the gateway (every request 403), then lifted;
- a Gateway API style targetRef (`gateway.networking.k8s.io/Gateway`) attaches a policy to the gateway pods
  labelled with its name;
- JWT required on the gateway: valid 200, invalid 401, missing with `requestPrincipals` required 403;
- remoteIpBlocks with X-Forwarded-For: without trusted proxies the client address is the peer's (XFF
  ignored); with `meshConfig.defaultConfig.gatewayTopology.numTrustedProxies: 1` (the `--mesh-config` file,
  edited while meshd runs) or the gateway pod's `proxy.istio.io/config` annotation it is taken from
  X-Forwarded-For; ipBlocks always match the direct peer.
"""

from __future__ import annotations

import json
import pathlib
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
import pytest_asyncio

from tests.e2e.authz_helpers import authorization, raw_request
from tests.e2e.gateway_lab import service_yaml
from tests.e2e.harness import Mesh, eventually, logs_on_failure
from tests.jwt_tokens import SigningKey, jwks, tampered, token

pytestmark = [pytest.mark.e2e, pytest.mark.asyncio(loop_scope="module")]

GW = "istio-system"
ISSUER = "testing@secure.istio.io"
GATEWAY_POD = f"""\
apiVersion: v1
kind: Pod
metadata:
  name: istio-ingressgateway-1
  namespace: {GW}
  labels: {{istio: ingressgateway, gateway.networking.k8s.io/gateway-name: public}}
status: {{podIP: {{ip}}}}
"""
GATEWAY = """\
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: web-gateway, namespace: istio-system}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 80, name: http, protocol: HTTP}
    hosts: [web.example.com]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: web, namespace: default}
spec:
  hosts: [web.example.com]
  gateways: [istio-system/web-gateway]
  http:
  - route:
    - destination: {host: web, port: {number: 9080}}
"""


def policy(name: str, spec: dict[str, Any], *, namespace: str = GW) -> str:
    doc = {"apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
           "metadata": {"name": name, "namespace": namespace}, "spec": spec}  # fmt: skip
    return json.dumps(doc)


INGRESS = {"matchLabels": {"istio": "ingressgateway"}}


class Lab:
    def __init__(self, mesh: Mesh, mesh_config: pathlib.Path) -> None:
        self.mesh, self.mesh_config = mesh, mesh_config
        self.gateway_ip = mesh.ip(1)

    def edit_mesh_config(self, text: str) -> None:
        """Replace the mesh config file atomically (as editors and config tools do)."""
        tmp = self.mesh_config.with_suffix(".tmp")
        tmp.write_text(text)
        tmp.replace(self.mesh_config)

    def remove(self, name: str) -> None:
        (self.mesh.config_dir / name).unlink()

    async def get(self, path: str = "/", headers: dict[str, str] | None = None) -> tuple[int, str]:
        """A request through the gateway on a new connection (a listener change never waits for a pooled
        connection to drain)."""
        connector = aiohttp.TCPConnector(force_close=True)
        async with (
            aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=10)) as session,
            session.get(
                f"http://{self.gateway_ip}:80{path}", headers={"Host": "web.example.com", **(headers or {})}
            ) as resp,
        ):
            return resp.status, await resp.text()

    async def until(self, expected: dict[str, int], what: str, headers: dict[str, str] | None = None) -> None:
        """Wait until each path answers with its status."""

        async def reached() -> bool:
            return [(await self.get(path, headers))[0] for path in expected] == list(expected.values())

        await eventually(reached, timeout=30, what=what)

    async def with_headers_until(self, cases: list[tuple[dict[str, str], int]], what: str) -> None:
        async def reached() -> bool:
            return [(await self.get("/", headers))[0] for headers, _ in cases] == [status for _, status in cases]

        await eventually(reached, timeout=30, what=what)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def lab(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Lab]:
    """meshd (with a --mesh-config file it watches); the gateway Envoy at .1; the web app at .11."""
    work = tmp_path_factory.mktemp("gateway-authz")
    mesh_config = work / "meshconfig.yaml"
    mesh_config.write_text("defaultConfig: {discoveryAddress: 'meshd:15012'}\n")
    args = ("--mesh-config", str(mesh_config), "--poll-interval", "0.2")
    async with logs_on_failure(Mesh(work_dir=work, delta=False, meshd_args=args)) as m:
        await m.app(service="web", version="v1", pod="web-v1", ip=m.ip(11))
        m.write("gateway-pod.yaml", GATEWAY_POD.replace("{ip}", m.ip(1)))
        m.write("web.yaml", service_yaml("web", ips=[m.ip(11)], port=9080, target=8080))
        m.write("gateway.yaml", GATEWAY)
        await m.meshd.start()
        await m.sidecar(pod="istio-ingressgateway-1", ip=m.ip(1), namespace=GW, node_type="router")
        out = Lab(m, mesh_config)
        await out.until({"/": 200}, "web through the gateway")
        yield out


async def test_deny_by_path_on_the_ingress_gateway(lab: Lab) -> None:
    deny = {
        "selector": INGRESS,
        "action": "DENY",
        "rules": [{"to": [{"operation": {"paths": ["/admin", "/admin/*"]}}]}],
    }
    lab.mesh.write("deny-admin.yaml", policy("deny-admin", deny))
    await lab.until({"/admin": 403, "/public": 200}, "the gateway denying /admin")
    assert await lab.get("/admin/users") == (403, "RBAC: access denied")
    # the gateway normalises the path before the policy sees it (pathNormalization BASE, as Istio)
    for path in ("/./admin", "/public/../admin", "/%61dmin"):  # sent byte for byte
        assert (await raw_request(lab.gateway_ip, 80, path, authority="web.example.com"))[0] == 403, path
    # the policy applies to the gateway only through its selector: one for other labels changes nothing
    lab.mesh.write("deny-admin.yaml", policy("deny-admin", {**deny, "selector": {"matchLabels": {"istio": "egress"}}}))
    await lab.until({"/admin": 200}, "the DENY policy no longer selecting the gateway")
    lab.remove("deny-admin.yaml")


async def test_allow_nothing_on_the_gateway_and_a_gateway_target(lab: Lab) -> None:
    lab.mesh.write("allow-nothing.yaml", policy("allow-nothing", {"selector": INGRESS}))
    await lab.until({"/": 403, "/public": 403}, "allow-nothing on the gateway")
    # an ALLOW policy attached by targetRef to the Gateway the pod is labelled with lets GET through
    allow_get = {
        "targetRefs": [{"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": "public"}],
        "rules": [{"to": [{"operation": {"methods": ["GET"]}}]}],
    }
    lab.mesh.write("allow-get.yaml", policy("allow-get", allow_get))
    await lab.until({"/": 200}, "the targetRef ALLOW policy on the gateway")
    view = await authorization(lab.mesh.meshd, "istio-ingressgateway-1.istio-system")
    applies = {p["policy"]: p["applies"] for p in view["policies"]}
    assert applies == {"istio-system/allow-nothing": "selector", "istio-system/allow-get": "targetRef (gateway)"}
    assert [f["name"] for f in view["httpFilters"]] == ["envoy.filters.http.rbac.allow"]
    # one targeting another Gateway does not apply here
    allow_get["targetRefs"][0]["name"] = "other"  # type: ignore[index]
    lab.mesh.write("allow-get.yaml", policy("allow-get", allow_get))
    await lab.until({"/": 403}, "the ALLOW policy targeting another gateway")
    lab.remove("allow-get.yaml")
    lab.remove("allow-nothing.yaml")
    await lab.until({"/": 200}, "allow-nothing lifted")


async def test_jwt_required_on_the_gateway(lab: Lab) -> None:
    key = SigningKey("k1")
    authn = {"apiVersion": "security.istio.io/v1", "kind": "RequestAuthentication",
             "metadata": {"name": "ingress-jwt", "namespace": GW},
             "spec": {"selector": INGRESS, "jwtRules": [{"issuer": ISSUER, "jwks": jwks(key)}]}}  # fmt: skip
    lab.mesh.write("ingress-jwt.yaml", json.dumps(authn))
    valid = {"Authorization": f"Bearer {token(key, issuer=ISSUER, sub='alice')}"}
    invalid = {"Authorization": f"Bearer {tampered(token(key, issuer=ISSUER))}"}
    await lab.with_headers_until([(invalid, 401), (valid, 200), ({}, 200)], "jwt_authn on the gateway")
    status, body = await lab.get("/", invalid)
    assert (status, body) == (401, "Jwt verification fails")
    # requestPrincipals required: a request without a token is denied, a valid one passes
    require = {"selector": INGRESS, "rules": [{"from": [{"source": {"requestPrincipals": ["*"]}}]}]}
    lab.mesh.write("require-jwt.yaml", policy("require-jwt", require))
    await lab.with_headers_until([({}, 403), (valid, 200), (invalid, 401)], "requestPrincipals on the gateway")
    # a claims-based principal: only alice's tokens
    require["rules"][0]["from"][0]["source"]["requestPrincipals"] = [f"{ISSUER}/bob"]  # type: ignore[index]
    lab.mesh.write("require-jwt.yaml", policy("require-jwt", require))
    await lab.with_headers_until([(valid, 403)], "a requestPrincipal alice's token does not match")
    lab.remove("require-jwt.yaml")
    lab.remove("ingress-jwt.yaml")
    await lab.with_headers_until([(invalid, 200), ({}, 200)], "the gateway without JWT policies")


async def test_remote_ip_blocks_through_x_forwarded_for(lab: Lab) -> None:
    client = {"X-Forwarded-For": "203.0.113.7"}
    other = {"X-Forwarded-For": "198.51.100.1"}
    allow_remote = {"selector": INGRESS, "rules": [{"from": [{"source": {"remoteIpBlocks": ["203.0.113.0/24"]}}]}]}
    lab.mesh.write("allow-remote.yaml", policy("allow-remote", allow_remote))
    # no trusted proxy in front of the gateway: X-Forwarded-For is not believed, the client is the peer
    await lab.with_headers_until([(client, 403), (other, 403), ({}, 403)], "remoteIpBlocks without trusted proxies")
    # the mesh config (watched file) trusts one proxy: the client address comes from X-Forwarded-For
    lab.edit_mesh_config("defaultConfig:\n  gatewayTopology: {numTrustedProxies: 1}\n")
    await lab.with_headers_until([(client, 200), (other, 403), ({}, 403)], "remoteIpBlocks from X-Forwarded-For")
    # ipBlocks match the direct peer (loopback here), whatever X-Forwarded-For says
    by_peer = {"selector": INGRESS, "rules": [{"from": [{"source": {"ipBlocks": ["127.0.0.0/8"]}}]}]}
    lab.mesh.write("allow-remote.yaml", policy("allow-remote", by_peer))
    await lab.with_headers_until([(client, 200), (other, 200), ({}, 200)], "ipBlocks: the peer")
    by_forwarded = {"selector": INGRESS, "rules": [{"from": [{"source": {"ipBlocks": ["203.0.113.0/24"]}}]}]}
    lab.mesh.write("allow-remote.yaml", policy("allow-remote", by_forwarded))
    await lab.with_headers_until([(client, 403), ({}, 403)], "ipBlocks never match X-Forwarded-For")
    # a DENY on remoteIpBlocks blocks the forwarded client only
    deny = {
        "selector": INGRESS,
        "action": "DENY",
        "rules": [{"from": [{"source": {"remoteIpBlocks": ["203.0.113.7"]}}]}],
    }
    lab.mesh.write("allow-remote.yaml", policy("allow-remote", deny))
    await lab.with_headers_until([(client, 403), (other, 200), ({}, 200)], "DENY by remoteIpBlocks")
    # a bad mesh config edit keeps the last good one (XFF still trusted), with the error reported
    lab.edit_mesh_config("defaultConfig:\n  gatewayTopology: {numTrustedProxies: many}\n")

    async def reported() -> bool:
        errors = await lab.mesh.meshd.get_json("/debug/config_errors")
        return "numTrustedProxies" in json.dumps(errors)

    await eventually(reported, timeout=20, what="the invalid mesh config reported")
    assert (await lab.get("/", client))[0] == 403 and (await lab.get("/", other))[0] == 200
    lab.edit_mesh_config("defaultConfig:\n  gatewayTopology: {numTrustedProxies: 0}\n")
    await lab.with_headers_until([(client, 200), (other, 200)], "XFF no longer trusted")
    # the gateway pod's proxy.istio.io/config annotation wins over the mesh config's default
    annotated = GATEWAY_POD.replace("{ip}", lab.gateway_ip).replace(
        "status:", "  annotations: {proxy.istio.io/config: 'gatewayTopology: {numTrustedProxies: 1}'}\nstatus:"
    )
    lab.mesh.write("gateway-pod.yaml", annotated)
    await lab.with_headers_until([(client, 403), (other, 200)], "XFF trusted by the pod's annotation")
    lab.mesh.write("gateway-pod.yaml", GATEWAY_POD.replace("{ip}", lab.gateway_ip))
    lab.remove("allow-remote.yaml")
    await lab.with_headers_until([(client, 200), (other, 200)], "the policy removed")
