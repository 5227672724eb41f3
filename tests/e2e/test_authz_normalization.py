"""Path normalisation before authorization, per meshConfig.pathNormalization, through a real Envoy: a DENY
policy on `/admin` and `/admin/*`, and requests written byte for byte (raw HTTP/1.1 to the sidecar's
inbound port, so no client normalises them first). What each mode does is Istio's documented table
(istio.io/latest/docs/reference/config/security/normalization):

| request          | NONE | BASE (default) | MERGE_SLASHES | DECODE_AND_MERGE_SLASHES |
| /public/../admin | pass | denied         | denied        | denied                   |
| /admin/../admin  | denied (it starts with /admin/) in every mode                          |
| /./admin         | pass | denied         | denied        | denied                   |
| /%61dmin         | pass | denied         | denied        | denied                   |
| //admin          | pass | pass           | denied        | denied                   |
| /admin%2Fx       | pass | pass           | pass          | denied                   |

BASE (Envoy's normalize_path: RFC 3986 dot segments, percent-encoded unreserved characters, backslashes)
does not merge slashes nor decode %2F: `//admin` and `/admin%2F...` pass it, as Istio documents. Each mode
is the mesh config meshd starts with (`--mesh-config`); the sidecar reconnects to the restarted meshd."""

from __future__ import annotations

import asyncio
import pathlib
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from tests.e2e.authz_helpers import authorization, converge, raw_request, received_paths, snapshot
from tests.e2e.harness import Mesh, eventually, logs_on_failure
from tests.e2e.workloads import meshed_service_yaml

pytestmark = [pytest.mark.e2e, pytest.mark.asyncio(loop_scope="module")]

WEB = 2
AUTHORITY = "web.default.svc.cluster.local:9080"
DENY_ADMIN = """\
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-admin, namespace: default}
spec:
  action: DENY
  rules:
  - to: [{operation: {paths: [/admin, "/admin/*"]}}]
"""
REQUESTS = (
    "/admin", "/admin/x", "/public/../admin", "/admin/../admin", "/./admin", "/%61dmin", "//admin", "/admin%2Fx",
    "/public",
)  # fmt: skip
# what each mode does with each request: True = denied
EXPECTED = {
    "NONE": {"/admin": True, "/admin/x": True, "/admin/../admin": True},
    "BASE": {"/admin": True, "/admin/x": True, "/admin/../admin": True, "/public/../admin": True, "/./admin": True,
             "/%61dmin": True},
    "MERGE_SLASHES": {"/admin": True, "/admin/x": True, "/admin/../admin": True, "/public/../admin": True,
                      "/./admin": True, "/%61dmin": True, "//admin": True},
    "DECODE_AND_MERGE_SLASHES": {"/admin": True, "/admin/x": True, "/admin/../admin": True, "/public/../admin": True,
                                 "/./admin": True, "/%61dmin": True, "//admin": True, "/admin%2Fx": True},
}  # fmt: skip


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def mesh(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Mesh]:
    work = tmp_path_factory.mktemp("authz-normalization")
    async with logs_on_failure(Mesh(work_dir=work, delta=False)) as m:
        m.meshd.extra_args = ("--mesh-config", str(work / "mesh.yaml"))
        (work / "mesh.yaml").write_text("{}\n")
        m.write("web.yaml", meshed_service_yaml("web", ip=m.ip(WEB), target_ref=False) + "---\n" + DENY_ADMIN)
        await m.meshd.start()
        await m.app(service="web", version="v1", pod="web", ip=m.ip(WEB))
        await m.sidecar(pod="web", ip=m.ip(WEB))
        yield m


async def _restart_with(mesh: Mesh, mode: str) -> None:
    before = await snapshot(mesh.meshd, "web.default")
    await mesh.meshd.stop()
    mesh_file = pathlib.Path(mesh.meshd.extra_args[1])
    await asyncio.to_thread(mesh_file.write_text, f"pathNormalization: {{normalization: {mode}}}\n")
    await mesh.meshd.start()

    async def normalizing() -> bool:
        return (await authorization(mesh.meshd, "web.default")).get("pathNormalization") == mode

    await eventually(normalizing, timeout=30, what=f"the sidecar back, normalising {mode}")
    await converge(mesh.meshd, "web.default", {"default/deny-admin"}, before=before, envoy=mesh.envoys["web"])


@pytest.mark.parametrize("mode", ["BASE", "MERGE_SLASHES", "DECODE_AND_MERGE_SLASHES", "NONE"])
async def test_deny_admin_under_each_normalization(mesh: Mesh, mode: str) -> None:
    await _restart_with(mesh, mode)
    app = next(a for a in mesh.apps if a.identity.pod == "web")
    found = {}
    for path in REQUESTS:
        app.received.clear()
        status, body = await raw_request(mesh.ip(WEB), 15006, path, authority=AUTHORITY)
        found[path] = status == 403
        if status == 403:
            assert body == "RBAC: access denied" and received_paths(app) == [], path
        else:
            assert status == 200, (path, status, body)
    expected = {path: EXPECTED[mode].get(path, False) for path in REQUESTS}
    assert found == expected
    if mode == "BASE":  # the app gets the normalised path (it is forwarded, not only checked)
        app.received.clear()
        await raw_request(mesh.ip(WEB), 15006, "/public/../%70ublic", authority=AUTHORITY)
        assert received_paths(app) == ["/public"]
