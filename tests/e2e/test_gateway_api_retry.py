"""HTTPRoute `retry` (GEP-1731) and `timeouts.backendRequest` through a real gateway Envoy fed by meshd
(standalone from YAML) to a real tiny HTTP server that fails the first N requests of each key and answers
slowly when asked: retries with `codes` turn a twice-failing backend into a 200 (two attempts, not one; none
without a retry stanza), `backoff` spaces the tries as Envoy's retry back-off base interval (seen by the
backend), and a backendRequest timeout answers 504 where a longer request timeout alone lets the slow answer
through."""

from __future__ import annotations

import asyncio
import itertools
from collections import Counter
from collections.abc import AsyncIterator

import aiohttp
import pytest
import pytest_asyncio
from aiohttp import web

from tests.e2e.agents import write_ca_tokens
from tests.e2e.harness import Mesh, eventually, free_port, logs_on_failure

pytestmark = [pytest.mark.e2e, pytest.mark.asyncio(loop_scope="module")]

GW_NS = "istio-ingress"
CONFIG = f"""\
apiVersion: v1
kind: Pod
metadata: {{name: gw-1, namespace: {GW_NS}, labels: {{gateway.networking.k8s.io/gateway-name: gw}}}}
status: {{podIP: {{ip}}}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: gw, namespace: {GW_NS}}}
spec:
  gatewayClassName: istio
  listeners:
  - {{name: http, port: 80, protocol: HTTP, allowedRoutes: {{namespaces: {{from: All}}}}}}
---
apiVersion: v1
kind: Service
metadata: {{name: flaky, namespace: default}}
spec:
  ports: [{{name: http, port: 80, targetPort: {{port}}}}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: flaky-1, namespace: default, labels: {{kubernetes.io/service-name: flaky}}}}
addressType: IPv4
ports: [{{name: http, port: {{port}}}}]
endpoints: [{{addresses: [{{app_ip}}]}}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: retry, namespace: default}}
spec:
  parentRefs: [{{name: gw, namespace: {GW_NS}}}]
  hostnames: [retry.example.com]
  rules:
  - matches: [{{path: {{type: PathPrefix, value: /twice}}}}]
    retry: {{attempts: 2, codes: [500]}}
    backendRefs: [{{name: flaky, port: 80}}]
  - matches: [{{path: {{type: PathPrefix, value: /once}}}}]
    retry: {{attempts: 1, codes: [500]}}
    backendRefs: [{{name: flaky, port: 80}}]
  - matches: [{{path: {{type: PathPrefix, value: /backoff}}}}]
    retry: {{attempts: 1, codes: [500], backoff: 1s}}
    backendRefs: [{{name: flaky, port: 80}}]
  - matches: [{{path: {{type: PathPrefix, value: /none}}}}]
    backendRefs: [{{name: flaky, port: 80}}]
  - matches: [{{path: {{type: PathPrefix, value: /backend-timeout}}}}]
    timeouts: {{request: 5s, backendRequest: 300ms}}
    backendRefs: [{{name: flaky, port: 80}}]
  - matches: [{{path: {{type: PathPrefix, value: /single-try}}}}]
    timeouts: {{backendRequest: 300ms}}
    retry: {{attempts: 0}}
    backendRefs: [{{name: flaky, port: 80}}]
  - matches: [{{path: {{type: PathPrefix, value: /request-timeout}}}}]
    timeouts: {{request: 5s}}
    backendRefs: [{{name: flaky, port: 80}}]
"""


class Flaky:
    """`/<route>/<key>?fail=N&delay=S`: answers 500 to the first N requests of each key, then 200 (after S
    seconds each time, if given); counts the requests of each key."""

    def __init__(self) -> None:
        self.seen: Counter[str] = Counter()
        self.times: dict[str, list[float]] = {}  # when each request of a key arrived (the event loop's clock)

    async def handle(self, request: web.Request) -> web.Response:
        key = request.path.rsplit("/", 1)[-1]
        self.seen[key] += 1
        self.times.setdefault(key, []).append(asyncio.get_running_loop().time())
        delay = float(request.query.get("delay", "0"))
        if delay:
            await asyncio.sleep(delay)
        if self.seen[key] <= int(request.query.get("fail", "0")):
            return web.Response(status=500, text=f"failing {self.seen[key]}")
        return web.Response(text=f"ok after {self.seen[key]}")


class Lab:
    def __init__(self, mesh: Mesh, flaky: Flaky) -> None:
        self.mesh, self.flaky = mesh, flaky
        self.keys = itertools.count()
        self.client = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=15))

    def key(self) -> str:
        return f"k{next(self.keys)}"

    async def get(self, path: str) -> tuple[int, float]:
        loop = asyncio.get_running_loop()
        start = loop.time()
        url = f"http://{self.mesh.ip(1)}:80{path}"
        async with self.client.get(url, headers={"Host": "retry.example.com"}) as resp:
            await resp.read()
            return resp.status, loop.time() - start


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def lab(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Lab]:
    """meshd; a gateway Envoy (router, istio-ingress) at .1; the flaky HTTP server at .11."""
    work = tmp_path_factory.mktemp("gateway-api-retry")
    tokens = write_ca_tokens(work / "tokens.yaml", {"tok-gw": (GW_NS, "gw-istio")})
    mesh = Mesh(work_dir=work, delta=True, meshd_args=("--ca-token-file", str(tokens)))
    flaky, port = Flaky(), free_port()
    app = web.Application()
    app.router.add_get("/{tail:.*}", flaky.handle)
    runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=1.0)
    async with logs_on_failure(mesh) as m:
        await runner.setup()
        await web.TCPSite(runner, m.ip(11), port).start()
        config = CONFIG.replace("{ip}", m.ip(1)).replace("{port}", str(port)).replace("{app_ip}", m.ip(11))
        m.write("config.yaml", config)
        await m.meshd.start()
        await m.sidecar(pod="gw-1", ip=m.ip(1), namespace=GW_NS, token="tok-gw", node_type="router")
        lab = Lab(m, flaky)
        try:
            yield lab
        finally:
            await lab.client.close()
            await runner.cleanup()


async def _served(lab: Lab) -> None:
    async def ok() -> bool:
        return (await lab.get(f"/none/{lab.key()}"))[0] == 200

    await eventually(ok, timeout=30, what="the HTTPRoute through the gateway")


async def test_retry_attempts_and_codes(lab: Lab) -> None:
    await _served(lab)
    # two retries on 500: a backend failing twice answers 200 on the third try
    key = lab.key()
    assert (await lab.get(f"/twice/{key}?fail=2"))[0] == 200
    assert lab.flaky.seen[key] == 3
    # one retry is not enough for it: the second 500 is the answer
    key = lab.key()
    assert (await lab.get(f"/once/{key}?fail=2"))[0] == 500
    assert lab.flaky.seen[key] == 2
    # no retry stanza: Istio's default policy does not retry a 500
    key = lab.key()
    assert (await lab.get(f"/none/{key}?fail=1"))[0] == 500
    assert lab.flaky.seen[key] == 1


async def test_backend_request_timeout_answers_504_where_the_request_timeout_does_not(lab: Lab) -> None:
    await _served(lab)
    status, took = await lab.get(f"/backend-timeout/{lab.key()}?delay=1.5")
    assert status == 504 and took < 1.4, (status, took)
    status, took = await lab.get(f"/single-try/{lab.key()}?delay=1.5")
    assert status == 504 and took < 1.4, (status, took)
    # the request timeout alone (5s) lets the 1.5s answer through
    status, took = await lab.get(f"/request-timeout/{lab.key()}?delay=1.5")
    assert status == 200 and took >= 1.5, (status, took)


async def test_retry_backoff_spaces_the_tries(lab: Lab) -> None:
    """`backoff: 1s` is Envoy's retry back-off base interval: the first retry waits a random time below 1s (Envoy's
    full jitter), where Envoy's default (25ms) waits below 25ms. Of 10 requests failing twice, each tried twice
    (one retry), some gap between the tries exceeds 300ms (with the 1s base, all stay below 300ms with a
    probability of 0.3**10; with the default base, none exceeds it) and none exceeds the base by much."""
    await _served(lab)
    keys = [lab.key() for _ in range(10)]
    answers = await asyncio.gather(*(lab.get(f"/backoff/{key}?fail=5") for key in keys))
    assert [status for status, _ in answers] == [500] * 10, answers
    assert [lab.flaky.seen[key] for key in keys] == [2] * 10
    gaps = sorted(lab.flaky.times[key][1] - lab.flaky.times[key][0] for key in keys)
    assert gaps[-1] > 0.3, gaps
    assert gaps[-1] < 2.0, gaps  # below the 1s base (+ a loaded machine's delays)
