"""Network-namespace harness: a "node" namespace holding a bridge, and "pod" namespaces plugged into it by veth
pairs, addressed from a private /24 of their own per lab. Nothing changes in the host namespace; `close()`
deletes every namespace it made (the veths and the bridge go with them), also when a test fails.

Processes run inside a namespace with `ip netns exec`, optionally as another UID/GID (`setpriv`), e.g. the proxy
as 1337.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import os
import shutil
import subprocess
import uuid

from tests.e2e.workers import worker_slot

_labs = itertools.count()
PROXY_UID = 1337


def netns_unavailable() -> str | None:
    """Why network-namespace tests cannot run here, or None when they can."""
    for tool in ("ip", "iptables-restore", "iptables-save", "setpriv"):
        if shutil.which(tool) is None:
            return f"{tool} not installed (make setup runs tools/system-deps.sh to install iptables)"
    probe = f"meshd-probe-{uuid.uuid4().hex[:8]}"
    made = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True, check=False)
    if made.returncode != 0:
        return f"cannot create network namespaces: {made.stderr.strip()}"
    try:
        nat = subprocess.run(
            ["ip", "netns", "exec", probe, "iptables-save", "-t", "nat"], capture_output=True, text=True, check=False
        )
        if nat.returncode != 0:
            return f"iptables not usable in a network namespace: {nat.stderr.strip()}"
    finally:
        subprocess.run(["ip", "netns", "del", probe], capture_output=True, check=False)
    return None


async def sh(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = await asyncio.create_subprocess_exec(*argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await proc.communicate()
    done = subprocess.CompletedProcess(list(argv), proc.returncode or 0, out.decode(), err.decode())
    if check and done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({done.returncode}): {done.stderr.strip()}")
    return done


@dataclasses.dataclass
class Namespace:
    """A network namespace by name; the empty name is the host's (the test process's own)."""

    name: str
    ip: str

    def argv(self, *argv: str, uid: int | None = None) -> list[str]:
        """`argv` run inside this namespace (as `uid`, with the same GID, no supplementary groups)."""
        prefix = ["ip", "netns", "exec", self.name] if self.name else []
        if uid is not None:
            prefix += ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "--"]
        return [*prefix, *argv]

    async def run(self, *argv: str, uid: int | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
        return await sh(*self.argv(*argv, uid=uid), check=check)

    async def spawn(self, *argv: str, uid: int | None = None) -> asyncio.subprocess.Process:
        return await asyncio.create_subprocess_exec(
            *self.argv(*argv, uid=uid), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
        )


class Lab:
    """One test's namespaces: `node` (a bridge at .1) and pods at .2, .3, ... of a private 10.B.N.0/24.

    With `host_bridge`, the node is the host namespace itself (a bridge of the lab's own, deleted at close): the test
    process then reaches every pod directly, and pods reach servers the test runs on the bridge address.
    """

    def __init__(self, *, host_bridge: bool = False) -> None:
        base = int(os.environ.get("MESHD_E2E_SUBNET_BASE", "60")) % 250
        index = next(_labs)
        self.prefix = f"10.{base}.{worker_slot(index, span=250, start=os.getpid())}"
        self.tag = f"meshd-{os.getpid()}-{index}"
        self.node = Namespace(name="" if host_bridge else f"{self.tag}-node", ip=f"{self.prefix}.1")
        self.bridge = f"mbr{os.getpid() % 100000}x{index}" if host_bridge else "br0"
        self.pods: list[Namespace] = []
        self._made: list[str] = []
        self._processes: list[asyncio.subprocess.Process] = []
        self._bridge_made = False

    async def start(self) -> None:
        if self.node.name:
            await self._add_namespace(self.node.name)
        await self.node.run("ip", "link", "add", self.bridge, "type", "bridge")
        self._bridge_made = True
        await self.node.run("ip", "addr", "add", f"{self.node.ip}/24", "dev", self.bridge)
        await self.node.run("ip", "link", "set", self.bridge, "up")

    async def pod(self, name: str) -> Namespace:
        """A pod namespace wired to the node's bridge, with its default route via the node."""
        pod = Namespace(name=f"{self.tag}-{name}", ip=f"{self.prefix}.{len(self.pods) + 2}")
        await self._add_namespace(pod.name)
        port = f"{self.bridge}v{len(self.pods)}"
        await self.node.run("ip", "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", pod.name)
        await self.node.run("ip", "link", "set", port, "master", self.bridge, "up")
        await pod.run("ip", "addr", "add", f"{pod.ip}/24", "dev", "eth0")
        await pod.run("ip", "link", "set", "eth0", "up")
        await pod.run("ip", "route", "add", "default", "via", self.node.ip)
        self.pods.append(pod)
        return pod

    async def spawn(self, ns: Namespace, *argv: str, uid: int | None = None) -> asyncio.subprocess.Process:
        """A process in `ns` that close() stops."""
        proc = await ns.spawn(*argv, uid=uid)
        self._processes.append(proc)
        return proc

    async def _add_namespace(self, name: str) -> None:
        await sh("ip", "netns", "add", name)
        self._made.append(name)
        await sh("ip", "netns", "exec", name, "ip", "link", "set", "lo", "up")

    async def close(self) -> None:
        for proc in self._processes:
            if proc.returncode is None:
                proc.kill()
            await proc.wait()
        for name in reversed(self._made):
            await sh("ip", "netns", "del", name, check=False)
        self._made.clear()
        if self._bridge_made and not self.node.name:
            await sh("ip", "link", "del", self.bridge, check=False)
        self._bridge_made = False
