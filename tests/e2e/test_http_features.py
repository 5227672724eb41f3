"""Every VirtualService HTTP feature proven through real Envoy: one mesh for the module (meshd, two
client sidecars with different labels, `web` v1/v2 and `shadow` apps); each test writes its own
VirtualService and waits until the client's Envoy holds it, then asserts what happened to requests."""

from __future__ import annotations

import asyncio
import itertools
import json
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio

from tests.e2e.harness import Mesh, eventually, logs_on_failure

pytestmark = [pytest.mark.e2e, pytest.mark.asyncio(loop_scope="module")]

MESH = """\
apiVersion: v1
kind: Service
metadata: {{name: web, namespace: default}}
spec:
  ports: [{{name: http, port: 9080, targetPort: 8080}}]
---
apiVersion: v1
kind: Service
metadata: {{name: shadow, namespace: default}}
spec:
  ports: [{{name: http, port: 9080, targetPort: 8080}}]
---
apiVersion: v1
kind: Pod
metadata: {{name: client, namespace: default, labels: {{app: client, tier: gold}}}}
status: {{podIP: {client}}}
---
apiVersion: v1
kind: Pod
metadata: {{name: client2, namespace: default, labels: {{app: client, tier: basic}}}}
status: {{podIP: {client2}}}
---
apiVersion: v1
kind: Pod
metadata: {{name: web-v1, namespace: default, labels: {{app: web, version: v1}}}}
status: {{podIP: {v1}}}
---
apiVersion: v1
kind: Pod
metadata: {{name: web-v2, namespace: default, labels: {{app: web, version: v2}}}}
status: {{podIP: {v2}}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: web, namespace: default, labels: {{kubernetes.io/service-name: web}}}}
addressType: IPv4
ports: [{{name: http, port: 8080}}]
endpoints:
- addresses: [{v1}]
  targetRef: {{kind: Pod, name: web-v1, namespace: default}}
- addresses: [{v2}]
  targetRef: {{kind: Pod, name: web-v2, namespace: default}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: shadow, namespace: default, labels: {{kubernetes.io/service-name: shadow}}}}
addressType: IPv4
ports: [{{name: http, port: 8080}}]
endpoints:
- addresses: [{shadow}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: web, namespace: default}}
spec:
  host: web
  subsets:
  - {{name: v1, labels: {{version: v1}}}}
  - {{name: v2, labels: {{version: v2}}}}
"""
CLIENT, CLIENT2, V1, V2, SHADOW = 1, 4, 2, 3, 5
_markers = itertools.count()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def mesh(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Mesh]:
    async with logs_on_failure(Mesh(work_dir=tmp_path_factory.mktemp("http-features"), delta=False)) as m:
        ips = {"client": m.ip(CLIENT), "client2": m.ip(CLIENT2), "v1": m.ip(V1), "v2": m.ip(V2), "shadow": m.ip(SHADOW)}
        m.write("mesh.yaml", MESH.format(**ips))
        await m.meshd.start()
        await m.app(service="web", version="v1", pod="web-v1", ip=ips["v1"])
        await m.app(service="web", version="v2", pod="web-v2", ip=ips["v2"])
        await m.app(service="shadow", version="v1", pod="shadow", ip=ips["shadow"])
        await m.sidecar(pod="client", ip=ips["client"])
        await m.sidecar(pod="client2", ip=ips["client2"])
        yield m


def app(mesh: Mesh, pod: str) -> Any:
    return next(a for a in mesh.apps if a.identity.pod == pod)


async def apply_vs(mesh: Mesh, http: str, *, name: str = "web", clients: tuple[str, ...] = ("client",)) -> str:
    """Write VirtualService `name` for web and wait until the clients' Envoys hold it. `http` is the
    YAML list under `http:`; each of its items (lines starting with `- `) is named by a fresh marker."""
    marker = f"m{next(_markers)}"
    body = "\n".join(
        line.replace("- ", f"- name: {marker}\n  ", 1) if line.startswith("- ") else line
        for line in http.strip("\n").splitlines()
    )
    mesh.write(f"{name}.yaml", f"""\
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: {name}, namespace: default}}
spec:
  hosts: [web]
  http:
{_indent(body, 2)}
""")  # fmt: skip
    for client in clients:
        await eventually(lambda c=client: _holds(mesh, c, marker), what=f"{client} to hold route {marker}")
    return marker


def _indent(text: str, n: int) -> str:
    return "\n".join(" " * n + line for line in text.splitlines())


async def _holds(mesh: Mesh, client: str, marker: str) -> bool:
    dump = await mesh.envoys[client].config_dump(resource="dynamic_route_configs")
    return f'"{marker}' in json.dumps(dump)


async def get(
    mesh: Mesh, path: str = "/", *, via: int = CLIENT, method: str = "GET", headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], str]:
    return await mesh.request(via_ip=mesh.ip(via), host="web:9080", path=path, method=method, headers=headers)


async def version(mesh: Mesh, path: str = "/", **kw: Any) -> str:
    status, _, body = await get(mesh, path, **kw)
    return json.loads(body)["version"] if status == 200 else f"status-{status}"


# -- match -----------------------------------------------------------------------------------------


async def test_match_fields_pick_the_version(mesh: Mesh) -> None:
    await apply_vs(
        mesh,
        """\
- match: [{headers: {end-user: {exact: jason}}}]
  route: [{destination: {host: web, subset: v2}}]
- match: [{queryParams: {canary: {exact: "yes"}}}]
  route: [{destination: {host: web, subset: v2}}]
- match: [{method: {exact: DELETE}}]
  route: [{destination: {host: web, subset: v2}}]
- match: [{uri: {prefix: /v2/}}]
  route: [{destination: {host: web, subset: v2}}]
- match: [{uri: {regex: "/items/[0-9]+"}}]
  route: [{destination: {host: web, subset: v2}}]
- match: [{headers: {x-beta: {}}, withoutHeaders: {x-opt-out: {}}}]
  route: [{destination: {host: web, subset: v2}}]
- match: [{uri: {exact: /CASE}, ignoreUriCase: true}]
  route: [{destination: {host: web, subset: v2}}]
- match: [{authority: {prefix: web.default}, scheme: {exact: http}}]
  route: [{destination: {host: web, subset: v2}}]
- match: [{scheme: {exact: https}}]
  route: [{destination: {host: web, subset: v2}}]
- route: [{destination: {host: web, subset: v1}}]
""",
    )
    assert await version(mesh, headers={"end-user": "jason"}) == "v2"
    assert await version(mesh, headers={"end-user": "jasonx"}) == "v1"
    assert await version(mesh, "/?canary=yes") == "v2"
    assert await version(mesh, "/?canary=no") == "v1"
    assert await version(mesh, method="DELETE") == "v2"
    assert await version(mesh, method="PUT") == "v1"
    assert await version(mesh, "/v2/page") == "v2"
    assert await version(mesh, "/v2x") == "v1"
    assert await version(mesh, "/items/42") == "v2"
    assert await version(mesh, "/items/x") == "v1"
    assert await version(mesh, headers={"x-beta": "1"}) == "v2"
    assert await version(mesh, headers={"x-beta": "1", "x-opt-out": "1"}) == "v1"
    assert await version(mesh, "/case") == "v2"
    _, _, body = await mesh.request(via_ip=mesh.ip(CLIENT), host="web.default:9080", path="/")
    assert json.loads(body)["version"] == "v2"  # authority (and scheme http)
    assert await version(mesh) == "v1"  # neither web.default nor https


async def test_source_labels_give_each_client_its_own_routes(mesh: Mesh) -> None:
    await apply_vs(
        mesh,
        """\
- match: [{sourceLabels: {tier: gold}}]
  route: [{destination: {host: web, subset: v2}}]
- route: [{destination: {host: web, subset: v1}}]
""",
        clients=("client", "client2"),
    )
    assert {await version(mesh, via=CLIENT) for _ in range(10)} == {"v2"}
    assert {await version(mesh, via=CLIENT2) for _ in range(10)} == {"v1"}


# -- fault, retries, timeout --------------------------------------------------------------------------


async def test_fault_abort_returns_the_status_at_its_percentage(mesh: Mesh) -> None:
    await apply_vs(
        mesh,
        """\
- match: [{uri: {prefix: /grpc}}]
  fault: {abort: {grpcStatus: UNAVAILABLE, percentage: {value: 100}}}
  route: [{destination: {host: web, subset: v1}}]
- fault: {abort: {httpStatus: 418, percentage: {value: 50}}}
  route: [{destination: {host: web, subset: v1}}]
""",
    )
    statuses = Counter([(await get(mesh))[0] for _ in range(200)])
    assert set(statuses) == {200, 418}, statuses
    assert 0.35 <= statuses[418] / 200 <= 0.65, statuses
    _, headers, _ = await get(mesh, "/grpc", method="POST", headers={"content-type": "application/grpc"})
    assert headers.get("grpc-status") == "14", headers


async def test_fault_delay_adds_the_delay(mesh: Mesh) -> None:
    await apply_vs(
        mesh,
        """\
- match: [{uri: {prefix: /slow}}]
  fault: {delay: {fixedDelay: 800ms, percentage: {value: 100}}}
  route: [{destination: {host: web, subset: v1}}]
- route: [{destination: {host: web, subset: v1}}]
""",
    )
    loop = asyncio.get_running_loop()
    started = loop.time()
    assert (await get(mesh, "/slow"))[0] == 200
    delayed = loop.time() - started
    started = loop.time()
    assert (await get(mesh, "/fast"))[0] == 200
    direct = loop.time() - started
    assert delayed >= 0.75 and direct < 0.4, (delayed, direct)


async def test_retries_recover_from_a_failed_first_attempt_and_none_means_none(mesh: Mesh) -> None:
    await apply_vs(
        mesh,
        """\
- match: [{uri: {prefix: /retry}}]
  retries: {attempts: 3, retryOn: "503"}
  route: [{destination: {host: web, subset: v1}}]
- match: [{uri: {prefix: /once}}]
  retries: {attempts: 0}
  route: [{destination: {host: web, subset: v1}}]
""",
    )
    status, _, body = await get(mesh, "/retry?fail_once=r1")
    assert status == 200 and json.loads(body)["version"] == "v1"
    assert [r["path"] for r in app(mesh, "web-v1").received].count("/retry?fail_once=r1") == 2
    assert (await get(mesh, "/once?fail_once=r2"))[0] == 503


async def test_timeout_answers_504_on_a_slow_backend(mesh: Mesh) -> None:
    await apply_vs(
        mesh,
        """\
- match: [{uri: {prefix: /bounded}}]
  timeout: 300ms
  route: [{destination: {host: web, subset: v1}}]
- route: [{destination: {host: web, subset: v1}}]
""",
    )
    loop = asyncio.get_running_loop()
    started = loop.time()
    assert (await get(mesh, "/bounded?delay_ms=1500"))[0] == 504
    assert loop.time() - started < 1.2
    assert (await get(mesh, "/unbounded?delay_ms=500"))[0] == 200  # no timeout by default


# -- mirror, rewrite, redirect, direct response, CORS, headers -----------------------------------


async def test_mirror_copies_requests_to_the_shadow_while_the_primary_answers(mesh: Mesh) -> None:
    await apply_vs(
        mesh,
        """\
- route: [{destination: {host: web, subset: v1}}]
  mirror: {host: shadow}
  mirrorPercentage: {value: 100}
""",
    )
    for i in range(5):
        status, _, body = await get(mesh, f"/mirrored/{i}")
        assert status == 200 and json.loads(body)["service"] == "web"
    shadow = app(mesh, "shadow")

    async def copies() -> list[dict[str, Any]]:
        found = [r for r in shadow.received if r["path"].startswith("/mirrored/")]
        return found if len(found) == 5 else []

    found = await eventually(copies, what="5 mirrored requests at the shadow")
    assert all(r["host"].split(":")[0] == "web-shadow" for r in found), found  # Envoy marks copies


async def test_rewrite_changes_what_the_backend_sees(mesh: Mesh) -> None:
    await apply_vs(
        mesh,
        """\
- match: [{uri: {prefix: /old/}}]
  rewrite: {uri: /new/, authority: rewritten.example}
  route: [{destination: {host: web, subset: v1}}]
- match: [{uri: {regex: "/users/[0-9]+"}}]
  rewrite: {uriRegexRewrite: {match: "/users/([0-9]+)", rewrite: '/u/\\1'}}
  route: [{destination: {host: web, subset: v1}}]
""",
    )
    _, _, body = await get(mesh, "/old/page")
    seen = json.loads(body)["request"]
    assert seen["path"] == "/new/page" and seen["host"] == "rewritten.example", seen
    _, _, body = await get(mesh, "/users/7")
    assert json.loads(body)["request"]["path"] == "/u/7"


async def test_redirect_and_direct_response_answer_without_a_backend(mesh: Mesh) -> None:
    await apply_vs(
        mesh,
        """\
- match: [{uri: {exact: /go}}]
  redirect: {uri: /there, authority: other.example, redirectCode: 302}
- match: [{uri: {exact: /tea}}]
  directResponse: {status: 418, body: {string: "100% teapot"}}
- route: [{destination: {host: web, subset: v1}}]
""",
    )
    before = len(app(mesh, "web-v1").received)
    status, headers, _ = await get(mesh, "/go")
    assert (
        status == 302
        and headers["location"].startswith("http://other.example")
        and headers["location"].endswith("/there")
    ), headers
    status, _, body = await get(mesh, "/tea")
    assert (status, body) == (418, "100% teapot")
    assert len(app(mesh, "web-v1").received) == before


async def test_cors_preflight_gets_the_allow_headers_only_for_allowed_origins(mesh: Mesh) -> None:
    await apply_vs(
        mesh,
        """\
- corsPolicy:
    allowOrigins: [{exact: "https://good.example"}, {prefix: "https://dev."}]
    allowMethods: [GET, POST]
    allowHeaders: [x-custom]
    exposeHeaders: [x-trace]
    maxAge: 2m
    allowCredentials: true
  route: [{destination: {host: web, subset: v1}}]
""",
    )
    preflight = {"origin": "https://good.example", "access-control-request-method": "POST"}
    status, headers, _ = await get(mesh, "/api", method="OPTIONS", headers=preflight)
    assert status == 200, headers
    assert headers["access-control-allow-origin"] == "https://good.example"
    assert headers["access-control-allow-methods"] == "GET,POST"
    assert headers["access-control-allow-headers"] == "x-custom"
    assert headers["access-control-max-age"] == "120"
    assert headers["access-control-allow-credentials"] == "true"
    _, headers, _ = await get(mesh, "/api", headers={"origin": "https://dev.example"})
    assert headers["access-control-allow-origin"] == "https://dev.example"
    assert headers["access-control-expose-headers"] == "x-trace"
    bad = {"origin": "https://evil.example", "access-control-request-method": "POST"}
    _, headers, _ = await get(mesh, "/api", method="OPTIONS", headers=bad)
    assert "access-control-allow-origin" not in headers, headers


async def test_header_operations_reach_backend_and_client(mesh: Mesh) -> None:
    await apply_vs(
        mesh,
        """\
- headers:
    request:
      set: {x-route: main, x-quota: "100%"}
      add: {x-added: "yes"}
      remove: [x-secret]
    response:
      set: {x-served-by: meshd}
      remove: [x-debug]
  route:
  - destination: {host: web, subset: v1}
    weight: 100
    headers:
      request: {set: {x-destination: v1}}
      response: {add: {x-from: v1}}
  - destination: {host: web, subset: v2}
    weight: 0
""",
    )
    status, headers, body = await get(mesh, "/h", headers={"x-secret": "s", "x-route": "client"})
    seen = json.loads(body)["request"]["headers"]
    assert status == 200
    assert seen["x-route"] == "main" and seen["x-quota"] == "100%" and seen["x-added"] == "yes"
    assert seen["x-destination"] == "v1" and "x-secret" not in seen, seen
    assert headers["x-served-by"] == "meshd" and headers["x-from"] == "v1", headers


# -- delegate ------------------------------------------------------------------------------------------


async def test_delegate_routes_traffic_and_follows_edits_of_the_delegate(mesh: Mesh) -> None:
    def delegate(subset: str) -> str:
        return f"""\
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: web-team, namespace: default}}
spec:
  http:
  - match: [{{uri: {{prefix: /team/{subset}}}}}]
    route: [{{destination: {{host: web, subset: {subset}}}}}]
"""

    mesh.write("web-team.yaml", delegate("v2"))
    await apply_vs(
        mesh,
        """\
- match: [{uri: {prefix: /team}}]
  delegate: {name: web-team}
- route: [{destination: {host: web, subset: v1}}]
""",
    )
    await eventually(lambda: _version_is(mesh, "/team/v2", "v2"), what="the delegate's route")
    mesh.write("web-team.yaml", delegate("v1").replace("subset: v1}", "subset: v2}"))
    await eventually(lambda: _version_is(mesh, "/team/v1", "v2"), what="the edited delegate's route")
    assert await version(mesh, "/team/v2") == "v1"  # no longer delegated: the root's last route
    (mesh.config_dir / "web-team.yaml").unlink()


async def _version_is(mesh: Mesh, path: str, expected: str) -> bool:
    return await version(mesh, path) == expected


# -- invalid input keeps the previous config -----------------------------------------------------------


async def _error_for(mesh: Mesh, resource: str, field: str) -> dict[str, Any] | None:
    errors: list[dict[str, Any]] = await mesh.meshd.get_json("/debug/config_errors")
    return next((e for e in errors if e["resource"] == resource and e["field"].startswith(field)), None)


@pytest.mark.parametrize(
    ("bad", "field", "message"),
    [
        (
            "- match: [{uri: {regex: '(?=x)'}}]\n  route: [{destination: {host: web}}]",
            "spec.http[0].match[0].uri",
            "RE2",
        ),
        ("- timeout: 10 seconds\n  route: [{destination: {host: web}}]", "spec.http[0].timeout", "duration"),
        (
            "- route:\n  - {destination: {host: web, subset: v1}, weight: 0}"
            "\n  - {destination: {host: web}, weight: 0}",
            "spec.http[0].route",
            "add up to 0",
        ),
    ],
)
async def test_a_malformed_virtual_service_is_reported_and_the_good_one_keeps_serving(
    mesh: Mesh, bad: str, field: str, message: str
) -> None:
    await apply_vs(mesh, "- route: [{destination: {host: web, subset: v2}}]")
    mesh.write("web.yaml", f"""\
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: web, namespace: default}}
spec:
  hosts: [web]
  http:
{_indent(bad, 2)}
""")  # fmt: skip
    error = await eventually(lambda: _error_for(mesh, "VirtualService default/web", field), what=f"{field} error")
    assert message in error["message"], error
    assert {await version(mesh) for _ in range(10)} == {"v2"}


@pytest.mark.parametrize(
    ("bad", "field", "message"),
    [
        ("- route: [{destination: {host: web, subset: v9}}]", "spec.http[0].route[0].destination.subset", "v9"),
        ("- route: [{destination: {host: web, port: {number: 77}}}]", "spec.http[0].route[0].destination.port", "77"),
        ("- mirror: {host: web, subset: v9}\n  route: [{destination: {host: web}}]", "spec.http[0].mirror", "v9"),
        ("- delegate: {name: nowhere}", "spec.http[0].delegate", "does not exist"),
    ],
)  # fmt: skip
async def test_a_virtual_service_with_a_broken_reference_never_reaches_envoy(
    mesh: Mesh, bad: str, field: str, message: str
) -> None:
    await apply_vs(mesh, "- route: [{destination: {host: web, subset: v2}}]")
    mesh.write("web-newer.yaml", f"""\
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: web-newer, namespace: default, creationTimestamp: "2030-01-01T00:00:00Z"}}
spec:
  hosts: [web]
  http:
{_indent(bad, 2)}
""")  # fmt: skip
    error = await eventually(lambda: _error_for(mesh, "VirtualService default/web-newer", field), what=f"{field}")
    assert message in error["message"], error
    assert {await version(mesh) for _ in range(10)} == {"v2"}
    status = await mesh.meshd.get_json("/debug/syncz")
    assert all(t["nacked"] is None for conn in status for t in conn["types"].values())
    (mesh.config_dir / "web-newer.yaml").unlink()


async def test_an_edit_into_a_broken_reference_keeps_the_previous_version_serving(mesh: Mesh) -> None:
    await apply_vs(mesh, "- route: [{destination: {host: web, subset: v2}}]")
    mesh.write("web.yaml", """\
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: web, namespace: default}
spec:
  hosts: [web]
  http:
  - route: [{destination: {host: web, subset: v9}}]
""")  # fmt: skip
    error = await eventually(
        lambda: _error_for(mesh, "VirtualService default/web", "spec.http[0].route[0].destination.subset"),
        what="the broken reference to be reported",
    )
    assert "subset 'v9' is not defined" in error["message"], error
    assert "the previous version stays in effect" in error["message"], error
    # the previous version (all to v2), not the service's default route (v1 and v2)
    assert {await version(mesh) for _ in range(20)} == {"v2"}
