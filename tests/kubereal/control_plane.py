"""A real Kubernetes control plane for tests: etcd + kube-apiserver (+ kube-controller-manager on demand) from
the envtest assets named by KUBEBUILDER_ASSETS (see tools/envtest-assets.sh and ../shared/envtest/README.md).

Everything listens on free 127.0.0.1 ports, with a PKI of its own (a CA, a serving certificate for 127.0.0.1, a
`system:masters` client certificate, a service-account key pair); `kubeconfig` authenticates as that client. The
API server runs with `--enable-aggregator-routing=true` so that it never dials a Service's cluster IP. `stop()`
ends every process it started, by pid.
"""

from __future__ import annotations

import base64
import os
import pathlib
import signal
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from typing import Any

import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from tests.certs import Authority
from tests.e2e.harness import free_port

ASSETS_VARIABLE = "KUBEBUILDER_ASSETS"
START_TIMEOUT = 60.0
CRD_ESTABLISH_TIMEOUT = 30.0


def assets_unavailable() -> str | None:
    """Why the real control plane cannot start here, or None when it can."""
    assets = os.environ.get(ASSETS_VARIABLE)
    if not assets:
        return (
            f"{ASSETS_VARIABLE} is not set: no real kube-apiserver to test against (make test and .ci/run set it "
            "from ../shared/envtest with tools/envtest-assets.sh)"
        )
    for binary in ("etcd", "kube-apiserver"):
        if not os.access(pathlib.Path(assets, binary), os.X_OK):
            return f"{ASSETS_VARIABLE}={assets} has no executable {binary}"
    return None


@dataclass
class ControlPlane:
    work: pathlib.Path
    assets: pathlib.Path = field(default_factory=lambda: pathlib.Path(os.environ[ASSETS_VARIABLE]))
    url: str = ""
    kubeconfig: pathlib.Path = field(init=False)
    ca_file: pathlib.Path = field(init=False)
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    arguments: dict[str, tuple[str, ...]] = field(default_factory=dict)  # to start one again as it was

    def __post_init__(self) -> None:
        self.kubeconfig = self.work / "kubeconfig"
        self.ca_file = self.work / "ca.crt"

    # -- start -----------------------------------------------------------------------------------

    def start(self) -> None:
        self._write_pki()
        etcd_client, etcd_peer, secure = free_port(), free_port(), free_port()
        self.url = f"https://127.0.0.1:{secure}"
        etcd = f"http://127.0.0.1:{etcd_client}"
        peer = f"http://127.0.0.1:{etcd_peer}"
        self._spawn(
            "etcd",
            "--data-dir", str(self.work / "etcd"), "--listen-client-urls", etcd, "--advertise-client-urls", etcd,
            "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
            "--initial-cluster", f"default={peer}", "--name", "default", "--unsafe-no-fsync",
        )  # fmt: skip
        w = self.work
        self._spawn(
            "kube-apiserver",
            f"--etcd-servers={etcd}", "--bind-address=127.0.0.1", "--advertise-address=127.0.0.1",
            f"--secure-port={secure}", f"--tls-cert-file={w / 'serving.crt'}",
            f"--tls-private-key-file={w / 'serving.key'}", f"--client-ca-file={self.ca_file}",
            f"--service-account-key-file={w / 'sa.pub'}", f"--service-account-signing-key-file={w / 'sa.key'}",
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            "--authorization-mode=RBAC", "--service-cluster-ip-range=10.96.0.0/16",
            "--endpoint-reconciler-type=none", "--enable-aggregator-routing=true",
            "--disable-admission-plugins=ServiceAccount", f"--cert-dir={w / 'apiserver-certs'}",
        )  # fmt: skip
        self._write_kubeconfig()
        self._wait_ready()

    def start_controllers(self) -> None:
        """kube-controller-manager with the EndpointSlice controller (and what namespaces and tokens need)."""
        if "kube-controller-manager" in self.processes:
            return
        w = self.work
        self._spawn(
            "kube-controller-manager",
            f"--kubeconfig={self.kubeconfig}", "--bind-address=127.0.0.1", "--secure-port=0",
            f"--service-account-private-key-file={w / 'sa.key'}", f"--root-ca-file={self.ca_file}",
            "--use-service-account-credentials=true", "--leader-elect=false",
            "--controllers=endpointslice,namespace,garbagecollector,serviceaccount,serviceaccount-token",
        )  # fmt: skip

    def stop_apiserver(self) -> None:
        """An outage: kube-apiserver killed (connections refused); etcd and the controllers keep running."""
        proc = self.processes.pop("kube-apiserver")
        proc.kill()
        proc.wait()

    def start_apiserver(self) -> None:
        """kube-apiserver again, with the same flags: the same port, PKI and etcd; returns once ready."""
        self._spawn("kube-apiserver", *self.arguments["kube-apiserver"])
        self._wait_ready()

    def _spawn(self, name: str, *args: str) -> None:
        self.arguments[name] = args
        log = (self.work / f"{name}.log").open("ab")
        self.processes[name] = subprocess.Popen(
            [str(self.assets / name), *args], stdout=log, stderr=log, stdin=subprocess.DEVNULL
        )
        log.close()

    def _wait_ready(self) -> None:
        context = self.ssl_context()
        deadline = time.monotonic() + START_TIMEOUT
        last = ""
        while time.monotonic() < deadline:
            for name, proc in self.processes.items():
                if proc.poll() is not None:
                    raise RuntimeError(f"{name} exited ({proc.returncode}):\n{self.log(name)[-3000:]}")
            try:
                with urllib.request.urlopen(f"{self.url}/readyz", context=context, timeout=2) as resp:
                    if resp.status == 200:
                        return
            except (urllib.error.URLError, OSError) as error:
                last = str(error)
            time.sleep(0.1)  # polling a child process's readiness with a deadline, not waiting for a test condition
        raise RuntimeError(
            f"kube-apiserver not ready in {START_TIMEOUT}s ({last}):\n{self.log('kube-apiserver')[-3000:]}"
        )

    # -- PKI and kubeconfig ------------------------------------------------------------------------

    def _write_pki(self) -> None:
        self.work.mkdir(parents=True, exist_ok=True)
        ca = Authority("meshd envtest CA")
        self.ca_file.write_bytes(ca.pem)
        serving = ca.issue("kube-apiserver", sans=("127.0.0.1", "localhost"))
        (self.work / "serving.crt").write_bytes(serving.cert)
        (self.work / "serving.key").write_bytes(serving.key)
        admin = ca.issue("meshd-test-admin", client=True, organization="system:masters")
        (self.work / "admin.crt").write_bytes(admin.cert)
        (self.work / "admin.key").write_bytes(admin.key)
        sa = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        (self.work / "sa.key").write_bytes(
            sa.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
        (self.work / "sa.pub").write_bytes(
            sa.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        )

    def _write_kubeconfig(self) -> None:
        def b64(name: str) -> str:
            return base64.b64encode((self.work / name).read_bytes()).decode()

        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {"name": "envtest", "cluster": {"server": self.url, "certificate-authority-data": b64("ca.crt")}}
            ],
            "users": [
                {
                    "name": "admin",
                    "user": {"client-certificate-data": b64("admin.crt"), "client-key-data": b64("admin.key")},
                }
            ],
            "contexts": [{"name": "envtest", "context": {"cluster": "envtest", "user": "admin"}}],
            "current-context": "envtest",
        }
        self.kubeconfig.write_text(yaml.safe_dump(config))

    def ssl_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=str(self.ca_file))
        context.load_cert_chain(self.work / "admin.crt", self.work / "admin.key")
        return context

    # -- stop ----------------------------------------------------------------------------------------

    def log(self, name: str) -> str:
        path = self.work / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self) -> None:
        for proc in reversed(list(self.processes.values())):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.processes.values():
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.processes.clear()


def request(plane: ControlPlane, method: str, path: str, body: object = None) -> dict[str, object]:
    """One synchronous REST call as the admin (for set-up, outside any event loop)."""
    import json

    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(plane.url + path, data=data, method=method)
    if data is not None:
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, context=plane.ssl_context(), timeout=10) as resp:
            result: dict[str, object] = json.loads(resp.read() or b"{}")
            return result
    except urllib.error.HTTPError as err:  # the API server's reason, not only its code
        raise RuntimeError(f"{method} {path}: {err.code}: {err.read().decode(errors='replace')[:3000]}") from None


def install_crds(plane: ControlPlane, crds: list[dict[str, Any]]) -> list[str]:
    """CustomResourceDefinitions created and waited for until Established; returns their names."""
    base = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions"
    for crd in crds:
        request(plane, "POST", base, crd)
    names = [crd["metadata"]["name"] for crd in crds]
    deadline = time.monotonic() + CRD_ESTABLISH_TIMEOUT
    for name in names:
        while True:
            status = request(plane, "GET", f"{base}/{name}").get("status") or {}
            conditions = status.get("conditions") or [] if isinstance(status, dict) else []
            if any(c["type"] == "Established" and c["status"] == "True" for c in conditions):
                break
            if time.monotonic() > deadline:
                raise AssertionError(f"CRD {name} not Established in {CRD_ESTABLISH_TIMEOUT}s")
            time.sleep(0.05)  # polling the API server with a deadline
    return names
