"""A minimal network-namespace lab for capture-mode tests: a "node" namespace (meshd, a bridge) and
"pod" namespaces plugged into the bridge by veth pairs, addressed from a private /24 of their own.
Nothing is added to the host namespace; `close()` deletes every namespace it made (veths and bridge go
with them). Processes run inside a namespace with `ip netns exec`, the proxy as UID 1337 (`setpriv`).

The capture rules installed here are the minimal Istio-shaped NAT rules (outbound TCP to 15001 except
the proxy's UID, loopback and 127.0.0.6; inbound TCP to 15006 except Envoy's admin/health/metrics ports).
`meshd iptables` (issue 7 item 5) is the production writer of such rules.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import shutil
import subprocess
import sys
import uuid

PROXY_UID = 1337
_labs = itertools.count()
RULES = """\
*nat
:MESHLAB_IN - [0:0]
:MESHLAB_OUT - [0:0]
-A PREROUTING -p tcp -j MESHLAB_IN
-A MESHLAB_IN -p tcp -m multiport --dports 15000,15020,15021,15090 -j RETURN
-A MESHLAB_IN -p tcp -j REDIRECT --to-ports 15006
-A OUTPUT -p tcp -j MESHLAB_OUT
-A MESHLAB_OUT -s 127.0.0.6/32 -o lo -j RETURN
-A MESHLAB_OUT -m owner --uid-owner 1337 -j RETURN
-A MESHLAB_OUT -d 127.0.0.1/32 -j RETURN
-A MESHLAB_OUT -p tcp -j REDIRECT --to-ports 15001
COMMIT
"""


def lab_unavailable() -> str | None:
    """Why network-namespace tests cannot run here, or None when they can."""
    if os.geteuid() != 0:
        return "network namespaces and iptables need root"
    for tool in ("ip", "iptables-restore", "setpriv"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (apt-get install -y iptables iproute2 util-linux)"
    probe = f"mcap-probe-{uuid.uuid4().hex[:6]}"
    made = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True, check=False)
    if made.returncode != 0:
        return f"cannot create network namespaces: {made.stderr.strip()}"
    try:
        nat = subprocess.run(
            ["ip", "netns", "exec", probe, "iptables-restore", "--test"],
            input=RULES,
            capture_output=True,
            text=True,
            check=False,
        )
        if nat.returncode != 0:
            return f"iptables NAT rules not usable in a network namespace: {nat.stderr.strip()}"
    finally:
        subprocess.run(["ip", "netns", "del", probe], capture_output=True, check=False)
    return None


def _run(*argv: str, stdin: str | None = None) -> str:
    done = subprocess.run(argv, input=stdin, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({done.returncode}): {done.stderr.strip()}")
    return done.stdout


class Lab:
    """The node namespace holds the bridge at `.1`; each pod gets the next address."""

    def __init__(self) -> None:
        base = int(os.environ.get("MESHD_E2E_SUBNET_BASE", "60"))
        self.prefix = f"10.{200 + base % 50}.{(os.getpid() + next(_labs)) % 250}"
        self.tag = uuid.uuid4().hex[:6]
        self.node = f"mcap-{self.tag}-node"
        self.namespaces: list[str] = []
        self.processes: list[asyncio.subprocess.Process] = []
        self._hosts = itertools.count(2)

    @property
    def node_ip(self) -> str:
        return f"{self.prefix}.1"

    def exec_argv(self, namespace: str, *argv: str, uid: int | None = None) -> list[str]:
        prefix = ["ip", "netns", "exec", namespace]
        if uid is not None:
            prefix += ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups"]
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
            _run(*self.exec_argv(namespace, "iptables-restore"), stdin=RULES)
        return namespace, ip

    def _in(self, namespace: str, *argv: str) -> str:
        return _run(*self.exec_argv(namespace, *argv))

    async def spawn(self, namespace: str, *argv: str, uid: int | None = None, log: str) -> asyncio.subprocess.Process:
        out = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            proc = await asyncio.create_subprocess_exec(
                *self.exec_argv(namespace, *argv, uid=uid), stdout=out, stderr=out
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
