"""Proxy status as istioctl reads it: the real `istioctl x proxy-status --xds-address` (Istio 1.14, from
../shared/peers) and `meshd proxy-status` against meshd with real Envoy sidecars, over Istio's debug xDS
type `istio.io/debug/syncz`: every proxy SYNCED, a NACK shown with Envoy's error, and on the secure port
only an identity in meshd's namespace may ask."""

from __future__ import annotations

import asyncio
import json
import pathlib
import sys
from typing import Any

import pytest
from envoy.admin.v3 import config_dump_pb2, config_dump_shared_pb2
from envoy.config.cluster.v3 import cluster_pb2

from meshd.ctl.xds_client import CONFIG_DUMP, ask
from tests.e2e.agents import istioctl_cert_dir
from tests.e2e.conftest import SERVICE, virtual_service
from tests.e2e.harness import Mesh, eventually, logs_on_failure
from tests.peers import peer_binary

pytestmark = pytest.mark.e2e
PODS = ("client.default", "web-v1.default", "web-v2.default")
TOKENS = """\
tok-admin: {namespace: istio-system, serviceAccount: istioctl}
tok-web: {namespace: default, serviceAccount: web}
"""


@pytest.fixture
async def mesh(tmp_path: pathlib.Path) -> object:
    tokens = tmp_path / "tokens.yaml"
    tokens.write_text(TOKENS)
    async with logs_on_failure(Mesh(work_dir=tmp_path, delta=False, meshd_args=("--ca-token-file", str(tokens)))) as m:
        m.write("web.yaml", SERVICE.format(v1=m.ip(2), v2=m.ip(3)))
        m.write("web-vs.yaml", virtual_service(80, 20))
        await m.meshd.start()
        await m.app(service="web", version="v1", pod="web-v1", ip=m.ip(2))
        await m.app(service="web", version="v2", pod="web-v2", ip=m.ip(3))
        for pod, host in (("client", 1), ("web-v1", 2), ("web-v2", 3)):
            await m.sidecar(pod=pod, ip=m.ip(host))
        yield m


async def _run(*argv: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(*argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def _rows(table: str) -> dict[str, list[str]]:
    """A proxy-status table as {proxy: columns}; istioctl's columns: NAME CLUSTER CDS LDS EDS RDS ..."""
    rows = table.split("\n\n")[0].splitlines()  # (meshd's NACK errors follow a blank line)
    return {cells[0]: cells for cells in (line.split() for line in rows[1:]) if cells}


async def _istioctl(*args: str) -> tuple[int, str, str]:
    return await _run(str(peer_binary("istioctl")), "x", "proxy-status", *args)


async def _meshd_ctl(*args: str) -> tuple[int, str, str]:
    return await _run(sys.executable, "-m", "meshd", "proxy-status", *args)


async def test_istioctl_reads_every_proxy_synced_from_meshd(mesh: Mesh) -> None:
    address = f"127.0.0.1:{mesh.meshd.xds_port}"

    async def all_synced() -> dict[str, list[str]]:
        code, out, err = await _istioctl("--xds-address", address, "--plaintext")
        assert code == 0, err
        rows = _rows(out)
        assert set(rows) == set(PODS) and all(r[2:6] == ["SYNCED"] * 4 for r in rows.values()), out
        return rows

    rows = await eventually(all_synced, what="istioctl to list the three sidecars SYNCED")
    assert rows["client.default"][1] == "Kubernetes"  # CLUSTER
    # meshd's own CLI reads the same answer
    code, out, err = await _meshd_ctl("--xds-address", address)
    assert code == 0, err
    assert {name: cells[2:6] for name, cells in _rows(out).items()} == {p: ["SYNCED"] * 4 for p in PODS}


async def test_config_dump_debug_type_is_what_the_proxy_is_served(mesh: Mesh) -> None:
    response = await ask(f"127.0.0.1:{mesh.meshd.xds_port}", CONFIG_DUMP, names=("client.default", "nobody.default"))
    assert len(response.resources) == 1  # unknown proxies are left out
    dump = config_dump_pb2.ConfigDump()
    assert response.resources[0].Unpack(dump)
    clusters = config_dump_shared_pb2.ClustersConfigDump()
    assert dump.configs[0].Unpack(clusters)
    names = set()
    for entry in clusters.dynamic_active_clusters:
        cluster = cluster_pb2.Cluster()
        assert entry.cluster.Unpack(cluster)
        names.add(cluster.name)
    # what Envoy itself holds
    held = await mesh.envoys["client"].config_dump(resource="dynamic_active_clusters")
    assert names == {c["cluster"]["name"] for c in held["configs"]}
    assert "outbound|9080|v2|web.default.svc.cluster.local" in names


async def test_a_nack_shows_as_error_with_envoys_message(mesh: Mesh) -> None:
    address = f"127.0.0.1:{mesh.meshd.xds_port}"
    await mesh.meshd.post("/debug/test/inject-invalid-cluster")

    async def nacked() -> str | None:
        code, out, err = await _meshd_ctl("client.default", "--xds-address", address)
        assert code == 0, err
        return out if _rows(out).get("client.default", ["", "", ""])[2] == "NACKED" else None

    out = await eventually(nacked, what="meshd proxy-status to show the client's CDS NACKED")
    assert "client.default CDS NACKED" in out and "Expected positive duration" in out
    assert list(_rows(out)) == ["client.default"]
    code, out, err = await _istioctl("--xds-address", address, "--plaintext")
    assert code == 0, err
    assert _rows(out)["client.default"][2] == "ERROR"  # CDS, in istioctl's CSDS wording
    assert _rows(out)["client.default"][3] == "SYNCED"  # LDS unaffected


async def _cert_dir(mesh: Mesh, token: str) -> pathlib.Path:
    return await istioctl_cert_dir(
        work_dir=mesh.work_dir, ca_dir=mesh.meshd.ca_dir, secure_port=mesh.meshd.secure_port, token=token
    )


async def test_secure_port_answers_only_an_identity_in_meshds_namespace(mesh: Mesh) -> None:
    address = f"127.0.0.1:{mesh.meshd.secure_port}"
    secure = ("--authority", "istiod.istio-system.svc")
    admin = await _cert_dir(mesh, "tok-admin")
    code, out, err = await _istioctl("--xds-address", address, "--cert-dir", str(admin), *secure)
    assert code == 0, err
    assert set(_rows(out)) == set(PODS), out
    code, out, err = await _meshd_ctl("--xds-address", address, "--cert-dir", str(admin), *secure)
    assert code == 0, err
    assert set(_rows(out)) == set(PODS), out

    web = await _cert_dir(mesh, "tok-web")
    code, out, err = await _meshd_ctl("--xds-address", address, "--cert-dir", str(web), *secure)
    assert code == 1 and "PERMISSION_DENIED" in err and "'istio-system'" in err, (out, err)
    code, out, err = await _istioctl("--xds-address", address, "--cert-dir", str(web), *secure)
    assert code != 0 and "PermissionDenied" in err + out, (out, err)


async def test_proxy_config_shows_what_envoy_holds_and_computes_an_unconnected_proxy(mesh: Mesh) -> None:
    address = ("--xds-address", f"127.0.0.1:{mesh.meshd.xds_port}")
    code, out, err = await _meshd_ctl_config("clusters", "client.default", *address, "-o", "json")
    assert code == 0, err
    held = await mesh.envoys["client"].config_dump(resource="dynamic_active_clusters")
    assert {c["name"] for c in json.loads(out)} == {c["cluster"]["name"] for c in held["configs"]}

    code, out, err = await _meshd_ctl_config("endpoints", "client.default", *address)
    assert code == 0, err
    rows = [line.split() for line in out.splitlines()[1:]]
    v1 = {row[0] for row in rows if row[3] == "outbound|9080|v1|web.default.svc.cluster.local"}
    assert v1 == {f"{mesh.ip(2)}:15006"}, out  # web-v1's sidecar, as the client's Envoy routes it

    # a proxy that never connected, by its node id: its inbound listener for the web service it backs
    node = f"sidecar~{mesh.ip(2)}~web-v9.default~default.svc.cluster.local"
    code, out, err = await _meshd_ctl_config("listeners", node, *address)
    assert code == 0, err
    assert any(line.split()[:3] == ["virtualInbound", mesh.ip(2), "15006"] for line in out.splitlines()), out

    code, out, err = await _meshd_ctl_config("routes", "nobody.default", *address)
    assert code == 1 and "neither a connected proxy" in err


async def _meshd_ctl_config(*args: str) -> tuple[int, str, str]:
    return await _run(sys.executable, "-m", "meshd", "proxy-config", *args)


CANARY = """\
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: web, namespace: default}
spec:
  hosts: [web]
  http:
  - name: canary
    match: [{headers: {x-canary: {exact: "yes"}}, uri: {prefix: /api}}]
    route: [{destination: {host: web, subset: v2}}]
  - name: stable
    route: [{destination: {host: web, subset: v1}}]
"""


async def test_explain_names_the_rule_and_endpoints_real_traffic_then_takes(mesh: Mesh) -> None:
    mesh.write("web-vs.yaml", CANARY)
    address = ("--xds-address", f"127.0.0.1:{mesh.meshd.xds_port}")

    async def explained(*request: str) -> dict[str, Any]:
        code, out, err = await _run(
            sys.executable, "-m", "meshd", "explain", "--from", "client.default", "--to", "web:9080",
            *request, *address, "-o", "json",
        )  # fmt: skip
        assert code == 0, err
        found: dict[str, Any] = json.loads(out)
        return found

    async def canary_explained() -> dict[str, Any]:
        found = await explained("--path", "/api/items", "--header", "x-canary=yes")
        route = next(s for s in found["steps"] if s["step"] == "route")
        assert "canary" in route["choice"], found
        return found

    found = await eventually(canary_explained, what="explain to see the canary rule")
    route = next(s for s in found["steps"] if s["step"] == "route")
    assert "VirtualService default/web" in route["choice"] and "header x-canary exact 'yes'" in route["why"]
    [dest] = found["destinations"]
    assert dest["cluster"] == "outbound|9080|v2|web.default.svc.cluster.local"
    assert dest["endpoints"] == [f"{mesh.ip(3)}:15006 (weight 1)"]

    # real traffic takes that path: web-v2 answers
    async def canary_answers() -> bool:
        canary = {"x-canary": "yes"}
        status, _, body = await mesh.request(via_ip=mesh.ip(1), host="web:9080", path="/api/items", headers=canary)
        return status == 200 and json.loads(body)["version"] == "v2"

    await eventually(canary_answers, what="web-v2 to answer the canary request (Envoy holding the same config)")

    # without the header: the stable rule, v1's endpoint, and web-v1 answers
    found = await explained("--path", "/api/items")
    route = next(s for s in found["steps"] if s["step"] == "route")
    assert route["choice"].startswith("#1 stable"), found
    assert [d["endpoints"] for d in found["destinations"]] == [[f"{mesh.ip(2)}:15006 (weight 1)"]]
    status, headers, body = await mesh.request(via_ip=mesh.ip(1), host="web:9080", path="/api/items")
    assert status == 200 and json.loads(body)["version"] == "v1", (status, headers, body)
    # a host nobody serves: no virtual host, Envoy's 404
    found = await explained("--path", "/")
    assert found["outcome"].startswith("forwarded")
    code, out, _ = await _run(
        sys.executable, "-m", "meshd", "explain", "--from", "client.default", "--to", "nowhere.example:9080", *address,
    )  # fmt: skip
    assert code == 0 and "404" in out, out
    status, _, _ = await mesh.request(via_ip=mesh.ip(1), host="nowhere.example:9080", path="/")
    assert status == 404
