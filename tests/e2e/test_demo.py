"""`meshd demo` end to end: meshd, five agent-run sidecars talking mTLS and an agent-run ingress gateway the
traffic enters by, every canary shift observed, and the peer identity of each hop."""

from __future__ import annotations

import io
import os

import pytest

from meshd.demo.runner import run_demo

pytestmark = pytest.mark.e2e


def _children() -> list[int]:
    me = str(os.getpid())
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/stat") as stat:
                parent = stat.read().rsplit(")", 1)[1].split()[1]
        except OSError:
            continue
        if parent == me:
            found.append(int(pid))
    return found


async def test_demo_shifts_traffic() -> None:
    before = set(_children())
    out = io.StringIO()
    code = await run_demo(duration_s=3.0, delta=False, out=out)
    assert code == 0, out.getvalue()
    text = out.getvalue()
    assert "traffic flowed and every shift was observed" in text
    # every hop is mTLS: each app saw its caller's SPIFFE identity, issued by meshd's CA through `meshd agent`
    assert "each run by `meshd agent` with a certificate from meshd's CA" in text
    # the traffic entered through the ingress gateway (a router proxy run by `meshd agent`): the frontend
    # saw the gateway's own workload identity
    gateway = "spiffe://cluster.local/ns/istio-system/sa/istio-ingressgateway-service-account"
    assert f"istio-ingressgateway -> frontend: {gateway}\n" in text, text
    assert "into the ingress gateway, http://127.0.10.6:8080/" in text, text
    for caller, callee in (("frontend", "catalog"), ("catalog", "backend")):
        assert f"{caller} -> {callee}: spiffe://cluster.local/ns/default/sa/{caller}\n" in text, text
    assert "plaintext (no peer certificate)" not in text, text
    assert set(_children()) <= before, "the demo left a child process behind"
