"""A Gateway API HTTPS listener whose certificateRef is a Secret of another namespace, through a real gateway
Envoy fed by meshd (standalone from YAML, the gateway on the secure xDS port with an identity of its own
namespace): nothing is served on the listener until a ReferenceGrant in the Secret's namespace lets Gateways of
the gateway's namespace use it (RefNotPermitted in /debug/config_errors); then real TLS with that Secret's
certificate; and nothing again once the grant is gone (fails closed)."""

from __future__ import annotations

import json
import ssl
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio

from tests.certs import Authority
from tests.e2e.agents import write_ca_tokens
from tests.e2e.gateway_lab import client_context, common_name, https_get, secret_yaml
from tests.e2e.harness import Mesh, eventually, logs_on_failure

pytestmark = [pytest.mark.e2e, pytest.mark.asyncio(loop_scope="module")]

GW_NS = "istio-ingress"
CERT_NS = "certs"
CONFIG = f"""\
apiVersion: v1
kind: Pod
metadata: {{name: gw-1, namespace: {GW_NS}, labels: {{gateway.networking.k8s.io/gateway-name: gw}}}}
status: {{podIP: {{ip}}}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: gw, namespace: {GW_NS}}}
spec:
  gatewayClassName: istio
  listeners:
  - name: https
    port: 443
    protocol: HTTPS
    hostname: shared.example.com
    tls: {{mode: Terminate, certificateRefs: [{{name: shared-cert, namespace: {CERT_NS}}}]}}
    allowedRoutes: {{namespaces: {{from: All}}}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: web, namespace: default}}
spec:
  parentRefs: [{{name: gw, namespace: {GW_NS}}}]
  rules: [{{backendRefs: [{{name: web, port: 80}}]}}]
---
apiVersion: v1
kind: Service
metadata: {{name: web, namespace: default}}
spec:
  ports: [{{name: http, port: 80, targetPort: 8080}}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: web-1, namespace: default, labels: {{kubernetes.io/service-name: web}}}}
addressType: IPv4
ports: [{{name: http, port: 8080}}]
endpoints: [{{addresses: [{{web_ip}}]}}]
"""

GRANT = f"""\
apiVersion: gateway.networking.k8s.io/v1beta1
kind: ReferenceGrant
metadata: {{name: gateways-read-certs, namespace: {CERT_NS}}}
spec:
  from: [{{group: gateway.networking.k8s.io, kind: Gateway, namespace: {GW_NS}}}]
  to: [{{group: "", kind: Secret, name: shared-cert}}]
"""


class Lab:
    def __init__(self, mesh: Mesh, ca: Authority) -> None:
        self.mesh, self.tls = mesh, client_context(ca)

    async def get(self) -> tuple[int, Any, Any] | None:
        """The answer over HTTPS, or None when the gateway serves no TLS there."""
        try:
            return await https_get(self.mesh.ip(1), 443, sni="shared.example.com", path="/c", tls=self.tls)
        except (OSError, ssl.SSLError):
            return None


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def lab(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Lab]:
    """meshd; a gateway Envoy (router, istio-ingress) at .1; the web app at .11; the Secret in `certs`."""
    work = tmp_path_factory.mktemp("gateway-api-certs")
    ca = Authority("gateway api certs test CA")
    tokens = write_ca_tokens(work / "tokens.yaml", {"tok-gw": (GW_NS, "gw-istio")})
    mesh = Mesh(work_dir=work, delta=True, meshd_args=("--ca-token-file", str(tokens)))
    async with logs_on_failure(mesh) as m:
        await m.app(service="web", version="v1", pod="web-v1", ip=m.ip(11))
        m.write("config.yaml", CONFIG.replace("{ip}", m.ip(1)).replace("{web_ip}", m.ip(11)))
        pem = ca.issue("shared.example.com", sans=("shared.example.com",))
        m.write("secret.yaml", secret_yaml("shared-cert", CERT_NS, {"tls.crt": pem.cert, "tls.key": pem.key},
                                           kind="kubernetes.io/tls"))  # fmt: skip
        await m.meshd.start()
        await m.sidecar(pod="gw-1", ip=m.ip(1), namespace=GW_NS, token="tok-gw", node_type="router")
        yield Lab(m, ca)


async def test_a_secret_of_another_namespace_is_served_only_under_a_reference_grant(lab: Lab) -> None:
    # no grant: the listener is not served (nothing listens on 443), and meshd says why
    async def refused() -> bool:
        errors = json.dumps(await lab.mesh.meshd.get_json("/debug/config_errors"))
        return "RefNotPermitted" in errors and "certs/shared-cert" in errors

    await eventually(refused, timeout=30, what="RefNotPermitted for the certificateRef")
    assert await lab.get() is None
    lab.mesh.write("grant.yaml", GRANT)
    status, body, cert = await eventually(lab.get, timeout=30, what="HTTPS once the ReferenceGrant allows the Secret")
    assert status == 200 and body["service"] == "web" and common_name(cert) == "shared.example.com"
    # the grant withdrawn: closed again
    (lab.mesh.config_dir / "grant.yaml").unlink()

    async def closed() -> bool:
        return await lab.get() is None

    await eventually(closed, timeout=30, what="no TLS once the ReferenceGrant is gone")
