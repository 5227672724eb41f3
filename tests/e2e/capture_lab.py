"""A minimal network-namespace lab for capture-mode tests: a "node" namespace (meshd, a bridge) and
"pod" namespaces plugged into the bridge by veth pairs, addressed from a private /24 of their own.
Nothing is added to the host namespace; `close()` deletes every namespace it made (veths and bridge go
with them). Processes run inside a namespace with `ip netns exec`, the proxy as UID 1337 (`setpriv`).

The capture rules are written by `meshd iptables` itself (production code, its defaults: outbound TCP to
15001 except the proxy's UID/GID 1337 and loopback, inbound TCP to 15006 except Envoy's own ports).
"""

from __future__ import annotations

import asyncio
import itertools
import os
import subprocess
import sys
import uuid

from tests.e2e.netns import netns_unavailable
from tests.e2e.workers import worker_slot

PROXY_UID = 1337
_labs = itertools.count()


def lab_unavailable() -> str | None:
    """Why network-namespace tests cannot run here, or None when they can."""
    if os.geteuid() != 0:
        return "network namespaces and iptables need root"
    return netns_unavailable()


def _run(*argv: str, stdin: str | None = None) -> str:
    done = subprocess.run(argv, input=stdin, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({done.returncode}): {done.stderr.strip()}")
    return done.stdout


class Lab:
    """The node namespace holds the bridge at `.1`; each pod gets the next address."""

    def __init__(self) -> None:
        base = int(os.environ.get("MESHD_E2E_SUBNET_BASE", "60"))
        self.prefix = f"10.{200 + base % 50}.{worker_slot(next(_labs), span=250, start=os.getpid())}"
        self.tag = uuid.uuid4().hex[:6]
        self.node = f"mcap-{self.tag}-node"
        self.namespaces: list[str] = []
        self.processes: list[asyncio.subprocess.Process] = []
        self._hosts = itertools.count(2)

    @property
    def node_ip(self) -> str:
        return f"{self.prefix}.1"

    def exec_argv(self, namespace: str, *argv: str, uid: int | None = None, gid: int | None = None) -> list[str]:
        """`uid`: run as that user and group; `gid`: only as that group (the user stays root)."""
        prefix = ["ip", "netns", "exec", namespace]
        if uid is not None:
            prefix += ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups"]
        elif gid is not None:
            prefix += ["setpriv", f"--regid={gid}", "--clear-groups"]
        return [*prefix, *argv]

    def create(self) -> None:
        _run("ip", "netns", "add", self.node)
        self.namespaces.append(self.node)
        self._in(self.node, "ip", "link", "set", "lo", "up")
        self._in(self.node, "ip", "link", "add", "br0", "type", "bridge")
        self._in(self.node, "ip", "addr", "add", f"{self.node_ip}/24", "dev", "br0")
        self._in(self.node, "ip", "link", "set", "br0", "up")
        self._in(self.node, "sysctl", "-qw", "net.ipv4.ip_forward=1")

    def pod(self, name: str, *, capture: bool) -> tuple[str, str]:
        """A pod namespace wired to the bridge: (namespace, its address); `capture`: NAT rules installed."""
        namespace, ip = f"mcap-{self.tag}-{name}", f"{self.prefix}.{next(self._hosts)}"
        _run("ip", "netns", "add", namespace)
        self.namespaces.append(namespace)
        host_end, pod_end = f"v{self.tag}{name[:3]}", "eth0"
        _run(
            "ip",
            "link",
            "add",
            host_end,
            "netns",
            self.node,
            "type",
            "veth",
            "peer",
            "name",
            pod_end,
            "netns",
            namespace,
        )
        self._in(self.node, "ip", "link", "set", host_end, "master", "br0", "up")
        self._in(namespace, "ip", "link", "set", "lo", "up")
        self._in(namespace, "ip", "addr", "add", f"{ip}/24", "dev", pod_end)
        self._in(namespace, "ip", "link", "set", pod_end, "up")
        self._in(namespace, "ip", "route", "add", "default", "via", self.node_ip)
        if capture:
            _run(*self.exec_argv(namespace, sys.executable, "-m", "meshd", "iptables"))
        return namespace, ip

    def _in(self, namespace: str, *argv: str) -> str:
        return _run(*self.exec_argv(namespace, *argv))

    async def spawn(
        self, namespace: str, *argv: str, uid: int | None = None, gid: int | None = None, log: str
    ) -> asyncio.subprocess.Process:
        out = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            proc = await asyncio.create_subprocess_exec(
                *self.exec_argv(namespace, *argv, uid=uid, gid=gid), stdout=out, stderr=out
            )
        finally:
            os.close(out)
        self.processes.append(proc)
        return proc

    async def python(self, namespace: str, code: str, *args: str, timeout: float = 10) -> str:
        """Run a Python snippet inside a namespace (as root: its traffic is captured) and return stdout."""
        proc = await asyncio.create_subprocess_exec(
            *self.exec_argv(namespace, sys.executable, "-c", code, *args),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
        if proc.returncode != 0:
            raise AssertionError(f"python in {namespace} failed: {err.decode(errors='replace')[-800:]}")
        return out.decode()

    async def close(self) -> None:
        for proc in reversed(self.processes):
            if proc.returncode is None:
                proc.terminate()
                try:
                    await asyncio.wait_for(proc.wait(), 10)
                except TimeoutError:
                    proc.kill()
                    await proc.wait()
        self.delete_namespaces()

    def delete_namespaces(self) -> None:
        for namespace in reversed(self.namespaces):
            subprocess.run(["ip", "netns", "del", namespace], capture_output=True, check=False)
