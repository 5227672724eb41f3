"""EnvoyFilter through real Envoy sidecars: a Lua filter inserted before the router answers with its header,
MERGE patches reach a cluster and the HTTP connection manager, REMOVE takes a filter out (a VirtualService's
fault abort stops acting), Istio's local rate-limit sample applies unchanged (429 with x-local-rate-limit
after its 10 /productpage requests, other paths unaffected), a per-route limit affects only its route, and
EnvoyFilters Envoy would refuse are reported on the EnvoyFilter while the rest of the config keeps flowing
(one caught by meshd's validation, one only Envoy sees: a NACK)."""

from __future__ import annotations

import json
import pathlib
from collections.abc import AsyncIterator
from typing import Any

import pytest

from tests.e2e.conftest import SERVICE, virtual_service
from tests.e2e.harness import Mesh, eventually, logs_on_failure
from tests.e2e.ratelimit_service import RATELIMIT_SERVICE, start_rate_limit_service

pytestmark = pytest.mark.e2e
HCM = "envoy.filters.network.http_connection_manager"
WEB_CLUSTER = "outbound|9080||web.default.svc.cluster.local"
PODS = """\
apiVersion: v1
kind: Pod
metadata: {{name: client, namespace: default, labels: {{app: client, security.istio.io/tlsMode: istio}}}}
status: {{podIP: {client}}}
---
apiVersion: v1
kind: Service
metadata: {{name: productpage, namespace: default}}
spec:
  selector: {{app: productpage}}
  ports: [{{name: http, port: 9080, targetPort: 8000}}]
---
apiVersion: v1
kind: Pod
metadata: {{name: productpage, namespace: default, labels: {{app: productpage, security.istio.io/tlsMode: istio}}}}
status: {{podIP: {productpage}}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: productpage-1, namespace: default, labels: {{kubernetes.io/service-name: productpage}}}}
addressType: IPv4
ports: [{{name: http, port: 8000}}]
endpoints:
- addresses: [{productpage}]
  targetRef: {{kind: Pod, name: productpage, namespace: default}}
"""
# Istio's samples/ratelimit/local-rate-limit-service.yaml, as Istio ships it
ISTIO_LOCAL_RATE_LIMIT_SAMPLE = pathlib.Path(__file__).parent / "istio_docs" / "local-rate-limit-service.yaml"

CLIENT_PATCHES = """\
apiVersion: networking.istio.io/v1alpha3
kind: EnvoyFilter
metadata: {name: client-patches, namespace: default}
spec:
  workloadSelector: {labels: {app: client}}
  configPatches:
  - applyTo: HTTP_FILTER
    match:
      context: SIDECAR_OUTBOUND
      listener:
        portNumber: 9080
        filterChain:
          filter:
            name: envoy.filters.network.http_connection_manager
            subFilter: {name: envoy.filters.http.router}
    patch:
      operation: INSERT_BEFORE
      value:
        name: envoy.filters.http.lua
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.http.lua.v3.Lua
          inlineCode: |
            function envoy_on_response(handle)
              handle:headers():add("x-lua", "from-envoyfilter")
            end
  - applyTo: CLUSTER
    match:
      context: SIDECAR_OUTBOUND
      cluster: {service: web.default.svc.cluster.local, portNumber: 9080}
    patch:
      operation: MERGE
      value: {connect_timeout: 7s}
  - applyTo: NETWORK_FILTER
    match:
      context: SIDECAR_OUTBOUND
      listener: {portNumber: 9080, filterChain: {filter: {name: envoy.filters.network.http_connection_manager}}}
    patch:
      operation: MERGE
      value:
        name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: envoyfilter_outbound
"""
FAULT_VS = """\
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: web, namespace: default}
spec:
  hosts: [web]
  http:
  - fault: {abort: {httpStatus: 503, percentage: {value: 100}}}
    route: [{destination: {host: web, subset: v1}}]
"""
REMOVE_FAULT = """\
apiVersion: networking.istio.io/v1alpha3
kind: EnvoyFilter
metadata: {name: no-fault, namespace: default}
spec:
  workloadSelector: {labels: {app: client}}
  configPatches:
  - applyTo: HTTP_FILTER
    match:
      context: SIDECAR_OUTBOUND
      listener: {filterChain: {filter: {name: envoy.filters.network.http_connection_manager,
                                        subFilter: {name: envoy.filters.http.fault}}}}
    patch: {operation: REMOVE}
"""
ROUTES_VS = """\
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: web, namespace: default}
spec:
  hosts: [web]
  http:
  - name: limited
    match: [{uri: {prefix: /limited}}]
    route: [{destination: {host: web, subset: v1}}]
  - name: free
    route: [{destination: {host: web, subset: v1}}]
"""
# Istio's local rate limit task, per route: the filter on the client's outbound HTTP connection managers
# (disabled by itself), a token bucket of 3 on the route named `limited` only
PER_ROUTE_LIMIT = """\
apiVersion: networking.istio.io/v1alpha3
kind: EnvoyFilter
metadata: {name: per-route-limit, namespace: default}
spec:
  workloadSelector: {labels: {app: client}}
  configPatches:
  - applyTo: HTTP_FILTER
    match:
      context: SIDECAR_OUTBOUND
      listener: {filterChain: {filter: {name: envoy.filters.network.http_connection_manager}}}
    patch:
      operation: INSERT_BEFORE
      value:
        name: envoy.filters.http.local_ratelimit
        typed_config:
          "@type": type.googleapis.com/udpa.type.v1.TypedStruct
          type_url: type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit
          value: {stat_prefix: http_local_rate_limiter}
  - applyTo: HTTP_ROUTE
    match:
      context: SIDECAR_OUTBOUND
      routeConfiguration:
        vhost: {name: "web.default.svc.cluster.local:9080", route: {name: limited}}
    patch:
      operation: MERGE
      value:
        typed_per_filter_config:
          envoy.filters.http.local_ratelimit:
            "@type": type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit
            stat_prefix: http_local_rate_limiter
            token_bucket: {max_tokens: 3, tokens_per_fill: 3, fill_interval: 600s}
            filter_enabled: {runtime_key: rl_enabled, default_value: {numerator: 100, denominator: HUNDRED}}
            filter_enforced: {runtime_key: rl_enforced, default_value: {numerator: 100, denominator: HUNDRED}}
            response_headers_to_add:
            - append_action: OVERWRITE_IF_EXISTS_OR_ADD
              header: {key: x-local-rate-limit, value: "true"}
"""
BAD_TIMEOUT = """\
apiVersion: networking.istio.io/v1alpha3
kind: EnvoyFilter
metadata: {name: bad-timeout, namespace: default}
spec:
  workloadSelector: {labels: {app: client}}
  configPatches:
  - applyTo: CLUSTER
    match: {cluster: {service: web.default.svc.cluster.local}}
    patch: {operation: MERGE, value: {connect_timeout: 0s}}
"""
BAD_LUA = """\
apiVersion: networking.istio.io/v1alpha3
kind: EnvoyFilter
metadata: {name: bad-lua, namespace: default}
spec:
  workloadSelector: {labels: {app: client}}
  configPatches:
  - applyTo: HTTP_FILTER
    match:
      context: SIDECAR_OUTBOUND
      listener: {filterChain: {filter: {name: envoy.filters.network.http_connection_manager,
                                        subFilter: {name: envoy.filters.http.router}}}}
    patch:
      operation: INSERT_BEFORE
      value:
        name: envoy.filters.http.lua
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.http.lua.v3.Lua
          inlineCode: "function envoy_on_request(handle) this is not lua end"
"""


GATEWAY = """\
apiVersion: v1
kind: Pod
metadata: {{name: istio-ingressgateway-1, namespace: istio-system, labels: {{istio: ingressgateway}}}}
status: {{podIP: {ip}}}
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: bookinfo-gateway, namespace: default}}
spec:
  selector: {{istio: ingressgateway}}
  servers:
  - port: {{number: 8080, name: http, protocol: HTTP}}
    hosts: [bookinfo.example.com]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: bookinfo, namespace: default}}
spec:
  hosts: [bookinfo.example.com]
  gateways: [bookinfo-gateway]
  http:
  - route: [{{destination: {{host: productpage, port: {{number: 9080}}}}}}]
"""
# Istio's local rate limit task on the ingress gateway: 4 requests a minute for the whole gateway
GATEWAY_LOCAL_RATE_LIMIT = """\
apiVersion: networking.istio.io/v1alpha3
kind: EnvoyFilter
metadata: {name: filter-local-ratelimit-gateway, namespace: istio-system}
spec:
  workloadSelector: {labels: {istio: ingressgateway}}
  configPatches:
  - applyTo: HTTP_FILTER
    match:
      context: GATEWAY
      listener: {filterChain: {filter: {name: envoy.filters.network.http_connection_manager}}}
    patch:
      operation: INSERT_BEFORE
      value:
        name: envoy.filters.http.local_ratelimit
        typed_config:
          "@type": type.googleapis.com/udpa.type.v1.TypedStruct
          type_url: type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit
          value:
            stat_prefix: http_local_rate_limiter
            token_bucket: {max_tokens: 4, tokens_per_fill: 4, fill_interval: 60s}
            filter_enabled: {runtime_key: lrl_enabled, default_value: {numerator: 100, denominator: HUNDRED}}
            filter_enforced: {runtime_key: lrl_enforced, default_value: {numerator: 100, denominator: HUNDRED}}
            response_headers_to_add:
            - append: false
              header: {key: x-local-rate-limit, value: "true"}
"""
# Istio's global rate limit task (filter-ratelimit, filter-ratelimit-svc), on the client's sidecar: the
# ratelimit HTTP filter calling the rate-limit service's cluster, the :path as descriptor PATH on web's routes
GLOBAL_RATE_LIMIT = """\
apiVersion: networking.istio.io/v1alpha3
kind: EnvoyFilter
metadata: {name: filter-ratelimit, namespace: default}
spec:
  workloadSelector: {labels: {app: client}}
  configPatches:
  - applyTo: HTTP_FILTER
    match:
      context: SIDECAR_OUTBOUND
      listener:
        filterChain:
          filter:
            name: envoy.filters.network.http_connection_manager
            subFilter: {name: envoy.filters.http.router}
    patch:
      operation: INSERT_BEFORE
      value:
        name: envoy.filters.http.ratelimit
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.http.ratelimit.v3.RateLimit
          domain: ratelimit
          failure_mode_deny: true
          timeout: 10s
          rate_limit_service:
            grpc_service:
              envoy_grpc: {cluster_name: "outbound|8081||ratelimit.default.svc.cluster.local", authority: ratelimit}
            transport_api_version: V3
---
apiVersion: networking.istio.io/v1alpha3
kind: EnvoyFilter
metadata: {name: filter-ratelimit-svc, namespace: default}
spec:
  workloadSelector: {labels: {app: client}}
  configPatches:
  - applyTo: VIRTUAL_HOST
    match:
      context: SIDECAR_OUTBOUND
      routeConfiguration: {vhost: {name: "web.default.svc.cluster.local:9080", route: {action: ANY}}}
    patch:
      operation: MERGE
      value:
        rate_limits:
        - actions:
          - request_headers: {header_name: ":path", descriptor_key: PATH}
"""


@pytest.fixture
async def mesh(tmp_path: pathlib.Path) -> AsyncIterator[Mesh]:
    """meshd + sidecars: client (.1), web-v1 (.2), web-v2 (.3), productpage (.4, app on port 8000)."""
    async with logs_on_failure(Mesh(work_dir=tmp_path, delta=False)) as m:
        m.write("web.yaml", SERVICE.format(v1=m.ip(2), v2=m.ip(3)))
        m.write("web-vs.yaml", virtual_service(100, 0))
        m.write("pods.yaml", PODS.format(client=m.ip(1), productpage=m.ip(4)))
        await m.meshd.start()
        await m.app(service="web", version="v1", pod="web-v1", ip=m.ip(2))
        await m.app(service="web", version="v2", pod="web-v2", ip=m.ip(3))
        await m.app(service="productpage", version="v1", pod="productpage", ip=m.ip(4), port=8000)
        for pod, host in (("client", 1), ("web-v1", 2), ("web-v2", 3), ("productpage", 4)):
            await m.sidecar(pod=pod, ip=m.ip(host))
        yield m


async def _get(mesh: Mesh, path: str = "/", host: str = "web") -> tuple[int, dict[str, str]]:
    status, headers, _ = await mesh.request(via_ip=mesh.ip(1), host=host, path=path)
    return status, headers


async def _errors_on(mesh: Mesh, resource: str) -> list[str]:
    return [e["message"] for e in await mesh.meshd.get_json("/debug/config_errors") if e["resource"] == resource]


async def _cluster(mesh: Mesh, name: str) -> dict[str, Any]:
    dump = await mesh.envoys["client"].config_dump(resource="dynamic_active_clusters")
    return next(c["cluster"] for c in dump["configs"] if c["cluster"]["name"] == name)


async def test_lua_filter_cluster_and_hcm_merges_reach_the_client_sidecar(mesh: Mesh) -> None:
    assert "x-lua" not in (await _get(mesh))[1]
    mesh.write("client-ef.yaml", CLIENT_PATCHES)

    async def lua_header() -> bool:
        status, headers = await _get(mesh)
        return status == 200 and headers.get("x-lua") == "from-envoyfilter"

    await eventually(lua_header, what="the Lua filter's response header")
    assert (await _cluster(mesh, WEB_CLUSTER))["connect_timeout"] == "7s"
    listeners = json.dumps(await mesh.envoys["client"].config_dump(resource="dynamic_listeners"))
    assert '"stat_prefix": "envoyfilter_outbound"' in listeners
    assert not await _errors_on(mesh, "EnvoyFilter default/client-patches")
    # the EnvoyFilter deleted: the generated config comes back as it was
    (mesh.config_dir / "client-ef.yaml").unlink()
    await eventually(lambda: _no_lua(mesh), what="the Lua header to go with the EnvoyFilter")
    assert (await _cluster(mesh, WEB_CLUSTER))["connect_timeout"] != "7s"


async def _no_lua(mesh: Mesh) -> bool:
    status, headers = await _get(mesh)
    return status == 200 and "x-lua" not in headers


async def test_remove_takes_the_fault_filter_out(mesh: Mesh) -> None:
    mesh.write("web-vs.yaml", FAULT_VS)
    await eventually(lambda: _status_is(mesh, 503), what="the fault abort")
    mesh.write("no-fault.yaml", REMOVE_FAULT)
    await eventually(lambda: _status_is(mesh, 200), what="the fault filter removed by the EnvoyFilter")
    listeners = json.dumps(await mesh.envoys["client"].config_dump(resource="dynamic_listeners"))
    assert "envoy.filters.http.fault" not in listeners


async def _status_is(mesh: Mesh, wanted: int, path: str = "/", host: str = "web") -> bool:
    return (await _get(mesh, path, host))[0] == wanted


async def test_istio_local_rate_limit_sample_applies_unchanged(mesh: Mesh) -> None:
    """10 /productpage requests a minute, 100 in all, on the productpage sidecar's inbound side."""
    mesh.write("local-rate-limit-service.yaml", ISTIO_LOCAL_RATE_LIMIT_SAMPLE.read_text())

    async def applied() -> bool:
        listeners = json.dumps(await mesh.envoys["productpage"].config_dump(resource="dynamic_listeners"))
        return "envoy.filters.http.local_ratelimit" in listeners and "header_match" in listeners

    await eventually(applied, what="the sample's filter and route limits on the productpage sidecar")
    assert not await _errors_on(mesh, "EnvoyFilter istio-system/filter-local-ratelimit-svc")
    for i in range(10):
        status, _ = await _get(mesh, "/productpage", host="productpage")
        assert status == 200, i
    status, headers = await _get(mesh, "/productpage", host="productpage")
    assert status == 429 and headers.get("x-local-rate-limit") == "true", (status, headers)
    assert headers.get("x-ratelimit-limit") is not None  # enable_x_ratelimit_headers DRAFT_VERSION_03
    assert await _status_is(mesh, 200, "/reviews", host="productpage")  # only /productpage is at its limit
    assert await _status_is(mesh, 200, "/")  # web's sidecars are not selected


async def test_a_per_route_limit_affects_only_its_route(mesh: Mesh) -> None:
    mesh.write("web-vs.yaml", ROUTES_VS)
    mesh.write("per-route-limit.yaml", PER_ROUTE_LIMIT)

    async def applied() -> bool:
        routes = json.dumps(await mesh.envoys["client"].config_dump(resource="dynamic_route_configs"))
        return "envoy.filters.http.local_ratelimit" in routes

    await eventually(applied, what="the per-route limit on the client")
    statuses = [(await _get(mesh, "/limited/x"))[0] for _ in range(3)]
    assert statuses == [200, 200, 200]
    status, headers = await _get(mesh, "/limited/x")
    assert status == 429 and headers.get("x-local-rate-limit") == "true"
    assert [(await _get(mesh, "/other"))[0] for _ in range(6)] == [200] * 6  # the other route: no limit


async def test_envoyfilters_envoy_would_refuse_are_reported_and_the_rest_keeps_flowing(mesh: Mesh) -> None:
    mesh.write("client-ef.yaml", CLIENT_PATCHES)
    mesh.write("bad-timeout.yaml", BAD_TIMEOUT)

    async def refused() -> list[str]:
        found = await _errors_on(mesh, "EnvoyFilter default/bad-timeout")
        assert found and "connect_timeout" in found[0] and "refused by Envoy" in found[0], found
        return found

    await eventually(refused, what="the bad EnvoyFilter to be reported")
    await eventually(lambda: _cluster_timeout(mesh, "7s"), what="the good EnvoyFilter's patch to apply")
    # caught by meshd: nothing was sent that Envoy refused
    assert not [e for e in await mesh.meshd.get_json("/debug/config_errors") if "Envoy rejected" in e["message"]]

    # a Lua script that does not compile: only Envoy sees it (a NACK), reported on the EnvoyFilter
    mesh.write("bad-lua.yaml", BAD_LUA)

    async def nacked() -> list[str]:
        found = await _errors_on(mesh, "EnvoyFilter default/bad-lua")
        assert found and "Envoy rejected LDS resource" in found[0], found
        return found

    await eventually(nacked, timeout=20, what="the NACK to be reported on the EnvoyFilter")
    assert await _status_is(mesh, 200)  # the listener Envoy accepted before keeps serving
    mesh.write("web-vs.yaml", virtual_service(0, 100))  # the rest keeps flowing: routes move to v2

    async def moved() -> bool:
        status, _, body = await mesh.request(via_ip=mesh.ip(1), host="web")
        return status == 200 and json.loads(body)["version"] == "v2"

    await eventually(moved, what="a VirtualService change to reach the client while its listener is held")
    (mesh.config_dir / "bad-lua.yaml").unlink()
    await eventually(lambda: _no_errors(mesh, "EnvoyFilter default/bad-lua"), what="the NACK report to go")


async def _cluster_timeout(mesh: Mesh, wanted: str) -> bool:
    return bool((await _cluster(mesh, WEB_CLUSTER))["connect_timeout"] == wanted)


async def _no_errors(mesh: Mesh, resource: str) -> bool:
    return not await _errors_on(mesh, resource)


async def test_global_rate_limit_asks_the_rate_limit_service(mesh: Mesh) -> None:
    """Istio's global rate limiting: Envoy's ratelimit filter asks the test's gRPC rate-limit service
    (envoy.service.ratelimit.v3) about each request's PATH descriptor; the service decides."""
    server, service = await start_rate_limit_service(mesh.ip(5), 8081, limits={("ratelimit", "PATH", "/limited"): 2})
    try:
        mesh.write("ratelimit.yaml", RATELIMIT_SERVICE.format(ip=mesh.ip(5)))
        mesh.write("global-rate-limit.yaml", GLOBAL_RATE_LIMIT)

        async def asked() -> bool:
            await _get(mesh, "/free")
            return ("ratelimit", (("PATH", "/free"),)) in service.seen

        await eventually(asked, what="the client's sidecar to ask the rate-limit service")
        statuses = [(await _get(mesh, "/limited"))[0] for _ in range(4)]
        assert statuses == [200, 200, 429, 429], statuses  # the service's limit of 2
        assert [(await _get(mesh, "/free"))[0] for _ in range(4)] == [200] * 4
    finally:
        await server.stop(None)
    # the service gone: failure_mode_deny refuses what it cannot ask about (the decision is the service's)
    await eventually(lambda: _status_is(mesh, 500, "/free"), what="requests refused without the service")


async def test_a_local_rate_limit_on_the_ingress_gateway(mesh: Mesh) -> None:
    mesh.write("gateway.yaml", GATEWAY.format(ip=mesh.ip(6)))
    await mesh.sidecar(pod="istio-ingressgateway-1", ip=mesh.ip(6), namespace="istio-system", node_type="router")

    async def through_gateway() -> tuple[int, dict[str, str]]:
        status, headers, _ = await mesh.request(
            via_ip=mesh.ip(6), host="bookinfo.example.com", port=8080, headers={"connection": "close"}
        )  # a new connection each time: one opened before the patch keeps the listener it was accepted on
        return status, headers

    await eventually(lambda: _ok(through_gateway), what="the gateway to route to productpage")
    mesh.write("gateway-limit.yaml", GATEWAY_LOCAL_RATE_LIMIT)

    async def applied() -> bool:
        listeners = json.dumps(await mesh.envoys["istio-ingressgateway-1"].config_dump(resource="dynamic_listeners"))
        return "envoy.filters.http.local_ratelimit" in listeners

    await eventually(applied, what="the local rate limit on the gateway")
    statuses = [(await through_gateway())[0] for _ in range(4)]
    status, headers = await through_gateway()
    assert statuses == [200] * 4 and status == 429, (statuses, status)
    assert headers.get("x-local-rate-limit") == "true"
    assert await _status_is(mesh, 200)  # the sidecars are not selected


async def _ok(call: Any) -> bool:
    return bool((await call())[0] == 200)


ECDS = """\
apiVersion: networking.istio.io/v1alpha3
kind: EnvoyFilter
metadata: {name: ecds-lua, namespace: default}
spec:
  workloadSelector: {labels: {app: client}}
  configPatches:
  - applyTo: EXTENSION_CONFIG
    patch:
      operation: ADD
      value:
        name: ecds-lua
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.http.lua.v3.Lua
          inlineCode: |
            function envoy_on_response(handle)
              handle:headers():add("x-ecds", "delivered")
            end
  - applyTo: HTTP_FILTER
    match:
      context: SIDECAR_OUTBOUND
      listener: {filterChain: {filter: {name: envoy.filters.network.http_connection_manager,
                                        subFilter: {name: envoy.filters.http.router}}}}
    patch:
      operation: INSERT_BEFORE
      value:
        name: ecds-lua
        config_discovery:
          config_source: {ads: {}, resource_api_version: V3}
          type_urls: [type.googleapis.com/envoy.extensions.filters.http.lua.v3.Lua]
"""


async def test_an_extension_config_is_delivered_over_ecds(mesh: Mesh) -> None:
    mesh.write("ecds.yaml", ECDS)

    async def delivered() -> bool:
        status, headers = await _get(mesh)
        return status == 200 and headers.get("x-ecds") == "delivered"

    await eventually(delivered, what="the Lua filter delivered over ECDS to answer")
    dump = json.dumps(await mesh.envoys["client"].config_dump(resource="ecds_filters"))
    assert "ecds-lua" in dump
