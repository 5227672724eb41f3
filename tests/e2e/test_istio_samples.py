"""Istio's own samples that use gateways, TCP routes and egress ServiceEntries, applied unchanged
(tests/e2e/istio_docs/: bookinfo-gateway, httpbin-gateway, helloworld-gateway, tcp-echo-all-v1 and
tcp-echo-20-v2 from istio/istio `samples/`; the egress-control and egress-gateway task pages' YAML), with
the gateways of Istio's default install (Services `istio-ingressgateway` / `istio-egressgateway` in
istio-system, whose port 80 maps to 8080): real gateway Envoys (node type `router`), real sidecars, real
backends on loopback addresses; each test checks what the sample's page says happens.

The external hosts of the egress pages (httpbin.org, www.google.com, edition.cnn.com) are local servers:
the ServiceEntries say `resolution: DNS`, so the Envoys that resolve them (the client's sidecar, the egress
gateway) run in a mount namespace of their own whose /etc/hosts names the local servers (Envoy's resolver
reads it first); nothing on the machine changes. Skipped, with the reason, where `unshare --mount` is not
available."""

from __future__ import annotations

import asyncio
import json
import pathlib
import re
import ssl
import subprocess
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import pytest_asyncio
from aiohttp import web

from meshd.agent.bootstrap import build_bootstrap
from meshd.agent.envoy import EnvoyProcess, default_envoy_path
from meshd.demo.apps import AppServer, start_app
from tests.certs import Authority
from tests.e2e import istio_docs
from tests.e2e.gateway_lab import TcpEcho, client_context, server_context, tcp_line
from tests.e2e.harness import Mesh, eventually, logs_on_failure

pytestmark = [pytest.mark.e2e, pytest.mark.asyncio(loop_scope="module")]

# Pod (or external host) -> host number in the test's loopback subnet.
HOSTS = {
    "ingressgateway": 1,
    "egressgateway": 2,
    "sleep": 3,
    "productpage-v1": 11,
    "details-v1": 12,
    "reviews-v1": 13,
    "reviews-v2": 14,
    "reviews-v3": 15,
    "ratings-v1": 16,
    "httpbin-v1": 21,
    "httpbin-v2": 22,
    "helloworld-v1": 31,
    "helloworld-v2": 32,
    "tcp-echo-v1": 41,
    "tcp-echo-v2": 42,
    "httpbin.org": 51,
    "edition.cnn.com": 52,
    "www.google.com": 53,
}
EXTERNAL = ("httpbin.org", "edition.cnn.com", "www.google.com")
MESH_CONFIG = "outboundTrafficPolicy:\n  mode: REGISTRY_ONLY\n"  # the egress-control page's mesh setting
INGRESS_LISTEN = 8080  # istio-ingressgateway: port 80 -> targetPort 8080
RESERVED_WARNING = "Service istio-system/istio-ingressgateway"  # its status port 15021: a warning only


def hosts_unavailable() -> str | None:
    """Why an Envoy cannot be given its own /etc/hosts here, or None."""
    try:
        probe = subprocess.run(["unshare", "--mount", "true"], capture_output=True, text=True, check=False)
    except FileNotFoundError:
        return "unshare is not installed"
    return None if probe.returncode == 0 else f"unshare --mount: {probe.stderr.strip()}"


def resolving_envoy(work: pathlib.Path, hosts: dict[str, str]) -> str:
    """A launcher running Envoy in a mount namespace of its own whose /etc/hosts maps `hosts` (name -> IP)."""
    hosts_file = work / "hosts"
    hosts_file.write_text("127.0.0.1 localhost\n" + "".join(f"{ip} {name}\n" for name, ip in hosts.items()))
    launcher = work / "envoy-with-hosts"
    launcher.write_text(
        "#!/bin/sh\n"
        f'exec unshare --mount sh -c \'mount --bind "$0" /etc/hosts && exec "$@"\' {hosts_file} '
        f'{default_envoy_path()} "$@"\n'
    )
    launcher.chmod(0o755)
    return str(launcher)


class HttpbinOrg:
    """The stand-in for httpbin.org: `/headers` answers the request's headers, `/delay/<n>` answers after n
    seconds (as httpbin does); `in_flight` counts the requests still being answered."""

    def __init__(self) -> None:
        self.in_flight = 0
        self.runner: web.AppRunner | None = None

    async def start(self, host: str) -> None:
        app = web.Application()
        app.router.add_get("/headers", self._headers)
        app.router.add_get("/delay/{seconds}", self._delay)
        self.runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self.runner.setup()
        await web.TCPSite(self.runner, host, 80).start()

    async def _headers(self, request: web.Request) -> web.Response:
        return web.json_response({"headers": dict(request.headers)})

    async def _delay(self, request: web.Request) -> web.Response:
        self.in_flight += 1
        try:
            await asyncio.sleep(float(request.match_info["seconds"]))
        finally:
            self.in_flight -= 1
        return web.json_response({"url": f"http://{request.host}{request.path}"})

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()


@dataclass
class Samples:
    mesh: Mesh
    ca: Authority
    apps: dict[str, AppServer] = field(default_factory=dict)
    echoes: list[TcpEcho] = field(default_factory=list)
    httpbin_org: HttpbinOrg = field(default_factory=HttpbinOrg)

    def ip(self, pod: str) -> str:
        return self.mesh.ip(HOSTS[pod])

    async def apply(self, step: str) -> None:
        """Make the config directory hold what the cluster holds after `step` (the workloads stay)."""
        state = istio_docs.cluster_state(step)
        for name, document in state.items():
            path = self.mesh.config_dir / name
            if not path.exists() or path.read_text() != document:
                self.mesh.write(name, document)
        keep = set(istio_docs.WORKLOADS) | set(istio_docs.SAMPLE_WORKLOADS)
        for path in sorted(self.mesh.config_dir.glob("*.yaml")):
            if path.name not in state and path.name not in keep:
                path.unlink()

    async def ingress(self, path: str, *, host: str = "gateway.example.com") -> tuple[int, Any]:
        """GET through the ingress gateway's listener for port 80: (status, JSON answer or text)."""
        async with self.mesh.client.get(
            f"http://{self.ip('ingressgateway')}:{INGRESS_LISTEN}{path}", headers={"Host": host}, allow_redirects=False
        ) as resp:
            text = await resp.text()
            try:
                return resp.status, json.loads(text)
            except ValueError:
                return resp.status, text

    async def assert_accepted(self) -> None:
        """Applied unchanged: meshd refused nothing (only the install's status port is warned about) and no
        proxy NACKed anything."""
        errors = await self.mesh.meshd.get_json("/debug/config_errors")
        others = [e for e in errors if e["resource"] != RESERVED_WARNING or e["severity"] != "warning"]
        assert others == [], others
        status = await self.mesh.meshd.get_json("/debug/syncz")
        nacks = [(c["proxy"], t, v["nack_error"]) for c in status for t, v in c["types"].items() if v["nacked"]]
        assert nacks == [], nacks

    async def stat(self, pod: str, pattern: str) -> int:
        """The sum of `pod`'s Envoy counters whose name matches `pattern`."""
        text = await self.mesh.envoys[pod].admin_get("/stats")
        return sum(int(v) for name, v in re.findall(r"^(\S+): (\d+)$", text, re.M) if re.fullmatch(pattern, name))


async def _envoy(mesh: Mesh, *, pod: str, ip: str, namespace: str, node_type: str, envoy_path: str | None) -> None:
    """A plain Envoy fed by meshd over plaintext xDS (as Mesh.sidecar), run by `envoy_path` when given."""
    bootstrap = build_bootstrap(
        node_id=f"{node_type}~{ip}~{pod}.{namespace}~{namespace}.svc.cluster.local", cluster=f"{pod}.{namespace}",
        xds_host="127.0.0.1", xds_port=mesh.meshd.xds_port, admin_host=ip, admin_port=15000, delta=False,
    )  # fmt: skip
    envoy = EnvoyProcess(
        bootstrap=bootstrap, work_dir=mesh.work_dir, admin_host=ip, admin_port=15000, name=pod,
        log_level="warning", envoy_path=envoy_path,
    )  # fmt: skip
    mesh.envoys[pod] = envoy
    await envoy.start()
    await envoy.wait_ready(timeout_s=20)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def samples(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Samples]:
    work = tmp_path_factory.mktemp("istio-samples")
    (work / "mesh.yaml").write_text(MESH_CONFIG)
    ca = Authority("stand-in external hosts CA")
    mesh = Mesh(work_dir=work, delta=False, meshd_args=("--mesh-config", str(work / "mesh.yaml")))
    async with logs_on_failure(mesh) as m:
        found = Samples(m, ca)
        addresses = {pod.replace("-", "_"): m.ip(n) for pod, n in HOSTS.items()}
        for name, text in istio_docs.workloads(addresses).items():
            m.write(name, text)
        for name, text in istio_docs.sample_workloads(addresses).items():
            m.write(name, text)
        await m.meshd.start()
        # The Pods with a sidecar (Bookinfo's productpage, httpbin's) are reached through it; helloworld's
        # and tcp-echo's have none (their sample files do not say `security.istio.io/tlsMode: istio`).
        pods = {"productpage-v1": 8080, "httpbin-v1": 8080, "httpbin-v2": 8080, "helloworld-v1": 5000,
                "helloworld-v2": 5000}  # fmt: skip
        for pod, port in pods.items():
            service, version = pod.rsplit("-", 1)
            app = await start_app(service=service, version=version, pod=pod, host=found.ip(pod), port=port)
            m.apps.append(app)
            found.apps[pod] = app
        await found.httpbin_org.start(found.ip("httpbin.org"))
        for name in EXTERNAL:  # plain HTTP on 80 (httpbin.org: above) and TLS (a certificate for the name) on 443
            if name != "httpbin.org":
                app = await start_app(service=name, version="external", pod=name, host=found.ip(name), port=80)
                m.apps.append(app)
                found.apps[name] = app
            echo = TcpEcho(name)
            found.echoes.append(echo)
            await echo.start(found.ip(name), 443, tls=server_context(ca.issue(name, sans=(name,)), work, name))
        for version in ("v1", "v2"):
            echo = TcpEcho(version)
            found.echoes.append(echo)
            await echo.start(found.ip(f"tcp-echo-{version}"), 9000)
        await m.sidecar(pod="istio-ingressgateway-1", ip=found.ip("ingressgateway"), namespace="istio-system",
                        node_type="router")  # fmt: skip
        for pod in ("productpage-v1", "httpbin-v1", "httpbin-v2"):
            await m.sidecar(pod=pod, ip=found.ip(pod))
        if hosts_unavailable() is None:
            launcher = resolving_envoy(work, {name: found.ip(name) for name in EXTERNAL})
            await _envoy(m, pod="istio-egressgateway-1", ip=found.ip("egressgateway"), namespace="istio-system",
                         node_type="router", envoy_path=launcher)  # fmt: skip
            await _envoy(m, pod="sleep", ip=found.ip("sleep"), namespace="default", node_type="sidecar",
                         envoy_path=launcher)  # fmt: skip
        try:
            yield found
        finally:
            for echo in found.echoes:
                await echo.stop()
            await found.httpbin_org.stop()


def needs_hosts() -> None:
    reason = hosts_unavailable()
    if reason is not None:
        pytest.skip(f"the egress samples need an Envoy with its own /etc/hosts: {reason}")


# -- ingress ----------------------------------------------------------------------------------------


async def test_bookinfo_gateway(samples: Samples) -> None:
    """samples/bookinfo/networking/bookinfo-gateway.yaml (getting started): any host, /productpage and
    Bookinfo's other paths reach productpage (through its sidecar's inbound listener); other paths 404.
    The Gateway says port 80: the ingress gateway listens on 8080, the targetPort of its Service's port 80."""
    await samples.apply("bookinfo-gateway")

    async def productpage() -> Any:
        status, body = await samples.ingress("/productpage")
        return body if status == 200 else None

    body = await eventually(productpage, timeout=30, what="/productpage through the ingress gateway")
    assert body["service"] == "productpage" and body["request"]["path"] == "/productpage", body
    inbound = r"cluster\.inbound\|8080\|\|\.upstream_rq_total"
    assert await samples.stat("productpage-v1", inbound) >= 1  # through productpage's sidecar
    for path in ("/static/style.css", "/login", "/logout", "/api/v1/products/0"):
        status, body = await samples.ingress(path, host="bookinfo.example.com")
        assert status == 200 and body["service"] == "productpage", (path, body)
    for path in ("/", "/productpage/x", "/loginx", "/reviews"):
        assert (await samples.ingress(path))[0] == 404, path
    dump = await samples.mesh.envoys["istio-ingressgateway-1"].config_dump(resource="dynamic_listeners")
    ports = {c["active_state"]["listener"]["address"]["socket_address"]["port_value"] for c in dump["configs"]}
    assert INGRESS_LISTEN in ports and 80 not in ports, ports
    await samples.assert_accepted()


async def test_httpbin_gateway(samples: Samples) -> None:
    """samples/httpbin/httpbin-gateway.yaml: every host and path through the gateway reaches httpbin:8000."""
    await samples.apply("httpbin-gateway")

    async def httpbin() -> Any:
        status, body = await samples.ingress("/headers")
        return body if status == 200 and body["service"] == "httpbin" else None

    await eventually(httpbin, timeout=30, what="/headers through the gateway to httpbin")
    seen: Counter[str] = Counter()
    for i in range(20):
        status, body = await samples.ingress(f"/status/{i}", host=f"h{i}.example.org")
        assert status == 200 and body["service"] == "httpbin", body
        seen[body["version"]] += 1
    assert set(seen) == {"v1", "v2"}, seen  # both Pods behind the Service
    await samples.assert_accepted()


async def test_helloworld_gateway(samples: Samples) -> None:
    """samples/helloworld/helloworld-gateway.yaml: /hello reaches helloworld:5000 (v1 and v2); nothing
    else is routed."""
    await samples.apply("helloworld-gateway")

    async def hello() -> Any:
        status, body = await samples.ingress("/hello")
        return body if status == 200 and body["service"] == "helloworld" else None

    await eventually(hello, timeout=30, what="/hello through the gateway to helloworld")
    versions = Counter()
    for _ in range(20):
        status, body = await samples.ingress("/hello")
        assert status == 200 and body["service"] == "helloworld", body
        versions[body["version"]] += 1
    assert set(versions) == {"v1", "v2"}, versions
    assert (await samples.ingress("/headers"))[0] == 404
    assert (await samples.ingress("/hello/there"))[0] == 404
    await samples.assert_accepted()


async def test_tcp_echo_traffic_shifting(samples: Samples) -> None:
    """istio.io .../tcp-traffic-shifting with samples/tcp-echo: tcp-echo-all-v1 sends every connection to the
    gateway's port 31400 to v1; tcp-echo-20-v2 shifts 20 % of them to v2."""
    gateway = samples.ip("ingressgateway")

    async def answers(count: int) -> Counter[str]:
        seen: Counter[str] = Counter()
        for _ in range(count):
            seen[(await tcp_line(gateway, 31400, text="hello")).split()[0]] += 1
        return seen

    await samples.apply("tcp-echo/all-v1")

    async def only_v1() -> bool:
        return await answers(10) == Counter({"v1": 10})

    await eventually(only_v1, timeout=30, what="every connection to tcp-echo v1")
    assert await answers(40) == Counter({"v1": 40})
    assert await tcp_line(gateway, 31400, text="hello") == "v1 hello"

    await samples.apply("tcp-echo/20-v2")

    async def some_v2() -> bool:
        return (await answers(20))["v2"] > 0

    await eventually(some_v2, timeout=30, what="the 80/20 shift to reach the gateway")
    seen = await answers(200)
    assert set(seen) == {"v1", "v2"}, seen
    assert 125 <= seen["v1"] <= 190, seen  # 80 % of 200 (binomial sd ~5.7)
    await samples.assert_accepted()


# -- egress -----------------------------------------------------------------------------------------


async def sleep_get(samples: Samples, host: str, path: str, *, timeout: float = 15) -> tuple[int, Any, float]:
    """`curl http://<host><path>` from the sleep pod, through its sidecar: (status, answer, seconds)."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    status, _, body = await samples.mesh.request(
        via_ip=samples.ip("sleep"), host=host, path=path, port=80, timeout=timeout
    )
    try:
        answer: Any = json.loads(body)
    except ValueError:
        answer = body
    return status, answer, loop.time() - started


async def sleep_tls(samples: Samples, name: str) -> str:
    """`curl https://<name>` from the sleep pod: TLS through its sidecar's port 443, the server verified."""
    return await tcp_line(samples.ip("sleep"), 443, text="hi", tls=client_context(samples.ca), sni=name)


async def test_egress_control_service_entries_and_timeout(samples: Samples) -> None:
    """istio.io .../egress-control with REGISTRY_ONLY: the httpbin-ext ServiceEntry (resolution DNS) lets
    the sidecar call httpbin.org; the google one, TLS to www.google.com by SNI; a host no ServiceEntry
    names is refused. The httpbin-ext VirtualService's 3 s timeout turns /delay/5 into a 504 after 3 s."""
    needs_hosts()
    await samples.apply("egress-control/httpbin-ext")

    async def headers() -> Any:
        status, answer, _ = await sleep_get(samples, "httpbin.org", "/headers")
        return answer if status == 200 else None

    answer = await eventually(headers, timeout=30, what="sleep -> sidecar -> httpbin.org")
    assert answer["headers"]["Host"] == "httpbin.org", answer
    resolved = await samples.stat("sleep", r"cluster\.outbound\|80\|\|httpbin\.org\.upstream_rq_total")
    assert resolved >= 1  # through the ServiceEntry's cluster (Envoy resolved httpbin.org)
    # A Host no ServiceEntry names is not sent anywhere. Without traffic capture the sidecar has no original
    # destination to pass it to: 404 (a captured sidecar answers 502 from `block_all`: test_egress_capture).
    assert (await sleep_get(samples, "unknown.example.org", "/headers"))[0] == 404
    assert await eventually(lambda: sleep_tls(samples, "www.google.com"), what="TLS to www.google.com") == (
        "www.google.com hi"
    )
    with pytest.raises((OSError, ssl.SSLError)):
        await sleep_tls(samples, "edition.cnn.com")  # no ServiceEntry: no chain for its SNI
    status, _, elapsed = await sleep_get(samples, "httpbin.org", "/delay/5")
    assert status == 200 and elapsed >= 4.9, (status, elapsed)

    await samples.apply("egress-control/timeout")

    async def times_out() -> float | None:
        status, _, elapsed = await sleep_get(samples, "httpbin.org", "/delay/5")
        return elapsed if status == 504 else None

    elapsed = await eventually(times_out, timeout=40, what="the 3 s timeout on httpbin.org")
    assert 2.9 <= elapsed < 4.5, elapsed
    await eventually(lambda: _idle(samples.httpbin_org), timeout=10, what="httpbin.org to finish the delayed answers")
    await samples.assert_accepted()


async def _idle(server: HttpbinOrg) -> bool:
    return server.in_flight == 0


async def test_egress_gateway_http(samples: Samples) -> None:
    """istio.io .../egress-gateway, "Egress gateway for HTTP traffic": the sleep pod's request for
    edition.cnn.com goes from its sidecar to the egress gateway (subset cnn, port 80: the gateway's 8080)
    and from there to edition.cnn.com; the sidecar never calls edition.cnn.com itself."""
    needs_hosts()
    await samples.apply("egress-gateway/http")

    async def politics() -> Any:
        status, answer, _ = await sleep_get(samples, "edition.cnn.com", "/politics")
        return answer if status == 200 else None

    answer = await eventually(politics, timeout=30, what="sleep -> sidecar -> egress gateway -> edition.cnn.com")
    assert answer["service"] == "edition.cnn.com" and answer["request"]["path"] == "/politics", answer
    gateway = r"istio-egressgateway\.istio-system\.svc\.cluster\.local"
    to_gateway = rf"cluster\.outbound\|80\|cnn\|{gateway}\.upstream_rq_total"
    to_cnn = r"cluster\.outbound\|80\|\|edition\.cnn\.com\.upstream_rq_total"
    assert await samples.stat("sleep", to_gateway) >= 1
    assert await samples.stat("sleep", to_cnn) == 0
    assert await samples.stat("istio-egressgateway-1", to_cnn) >= 1
    await samples.assert_accepted()


async def test_egress_gateway_https_passthrough(samples: Samples) -> None:
    """istio.io .../egress-gateway, "Egress gateway for HTTPS traffic": the sleep pod's TLS to
    edition.cnn.com goes by SNI from its sidecar to the egress gateway's PASSTHROUGH server (port 443: the
    gateway's 8443) and from there by SNI to edition.cnn.com, whose own certificate the client verifies."""
    needs_hosts()
    await samples.apply("egress-gateway/https")
    via = r"cluster\.outbound\|443\|cnn\|istio-egressgateway\.istio-system\.svc\.cluster\.local\.upstream_cx_total"
    direct = r"cluster\.outbound\|443\|\|edition\.cnn\.com\.upstream_cx_total"

    async def through_gateway() -> str | None:
        reply = await sleep_tls(samples, "edition.cnn.com")
        return reply if await samples.stat("sleep", via) >= 1 else None

    reply = await eventually(through_gateway, timeout=30, what="sleep -> sidecar -> egress gateway -> edition.cnn.com")
    assert reply == "edition.cnn.com hi"  # the server's own certificate, verified by the client
    before = await samples.stat("sleep", direct)  # (while the previous step's config was still in place)
    for _ in range(5):
        assert await sleep_tls(samples, "edition.cnn.com") == "edition.cnn.com hi"
    assert await samples.stat("sleep", via) >= 6
    assert await samples.stat("istio-egressgateway-1", direct) >= 6
    assert await samples.stat("sleep", direct) == before  # never straight from the sidecar any more
    await samples.assert_accepted()
