"""AuthorizationPolicy on real Envoy sidecars with real mTLS identities from meshd's CA (`meshd agent`
sidecars, bound mode): the policies of Istio's security tasks, each written as YAML and applied to `web`,
proven by what happens to requests from two callers with different identities (`client`: namespace
default, service account client; `intruder`: namespace bar, service account intruder).

CUSTOM policies use the mesh config's extension providers (`--mesh-config`): a local HTTP ext_authz
server and a gRPC one (envoy.service.auth.v3.Authorization over grpcio), both speaking the real wire
protocol, both counting the checks they answer."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
import pytest_asyncio

from tests.e2e.agents import write_ca_tokens
from tests.e2e.authz_helpers import (
    ALLOW_HEADER,
    RESULT_HEADER,
    authorization,
    converge,
    grpc_ext_authz,
    http_ext_authz,
    raw_request,
    received_paths,
    snapshot,
    stat,
)
from tests.e2e.harness import Mesh, eventually, logs_on_failure
from tests.e2e.workloads import meshed_service_yaml

pytestmark = [pytest.mark.e2e, pytest.mark.asyncio(loop_scope="module")]

CLIENT, WEB, INTRUDER, PLAIN_A, PLAIN_B, HTTP_AUTHZ, GRPC_AUTHZ = 1, 2, 3, 5, 6, 7, 8
TOKENS = {"tok-client": ("default", "client"), "tok-web": ("default", "web"), "tok-intruder": ("bar", "intruder")}
WEB_HOST = "web.default.svc.cluster.local:9080"
DENIED = "RBAC: access denied"

MESH_YAML = """\
apiVersion: v1
kind: Service
metadata: {{name: ext-authz, namespace: authz}}
spec:
  ports: [{{name: http, port: 8000}}, {{name: grpc, port: 9000}}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: ext-authz-http, namespace: authz, labels: {{kubernetes.io/service-name: ext-authz}}}}
addressType: IPv4
ports: [{{name: http, port: 8000}}]
endpoints:
- addresses: [{http_authz}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: ext-authz-grpc, namespace: authz, labels: {{kubernetes.io/service-name: ext-authz}}}}
addressType: IPv4
ports: [{{name: grpc, port: 9000}}]
endpoints:
- addresses: [{grpc_authz}]
"""

MESH_CONFIG = f"""\
extensionProviders:
- name: http-authz
  envoyExtAuthzHttp:
    service: ext-authz.authz.svc.cluster.local
    port: 8000
    pathPrefix: /check
    includeRequestHeadersInCheck: [{ALLOW_HEADER}]
    headersToUpstreamOnAllow: [{RESULT_HEADER}]
    headersToDownstreamOnDeny: [{RESULT_HEADER}]
- name: grpc-authz
  envoyExtAuthzGrpc:
    service: authz/ext-authz.authz.svc.cluster.local
    port: 9000
"""


class AuthzMesh:
    def __init__(self, mesh: Mesh) -> None:
        self.mesh = mesh
        self.http_checks: Any = None
        self.grpc_checks: Any = None

    @property
    def web(self) -> Any:
        return self.mesh.agents["web"]

    async def apply(self, yaml_text: str, policies: set[str]) -> None:
        """Replace the test policies and wait until web's Envoy holds exactly `policies`."""
        before = await snapshot(self.mesh.meshd, "web.default")
        self.mesh.write("authz.yaml", yaml_text)
        await converge(self.mesh.meshd, "web.default", policies, before=before, envoy=self.web)

    async def call(
        self, path: str = "/", *, via: int = CLIENT, method: str = "GET", headers: Any = None
    ) -> tuple[int, dict[str, str], str]:
        return await self.mesh.request(
            via_ip=self.mesh.ip(via), host=WEB_HOST, path=path, method=method, headers=headers
        )

    async def status(self, path: str = "/", **kwargs: Any) -> int:
        return (await self.call(path, **kwargs))[0]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def authz(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[AuthzMesh]:
    work = tmp_path_factory.mktemp("authz-http")
    async with logs_on_failure(Mesh(work_dir=work, delta=False)) as m:
        tokens = write_ca_tokens(work / "tokens.yaml", TOKENS)
        mesh_config = work / "mesh.yaml"
        mesh_config.write_text(MESH_CONFIG)
        m.meshd.extra_args = ("--ca-token-file", str(tokens), "--mesh-config", str(mesh_config))
        web = meshed_service_yaml("web", ip=m.ip(WEB), service_account="web")
        m.write("mesh.yaml", web + "---\n" + MESH_YAML.format(http_authz=m.ip(HTTP_AUTHZ), grpc_authz=m.ip(GRPC_AUTHZ)))
        m.write("authz.yaml", "")
        await m.meshd.start()
        out = AuthzMesh(m)
        http_runner, out.http_checks = await http_ext_authz(m.ip(HTTP_AUTHZ), 8000)
        grpc_server, out.grpc_checks = await grpc_ext_authz(m.ip(GRPC_AUTHZ), 9000)
        try:
            await m.app(service="web", version="v1", pod="web", ip=m.ip(WEB))
            await m.agent_sidecar(pod="web", ip=m.ip(WEB), service_account="web", token="tok-web")
            await m.agent_sidecar(pod="client", ip=m.ip(CLIENT), service_account="client", token="tok-client")
            await m.agent_sidecar(
                pod="intruder", ip=m.ip(INTRUDER), namespace="bar", service_account="intruder", token="tok-intruder"
            )

            async def reachable() -> bool:
                return await out.status(via=CLIENT) == 200 and await out.status(via=INTRUDER) == 200

            await eventually(reachable, timeout=30, what="both callers reaching web over mTLS")
            yield out
        finally:
            await grpc_server.stop(None)
            await http_runner.cleanup()


def app(authz: AuthzMesh) -> Any:
    return next(a for a in authz.mesh.apps if a.identity.pod == "web")


async def test_callers_are_identified_by_their_certificates(authz: AuthzMesh) -> None:
    """The premise of every principal rule: the hop to web is mTLS with each caller's own identity."""
    await authz.apply("", set())
    _, _, body = await authz.call(via=CLIENT)
    assert json.loads(body)["peer"] == "spiffe://cluster.local/ns/default/sa/client"
    _, _, body = await authz.call(via=INTRUDER)
    assert json.loads(body)["peer"] == "spiffe://cluster.local/ns/bar/sa/intruder"


async def test_allow_nothing_then_allow_get_on_some_paths(authz: AuthzMesh) -> None:
    """Istio's HTTP traffic task: `allow-nothing`, then an ALLOW for GET on /info* and /items/{*}."""
    allow_nothing = """\
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow-nothing, namespace: default}
spec: {}
"""
    await authz.apply(allow_nothing, {"default/allow-nothing"})
    status, _, body = await authz.call("/info")
    assert (status, body) == (403, DENIED)
    allow_get = (
        allow_nothing
        + """\
---
apiVersion: security.istio.io/v1beta1
kind: AuthorizationPolicy
metadata: {name: web-viewer, namespace: default}
spec:
  selector: {matchLabels: {app: web}}
  action: ALLOW
  rules:
  - to:
    - operation:
        methods: [GET]
        paths: ["/info*", "/items/{*}"]
"""
    )
    await authz.apply(allow_get, {"default/allow-nothing", "default/web-viewer"})
    assert await authz.status("/info") == 200
    assert await authz.status("/info/more") == 200
    assert await authz.status("/items/42") == 200
    assert await authz.status("/items/42/detail") == 403  # {*}: one segment
    assert await authz.status("/info", method="POST") == 403
    assert await authz.status("/other") == 403
    # deleting the policies lets everything through again
    await authz.apply("", set())
    assert await authz.status("/other", method="POST") == 200


async def test_deny_by_header_also_when_the_header_is_repeated(authz: AuthzMesh) -> None:
    deny = """\
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-bad-token, namespace: default}
spec:
  action: DENY
  rules:
  - when:
    - key: request.headers[X-Token]
      values: [bad]
"""
    await authz.apply(deny, {"default/deny-bad-token"})
    assert await authz.status(headers={"x-token": "good"}) == 200
    assert await authz.status() == 200
    status, _, body = await authz.call(headers={"x-token": "bad"})
    assert (status, body) == (403, DENIED)
    # sent twice: Envoy joins them ("good,bad"); as Istio, one of them being "bad" is enough
    twice = (("x-token", "good"), ("x-token", "bad"))
    status, _ = await raw_request(authz.mesh.ip(CLIENT), 9080, "/", authority=WEB_HOST, headers=twice)
    assert status == 403
    status, _ = await raw_request(authz.mesh.ip(CLIENT), 9080, "/", authority=WEB_HOST, headers=twice[:1] * 2)
    assert status == 200


async def test_principal_and_namespace_based_allows(authz: AuthzMesh) -> None:
    """Only mTLS peers have an identity; a principal rule allows one caller, a namespace rule the other."""
    by_principal = """\
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow-client, namespace: default}
spec:
  selector: {matchLabels: {app: web}}
  rules:
  - from: [{source: {principals: [cluster.local/ns/default/sa/client]}}]
"""
    await authz.apply(by_principal, {"default/allow-client"})
    assert await authz.status(via=CLIENT) == 200
    status, _, body = await authz.call(via=INTRUDER)
    assert (status, body) == (403, DENIED)
    by_namespace = """\
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow-bar, namespace: default}
spec:
  rules:
  - from: [{source: {namespaces: [bar]}}]
"""
    await authz.apply(by_namespace, {"default/allow-bar"})
    assert await authz.status(via=INTRUDER) == 200
    assert await authz.status(via=CLIENT) == 403
    deny_not = """\
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-others, namespace: default}
spec:
  action: DENY
  rules:
  - from: [{source: {notPrincipals: ["*/sa/client"]}}]
"""
    await authz.apply(deny_not, {"default/deny-others"})
    assert await authz.status(via=CLIENT) == 200
    assert await authz.status(via=INTRUDER) == 403
    # a plaintext caller has no principal: notPrincipals matches it, so it is denied too
    plain = f"http://{authz.mesh.ip(WEB)}:15006/"
    async with aiohttp.ClientSession() as session, session.get(plain, headers={"Host": WEB_HOST}) as resp:
        assert resp.status == 403


async def test_not_paths(authz: AuthzMesh) -> None:
    policy = """\
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow-public, namespace: default}
spec:
  rules:
  - to: [{operation: {notPaths: ["/private*"]}}]
"""
    await authz.apply(policy, {"default/allow-public"})
    assert await authz.status("/public") == 200
    assert await authz.status("/private/data") == 403
    assert "/private/data" not in received_paths(app(authz))


async def _plain_get(authz: AuthzMesh, source_host: int) -> int:
    """A caller without a sidecar, connecting from a chosen address straight to web's inbound side."""
    connector = aiohttp.TCPConnector(local_addr=(authz.mesh.ip(source_host), 0))
    async with aiohttp.ClientSession(connector=connector) as session:
        url = f"http://{authz.mesh.ip(WEB)}:15006/ip"
        async with session.get(url, headers={"Host": WEB_HOST}) as resp:
            return resp.status


async def test_ip_blocks_by_source_address(authz: AuthzMesh) -> None:
    policy = f"""\
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: allow-from-a, namespace: default}}
spec:
  rules:
  - from: [{{source: {{ipBlocks: ["{authz.mesh.ip(PLAIN_A)}/32"], notIpBlocks: ["{authz.mesh.ip(PLAIN_B)}"]}}}}]
"""
    await authz.apply(policy, {"default/allow-from-a"})
    assert await _plain_get(authz, PLAIN_A) == 200
    assert await _plain_get(authz, PLAIN_B) == 403
    assert await authz.status(via=CLIENT) == 403


async def test_dry_run_lets_traffic_through_and_counts_the_shadow_decision(authz: AuthzMesh) -> None:
    policy = """\
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: deny-headers-dry-run
  namespace: default
  annotations: {istio.io/dry-run: "true"}
spec:
  action: DENY
  rules:
  - to: [{operation: {paths: [/headers]}}]
"""
    await authz.apply(policy, {"default/deny-headers-dry-run"})
    counter = "http.inbound.rbac.istio_dry_run_deny_.shadow_denied"  # Envoy puts a dot after the prefix
    before = await stat(authz.web, counter)
    assert await authz.status("/headers") == 200
    assert await authz.status("/other") == 200

    async def counted() -> bool:
        return await stat(authz.web, counter) == before + 1

    await eventually(counted, what="the dry-run DENY counted once (for /headers only)")


async def test_custom_with_an_http_ext_authz_provider(authz: AuthzMesh) -> None:
    policy = """\
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: ext-authz-http, namespace: default}
spec:
  selector: {matchLabels: {app: web}}
  action: CUSTOM
  provider: {name: http-authz}
  rules:
  - to: [{operation: {paths: ["/admin*"]}}]
"""
    await authz.apply(policy, {"default/ext-authz-http"})
    checks = authz.http_checks.seen
    checks.clear()
    status, headers, body = await authz.call("/admin/users")
    assert (status, body) == (403, "denied by ext_authz (http)")
    assert headers.get(RESULT_HEADER) == "denied"  # headersToDownstreamOnDeny
    status, _, body = await authz.call("/admin/users", headers={ALLOW_HEADER: "allow"})
    assert status == 200
    assert json.loads(body)["request"]["headers"].get(RESULT_HEADER) == "allowed"  # headersToUpstreamOnAllow
    assert await authz.status("/public") == 200
    # only what the CUSTOM rules match is checked, under the provider's path prefix
    assert checks == [("/check/admin/users", False), ("/check/admin/users", True)]


async def test_custom_with_a_grpc_ext_authz_provider(authz: AuthzMesh) -> None:
    policy = """\
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: ext-authz-grpc, namespace: default}
spec:
  action: CUSTOM
  provider: {name: grpc-authz}
  rules:
  - from: [{source: {namespaces: [bar]}}]
"""
    await authz.apply(policy, {"default/ext-authz-grpc"})
    checks = authz.grpc_checks.seen
    checks.clear()
    status, _, body = await authz.call("/x", via=INTRUDER)
    assert (status, body) == (403, "denied by ext_authz (grpc)")
    assert await authz.status("/y", via=INTRUDER, headers={ALLOW_HEADER: "allow"}) == 200
    assert await authz.status("/z", via=CLIENT) == 200  # namespace default: not checked
    assert checks == [("/x", False), ("/y", True)]


async def test_untranslatable_policies_fail_closed_and_are_reported(authz: AuthzMesh) -> None:
    broken = """\
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-typo, namespace: default}
spec:
  action: DENY
  rules:
  - to: [{operation: {paths: [/admin], notpaths: [/admin/public]}}]
"""
    await authz.apply(broken, {"default/deny-typo"})
    status, _, body = await authz.call("/anything")
    assert (status, body) == (403, DENIED)  # the DENY policy could not be read: its workloads deny
    errors = await authz.mesh.meshd.get_json("/debug/config_errors")
    [error] = [e for e in errors if e["resource"] == "AuthorizationPolicy default/deny-typo"]
    typo = "unknown field (did you mean 'notPaths'?)"
    assert error["field"] == "spec.rules[0].to[0].operation.notpaths" and error["message"] == typo
    view = await authorization(authz.mesh.meshd, "web.default")
    assert view["policies"][0]["errors"] == [f"spec.rules[0].to[0].operation.notpaths: {typo}"]

    unknown_provider = """\
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: custom-unknown, namespace: default}
spec:
  action: CUSTOM
  provider: {name: not-in-the-mesh-config}
  rules:
  - to: [{operation: {paths: [/admin]}}]
"""
    await authz.apply(unknown_provider, {"default/custom-unknown"})
    assert await authz.status("/public") == 403
    errors = await authz.mesh.meshd.get_json("/debug/config_errors")
    [error] = [e for e in errors if e["resource"] == "AuthorizationPolicy default/custom-unknown"]
    assert error["field"] == "spec.provider.name" and "not an extension provider" in error["message"]
    metrics = await authz.mesh.meshd.metrics()
    assert any(line.startswith("meshd_config_errors") and not line.endswith(" 0.0") for line in metrics.splitlines())
    assert "event=config_rejected resource=AuthorizationPolicy default/custom-unknown" in authz.mesh.meshd.log()

    fixed = unknown_provider.replace("not-in-the-mesh-config", "http-authz").replace("custom-unknown", "custom-known")
    await authz.apply(fixed, {"default/custom-known"})
    assert await authz.status("/public") == 200


async def test_authorizationz_shows_the_effective_policies(authz: AuthzMesh) -> None:
    policies = """\
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: mesh-deny, namespace: istio-system}
spec:
  action: DENY
  rules:
  - to: [{operation: {methods: [TRACE]}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: other-workload, namespace: default}
spec:
  selector: {matchLabels: {app: not-web}}
"""
    await authz.apply(policies, {"istio-system/mesh-deny"})
    view = await authorization(authz.mesh.meshd, "web.default")
    assert view["workload"] == "default/web"
    assert view["policies"] == [
        {"policy": "istio-system/mesh-deny", "action": "DENY", "dryRun": False,
         "applies": "mesh-wide (root namespace)", "errors": []},
    ]  # fmt: skip
    assert [f["name"] for f in view["httpFilters"]] == ["envoy.filters.http.rbac.deny"]
    assert await authz.status(method="TRACE") == 403
    async with aiohttp.ClientSession() as session, session.get(authz.mesh.meshd.url("/debug/authorizationz")) as resp:
        assert resp.status == 404  # no such proxy
