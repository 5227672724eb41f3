"""An Envoy NACK reaches the Istio resource behind the rejected resource, and only that resource is held
back: real Envoy sidecars, a generated cluster replaced through a test hook by one Envoy rejects (meshd's
own validation would stop it otherwise)."""

from __future__ import annotations

import json
import urllib.parse
from typing import Any

import pytest

from tests.e2e.conftest import virtual_service
from tests.e2e.harness import Mesh, eventually

pytestmark = pytest.mark.e2e
V2 = "outbound|9080|v2|web.default.svc.cluster.local"
API = """\
apiVersion: v1
kind: Service
metadata: {name: api, namespace: default}
spec:
  selector: {app: api}
  ports: [{name: http, port: 7070, targetPort: 8080}]
"""


async def _errors_about(mesh: Mesh, cluster: str) -> list[dict[str, Any]]:
    errors = await mesh.meshd.get_json("/debug/config_errors")
    return [e for e in errors if cluster in e["message"]]


async def _clusters(mesh: Mesh) -> dict[str, dict[str, Any]]:
    dump = await mesh.envoys["client"].config_dump(resource="dynamic_active_clusters")
    return {c["cluster"]["name"]: c["cluster"] for c in dump["configs"]}


async def test_a_rejected_cluster_is_reported_on_its_resources_and_the_rest_keeps_flowing(mesh: Mesh) -> None:
    await mesh.meshd.post("/debug/test/inject-invalid-cluster?name=" + urllib.parse.quote(V2))

    async def reported() -> list[dict[str, Any]]:
        found = await _errors_about(mesh, V2)
        assert {e["resource"] for e in found} >= {"DestinationRule default/web", "Service default/web"}, found
        assert all("client.default" in e["message"] for e in found), found
        return found

    found = await eventually(reported, timeout=10, what="the NACK to be reported on the DestinationRule")
    message = found[0]["message"]
    assert "Expected positive duration" in message and "client.default" in message, message
    # Envoy keeps (and is served) the v2 cluster it accepted before; nothing invalid reaches it again
    assert (await _clusters(mesh))[V2]["connect_timeout"] != "-1s"

    # the rest of the config keeps flowing: a route edit and a new service reach Envoy
    mesh.write("web-vs.yaml", virtual_service(20, 80))
    mesh.write("api.yaml", API)

    async def flowed() -> bool:
        routes = json.dumps(await mesh.envoys["client"].config_dump(resource="dynamic_route_configs"))
        clusters = await _clusters(mesh)
        return '"weight": 80' in routes and "outbound|7070||api.default.svc.cluster.local" in clusters

    await eventually(flowed, what="the route edit and the new cluster to reach Envoy")
    # ... and Envoy accepted (ACKed) every CDS response since: the rejected cluster is never re-sent
    await eventually(lambda: _cds_acked(mesh, "client.default"), what="the client's latest CDS response to be acked")
    assert (await _clusters(mesh))[V2]["connect_timeout"] != "-1s"
    assert await _errors_about(mesh, V2)  # still generated, still held back, still reported

    # the input fixed (the hook cleared): the generated cluster is tried again, the report goes
    await mesh.meshd.post("/debug/test/clear")
    await eventually(lambda: _none_about(mesh, V2), what="the report to go once the cluster is valid again")


async def _none_about(mesh: Mesh, cluster: str) -> bool:
    return not await _errors_about(mesh, cluster)


async def _cds_acked(mesh: Mesh, proxy: str) -> bool:
    for conn in await mesh.meshd.get_json("/debug/syncz"):
        if conn["proxy"].split("~")[2] == proxy:
            cds = conn["types"]["cds"]
            return bool(cds["sent"] and cds["acked"] == cds["sent"])
    return False
