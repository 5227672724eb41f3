"""Traffic through real Envoy sidecars configured by meshd: weighted split, live edits, bad input,
meshd restarts and the NACK path. Every test runs over SotW and delta ADS."""

from __future__ import annotations

import asyncio
import json
import re
from typing import Any

import pytest

from tests.e2e.conftest import virtual_service
from tests.e2e.harness import Mesh, eventually

pytestmark = pytest.mark.e2e
REQUESTS = 400


def weights_in(dump: dict[str, Any]) -> list[int]:
    """Weights of the `web` route as Envoy holds it (from its /config_dump)."""
    text = json.dumps(dump)
    return [int(w) for w in re.findall(r'"name": "outbound\|9080\|v\d\|web[^"]*", "weight": (\d+)', text)]


async def route_weights(mesh: Mesh) -> list[int]:
    return weights_in(await mesh.envoys["client"].config_dump(resource="dynamic_route_configs"))


def share(seen: dict[str, int], version: str) -> float:
    return seen.get(version, 0) / sum(seen.values())


async def test_weighted_split_then_yaml_edit_shifts_it(mesh: Mesh) -> None:
    seen = await mesh.versions(via_ip=mesh.ip(1), host="web:9080", count=REQUESTS)
    assert set(seen) <= {"v1", "v2"}, seen
    assert 0.72 <= share(seen, "v1") <= 0.88, seen

    mesh.write("web-vs.yaml", virtual_service(20, 80))
    await eventually(lambda: _equals(route_weights(mesh), [20, 80]), what="Envoy to hold weights 20/80")
    seen = await mesh.versions(via_ip=mesh.ip(1), host="web:9080", count=REQUESTS)
    assert 0.72 <= share(seen, "v2") <= 0.88, seen


async def _equals(value: Any, expected: Any) -> bool:
    return bool(await value == expected)


async def test_bad_yaml_leaves_routing_intact(mesh: Mesh) -> None:
    before = await route_weights(mesh)
    mesh.write("web-vs.yaml", "apiVersion: networking.istio.io/v1\nkind: VirtualService\n  spec: [unclosed\n")
    mesh.write("broken.yaml", virtual_service(0, 0).replace("name: web", "name: web-broken"))
    errors = await eventually(
        lambda: _errors_with(mesh, "web-broken"), what="the invalid VirtualService to be reported"
    )
    messages = " | ".join(f"{e['origin']}: {e['resource']}: {e['field']}: {e['message']}" for e in errors)
    assert "broken.yaml: VirtualService default/web-broken: spec.http[0].route" in messages
    assert "weights add up to 0" in messages
    assert "web-vs.yaml" in messages and "malformed YAML" in messages
    assert "event=invalid_resource" in mesh.meshd.log()

    # The last good VirtualService stays in effect: nothing changed in Envoy, traffic still splits.
    assert await route_weights(mesh) == before == [80, 20]
    seen = await mesh.versions(via_ip=mesh.ip(1), host="web:9080", count=REQUESTS)
    assert 0.72 <= share(seen, "v1") <= 0.88, seen
    status = await mesh.meshd.get_json("/debug/syncz")
    assert all(t["nacked"] is None for conn in status for t in conn["types"].values())


async def _errors_with(mesh: Mesh, needle: str) -> list[dict[str, Any]]:
    errors: list[dict[str, Any]] = await mesh.meshd.get_json("/debug/config_errors")
    return errors if any(needle in (e["resource"] or "") for e in errors) else []


async def test_meshd_restart_envoy_keeps_serving_then_converges(mesh: Mesh) -> None:
    await mesh.meshd.stop()
    # With the control plane gone, sidecars keep their last config and traffic keeps flowing.
    seen = await mesh.versions(via_ip=mesh.ip(1), host="web:9080", count=100)
    assert set(seen) <= {"v1", "v2"} and sum(seen.values()) == 100, seen

    mesh.write("web-vs.yaml", virtual_service(0, 100))
    await mesh.meshd.start()

    async def reconnected() -> bool:
        status = await mesh.meshd.get_json("/debug/syncz")
        return len({c["proxy"] for c in status}) == 3 and all(
            t["acked"] == t["sent"] for c in status for t in c["types"].values()
        )

    await eventually(reconnected, timeout=30, what="all three sidecars to reconnect and ACK")
    await eventually(lambda: _equals(route_weights(mesh), [100]), timeout=30, what="Envoy to converge on 0/100")
    seen = await mesh.versions(via_ip=mesh.ip(1), host="web:9080", count=50)
    assert seen == {"v2": 50}, seen


def _metric(text: str, name: str, type_label: str) -> float:
    match = re.search(rf'^{name}{{type="{type_label}"}} ([0-9.e+]+)$', text, re.M)
    return float(match.group(1)) if match else 0.0


async def test_nack_is_recorded_and_not_resent(mesh: Mesh) -> None:
    await mesh.meshd.post("/debug/test/inject-invalid-cluster")

    async def nacked() -> list[dict[str, Any]]:
        status = await mesh.meshd.get_json("/debug/syncz")
        return [c for c in status if c["types"]["cds"]["nack_error"]]

    rejected = await eventually(nacked, what="Envoy to NACK the invalid cluster")
    assert "Expected positive duration" in rejected[0]["types"]["cds"]["nack_error"]
    metrics = await mesh.meshd.metrics()
    assert _metric(metrics, "pilot_total_xds_rejects", "cds") >= 1
    await eventually(lambda: _count_nacks(mesh, 3), what="all three sidecars to NACK")
    cds_pushes = _metric(await mesh.meshd.metrics(), "pilot_xds_pushes", "cds")
    rejects = _metric(await mesh.meshd.metrics(), "pilot_total_xds_rejects", "cds")

    # A change elsewhere is pushed (RDS) but the rejected CDS version is not sent again.
    mesh.write("web-vs.yaml", virtual_service(50, 50))
    await eventually(lambda: _equals(route_weights(mesh), [50, 50]), what="RDS change to reach Envoy")
    after = await mesh.meshd.metrics()
    assert _metric(after, "pilot_xds_pushes", "cds") == cds_pushes
    assert _metric(after, "pilot_total_xds_rejects", "cds") == rejects
    # Envoy still routes with its last good clusters.
    seen = await mesh.versions(via_ip=mesh.ip(1), host="web:9080", count=40)
    assert set(seen) <= {"v1", "v2"}, seen


async def _count_nacks(mesh: Mesh, expected: int) -> bool:
    status = await mesh.meshd.get_json("/debug/syncz")
    return sum(1 for c in status if c["types"]["cds"]["nack_error"]) == expected


async def test_deleting_a_file_removes_its_config(mesh: Mesh) -> None:
    (mesh.config_dir / "web-vs.yaml").unlink()
    # Without the VirtualService the default route balances over every endpoint of `web`.
    await eventually(lambda: _equals(route_weights(mesh), []), what="the weighted route to disappear")
    seen = await mesh.versions(via_ip=mesh.ip(1), host="web:9080", count=200)
    assert 0.35 <= share(seen, "v1") <= 0.65, seen
    mesh.write("web-vs.yaml", virtual_service(100, 0))
    await eventually(lambda: _equals(route_weights(mesh), [100]), what="a new file to be picked up")
    assert await mesh.versions(via_ip=mesh.ip(1), host="web:9080", count=20) == {"v1": 20}


async def test_modified_cluster_finishes_warming_without_the_15s_stall(mesh: Mesh) -> None:
    """Renaming the port to `http2-web` changes every `web` cluster in place (HTTP/2 upstream).
    Envoy re-warms them and waits for their endpoints: meshd answers EDS again after the CDS push,
    so the clusters go active well before Envoy's 15 s initial fetch timeout, and carry the requests
    over HTTP/2. (The apps here speak HTTP/1.1 only: the server sidecars, which speak HTTP/2 to the app
    of an http2 port as Istio's do, answer 502; what matters here is that the warmed clusters are used.)"""
    loop = asyncio.get_running_loop()
    text = (mesh.config_dir / "web.yaml").read_text()
    started = loop.time()
    mesh.write("web.yaml", text.replace("name: http, port: 9080", "name: http2-web, port: 9080"))

    async def rewarmed() -> bool:
        dump = json.dumps(await mesh.envoys["client"].config_dump(resource="dynamic_active_clusters"))
        warming = await mesh.envoys["client"].config_dump(resource="dynamic_warming_clusters")
        return "http2ProtocolOptions" in dump.replace("http2_protocol_options", "http2ProtocolOptions") and not (
            warming.get("configs")
        )

    await eventually(rewarmed, timeout=20, what="the modified web clusters to become active")
    assert loop.time() - started < 5.0
    seen = await mesh.versions(via_ip=mesh.ip(1), host="web:9080", count=40)
    assert sum(seen.values()) == 40, seen
    stats = json.loads(await mesh.envoys["client"].admin_get("/stats?format=json"))["stats"]
    http2 = sum(
        int(s["value"])
        for s in stats
        if s.get("name", "").startswith("cluster.outbound|9080|") and s["name"].endswith(".upstream_cx_http2_total")
    )
    assert http2 >= 1, "the warmed clusters did not carry the requests over HTTP/2"


async def test_endpoint_change_keeps_the_assignments_it_does_not_touch(mesh: Mesh) -> None:
    """SotW pushes only changed endpoints: Envoy must keep the rest (here the v1 subset)."""
    mesh.write("web-vs.yaml", virtual_service(100, 0))
    await eventually(lambda: _equals(route_weights(mesh), [100]), what="all traffic to v1")
    text = (mesh.config_dir / "web.yaml").read_text()
    v2_endpoint = (
        f"- addresses: [{mesh.ip(3)}]\n  conditions: {{ready: true}}\n"
        "  targetRef: {kind: Pod, name: web-v2, namespace: default}\n"
    )
    assert v2_endpoint in text
    mesh.write("web.yaml", text.replace(v2_endpoint, ""))

    async def v2_gone() -> bool:
        clusters = await mesh.envoys["client"].admin_get("/clusters")
        return f"outbound|9080||web.default.svc.cluster.local::{mesh.ip(3)}" not in clusters

    await eventually(v2_gone, what="web-v2 to leave the default cluster")
    assert await mesh.versions(via_ip=mesh.ip(1), host="web:9080", count=40) == {"v1": 40}
