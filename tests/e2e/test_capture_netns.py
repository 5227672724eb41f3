"""`meshd iptables` on a real kernel: rules applied in a "pod" network namespace redirect an unmodified client's
outbound TCP to 15001 and inbound TCP to 15006, where the listener reads the original destination
(SO_ORIGINAL_DST); exclusions, Envoy's ports and the proxy's own UID are left alone."""

from __future__ import annotations

import asyncio
import json
import pathlib
import sys
from collections.abc import AsyncIterator
from typing import Any

import pytest

from tests.e2e.harness import eventually, free_port
from tests.e2e.netns import PROXY_UID, Lab, Namespace, netns_unavailable, sh

pytestmark = pytest.mark.e2e

PROBE = str(pathlib.Path(__file__).with_name("capture_probe.py"))
PYTHON = sys.executable
APP_PORT = 9090  # a real server in the pod, excluded from capture
NODE_PORT = free_port()  # a real server outside the pods (free: in host-bridge mode it runs in the host namespace)
DB_PORT = free_port()  # another one


@pytest.fixture(scope="module")
def netns_ok() -> None:
    reason = netns_unavailable()
    if reason:
        pytest.skip(f"network namespaces with iptables unavailable: {reason}")


@pytest.fixture
async def lab(netns_ok: None) -> AsyncIterator[Lab]:
    lab = Lab()
    try:
        await lab.start()
        yield lab
    finally:
        await lab.close()


async def serve(lab: Lab, ns: Namespace, *ports: int, uid: int | None = None) -> None:
    proc = await lab.spawn(ns, PYTHON, PROBE, "serve", *map(str, ports), uid=uid)
    assert proc.stdout is not None
    line = await proc.stdout.readline()
    assert line == b"ready\n", f"probe in {ns.name} did not start: {line!r}"


async def dial(ns: Namespace, host: str, port: int, *, uid: int | None = None) -> dict[str, Any]:
    """What an unmodified client in `ns` sees when it connects to host:port (the probe that answered)."""
    done = await ns.run(PYTHON, PROBE, "connect", host, str(port), uid=uid, check=False)
    assert done.returncode == 0, f"connect {host}:{port} from {ns.name} failed: {done.stderr.strip()[-300:]}"
    reply: dict[str, Any] = json.loads(done.stdout)
    return reply


async def meshd_iptables(ns: Namespace, *flags: str) -> None:
    await ns.run(PYTHON, "-m", "meshd", "iptables", *flags)


async def captured_pod(lab: Lab, *flags: str) -> Namespace:
    """A pod with capture rules and a stand-in proxy (UID 1337) on 15001/15006 and Envoy's health port 15021,
    plus an app server on APP_PORT; a server on the node at NODE_PORT."""
    pod = await lab.pod("app")
    await meshd_iptables(pod, *flags)
    await serve(lab, pod, 15001, 15006, 15021, uid=PROXY_UID)
    await serve(lab, pod, APP_PORT)
    await serve(lab, lab.node, NODE_PORT, DB_PORT)
    return pod


async def test_outbound_lands_on_15001_with_the_dialled_destination(lab: Lab) -> None:
    pod = await captured_pod(lab)
    for host, port in (("203.0.113.7", 80), (f"{lab.prefix}.200", 8080), (lab.node.ip, NODE_PORT)):
        reply = await dial(pod, host, port)
        assert reply["listener"] == 15001, reply
        assert reply["original_dst"] == f"{host}:{port}"
        assert reply["uid"] == PROXY_UID


async def test_inbound_lands_on_15006_except_excluded_and_envoy_ports(lab: Lab) -> None:
    pod = await captured_pod(lab, "--exclude-inbound-ports", str(APP_PORT))
    reply = await dial(lab.node, pod.ip, 8080)
    assert reply["listener"] == 15006
    assert reply["original_dst"] == f"{pod.ip}:8080"
    assert reply["peer"].startswith(f"{lab.node.ip}:")
    assert (await dial(lab.node, pod.ip, APP_PORT))["listener"] == APP_PORT  # excluded: the app answers itself
    assert (await dial(lab.node, pod.ip, 15021))["listener"] == 15021  # Envoy's health port: not captured


async def test_proxy_uid_and_loopback_are_not_captured(lab: Lab) -> None:
    pod = await captured_pod(lab)
    # The proxy's own outbound connection goes where it dialled (no loop back into 15001).
    reply = await dial(pod, lab.node.ip, NODE_PORT, uid=PROXY_UID)
    assert reply["listener"] == NODE_PORT
    assert reply["peer"].startswith(f"{pod.ip}:")
    # Loopback from the app reaches the local server directly.
    assert (await dial(pod, "127.0.0.1", APP_PORT))["listener"] == APP_PORT


async def test_proxy_calling_its_own_pod_ip_goes_inbound_except_envoy_and_excluded_ports(lab: Lab) -> None:
    pod = await captured_pod(lab, "--exclude-inbound-ports", str(APP_PORT))
    reply = await dial(pod, pod.ip, 8080, uid=PROXY_UID)  # an app calling itself through its service
    assert (reply["listener"], reply["original_dst"]) == (15006, f"{pod.ip}:8080")
    assert (await dial(pod, pod.ip, 15021, uid=PROXY_UID))["listener"] == 15021  # e.g. the agent probing Envoy
    assert (await dial(pod, pod.ip, APP_PORT, uid=PROXY_UID))["listener"] == APP_PORT


async def test_excluded_outbound_ranges_go_direct(lab: Lab) -> None:
    pod = await captured_pod(lab, "--exclude-outbound-ip-ranges", f"{lab.node.ip}/32")
    assert (await dial(pod, lab.node.ip, NODE_PORT))["listener"] == NODE_PORT
    assert (await dial(pod, "203.0.113.9", 80))["listener"] == 15001  # anything else is still captured


async def test_excluded_outbound_ports_go_direct(lab: Lab) -> None:
    pod = await captured_pod(lab, "--exclude-outbound-ports", str(DB_PORT))
    assert (await dial(pod, lab.node.ip, DB_PORT))["listener"] == DB_PORT
    assert (await dial(pod, lab.node.ip, NODE_PORT))["listener"] == 15001


async def test_include_outbound_ranges_capture_only_those(lab: Lab) -> None:
    pod = await captured_pod(lab, "--include-outbound-ip-ranges", "203.0.113.0/24")
    assert (await dial(pod, "203.0.113.9", 80))["listener"] == 15001
    assert (await dial(pod, lab.node.ip, NODE_PORT))["listener"] == NODE_PORT


async def test_rerunning_replaces_the_rules(lab: Lab) -> None:
    pod = await captured_pod(lab)
    await meshd_iptables(pod, "--exclude-outbound-ip-ranges", f"{lab.node.ip}/32")
    saved = (await pod.run("iptables-save", "-t", "nat")).stdout
    assert saved.count("-A OUTPUT -p tcp -j ISTIO_OUTPUT") == 1
    assert saved.count("-A PREROUTING -p tcp -j ISTIO_INBOUND") == 1
    assert (await dial(pod, lab.node.ip, NODE_PORT))["listener"] == NODE_PORT
    await meshd_iptables(pod, "--clean")
    assert "ISTIO" not in (await pod.run("iptables-save", "-t", "nat")).stdout
    assert (await dial(pod, lab.node.ip, NODE_PORT))["listener"] == NODE_PORT


async def test_not_permitted_is_a_clear_error(lab: Lab) -> None:
    pod = await lab.pod("app")
    done = await pod.run(PYTHON, "-m", "meshd", "iptables", uid=PROXY_UID, check=False)
    assert done.returncode == 1
    assert "meshd iptables:" in done.stderr and "root or with the NET_ADMIN capability" in done.stderr, done.stderr
    await eventually(lambda: _no_rules(pod), what="no rules installed by a refused run")


async def _no_rules(pod: Namespace) -> bool:
    return "ISTIO" not in (await pod.run("iptables-save", "-t", "nat")).stdout


async def test_host_bridge_lab_reaches_pods_from_the_test_process(netns_ok: None) -> None:
    lab = Lab(host_bridge=True)
    try:
        await lab.start()
        pod = await captured_pod(lab)
        reader, writer = await asyncio.open_connection(pod.ip, 8080)
        reply = json.loads(await reader.readline())
        writer.close()
        await writer.wait_closed()
        assert reply["listener"] == 15006 and reply["original_dst"] == f"{pod.ip}:8080"
        assert (await dial(pod, lab.node.ip, NODE_PORT))["listener"] == 15001
    finally:
        await lab.close()
    assert lab.bridge not in (await sh("ip", "-br", "link")).stdout
