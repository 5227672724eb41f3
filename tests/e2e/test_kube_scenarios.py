"""Kubernetes mode end to end: `meshd serve --kubeconfig` reading a cluster drives real Envoy sidecars.

Every scenario runs twice: on the fake API server (tests/kubeapi, real wire protocol) and on a real
kube-apiserver + etcd (tests/kubereal: KUBEBUILDER_ASSETS; skipped, saying so, without it). A real API
server refuses loopback addresses in EndpointSlices, so there the apps are network-namespace test hosts
(tests/e2e/netns.py, a bridge in the host namespace) while the client sidecar stays on loopback. Objects are
written over REST (KubeRest); a real server's Pod status is written through its status subresource.
Scenarios (each asserts what Envoy holds or where traffic goes):
- objects created in the cluster -> Envoy routes (VirtualService header match) within seconds;
- a pod scaled down (EndpointSlice updated) -> its endpoint leaves, traffic goes to the rest;
- a terminating endpoint (ready false, serving true) leaves the load balancing set;
- an EndpointSlice emptied (a real API server then serves `"endpoints": null`) -> the endpoints leave within
  a push;
- an invalid VirtualService -> reported at /debug/config_errors, the rest keeps serving;
- [fake] API down while a Service's slice is deleted + history compacted -> relist applies the delete;
- [fake] 410 on every kind -> relist with no push and no new config version;
- [fake] meshd restarted while lists fail -> ADS UNAVAILABLE, Envoy keeps its config and traffic
  flows, then converges once the API server recovers;
- [fake] a CRD installed later (at v1beta1) -> its objects are picked up.
"""

from __future__ import annotations

import asyncio
import json
import pathlib
import re
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
import pytest_asyncio
from envoy.config.core.v3 import base_pb2
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2

from meshd.xds.resource import CLUSTER
from tests.e2e.harness import Mesh, eventually, logs_on_failure
from tests.e2e.netns import Lab, netns_unavailable
from tests.kubeapi import FakeApiServer, KubeRest
from tests.kubeapi.client import KubeError
from tests.kubereal.control_plane import ControlPlane

pytestmark = [pytest.mark.e2e, pytest.mark.asyncio(loop_scope="module")]
NS = "meshd-e2e"
WEB = f"outbound|9080||web.{NS}.svc.cluster.local"
APP = str(pathlib.Path(__file__).with_name("netns_app.py"))
APP_HOSTS = {2: ("web", "v1", "web-1"), 3: ("web", "v2", "web-2"), 4: ("other", "v1", "other-1")}
Obj = dict[str, Any]


def service(name: str) -> Obj:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": NS},
        "spec": {"selector": {"app": name}, "ports": [{"name": "http", "port": 9080, "targetPort": 8080}]},
    }


def endpoint_slice(service_name: str, endpoints: list[tuple[str, str, dict[str, bool]]]) -> Obj:
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": f"{service_name}-1",
            "namespace": NS,
            "labels": {"kubernetes.io/service-name": service_name},
        },
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
        "endpoints": [
            {"addresses": [ip], "conditions": conditions, "targetRef": {"kind": "Pod", "name": pod, "namespace": NS}}
            for ip, pod, conditions in endpoints
        ],
    }


def pod(name: str, ip: str, app: str, version: str) -> Obj:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": NS, "labels": {"app": app, "version": version}},
        "spec": {"serviceAccountName": app, "containers": [{"name": "app", "image": "none"}]},
        "status": {"podIP": ip, "phase": "Running"},
    }


VIRTUAL_SERVICE: Obj = {
    "apiVersion": "networking.istio.io/v1",
    "kind": "VirtualService",
    "metadata": {"name": "web", "namespace": NS},
    "spec": {
        "hosts": ["web"],
        "http": [
            {"match": [{"headers": {"x-to": {"exact": "other"}}}], "route": [{"destination": {"host": "other"}}]},
            {"route": [{"destination": {"host": "web"}}]},
        ],
    },
}
READY = {"ready": True, "serving": True, "terminating": False}


@dataclass
class Kube:
    mesh: Mesh
    rest: KubeRest
    fake: FakeApiServer | None
    hosts: dict[int, str]  # real API server: app host -> its network-namespace address

    def ip(self, host: int) -> str:
        return self.hosts.get(host) or self.mesh.ip(host)

    async def apply(self, obj: Obj) -> None:
        if self.fake is not None:
            self.fake.apply(obj)  # direct: also writes a Pod's status
        elif obj["kind"] != "Pod":
            await self.rest.apply(obj)
        else:
            name = obj["metadata"]["name"]
            if await self.rest.get("v1", "Pod", NS, name) is None:
                await self.rest.create({k: v for k, v in obj.items() if k != "status"})
            ip = obj["status"]["podIP"]
            status = {**obj["status"], "podIPs": [{"ip": ip}]}
            await self.rest.patch("v1", "Pod", NS, name, {"status": status}, subresource="status")

    async def delete(self, obj: Obj) -> None:
        if self.fake is not None:
            self.fake.delete(obj["apiVersion"], obj["kind"], NS, obj["metadata"]["name"])
        else:
            await self.rest.delete(obj["apiVersion"], obj["kind"], NS, obj["metadata"]["name"])

    def web_slice(self, *, second: dict[str, bool] | None = READY) -> Obj:
        endpoints = [(self.ip(2), "web-1", READY)]
        if second is not None:
            endpoints.append((self.ip(3), "web-2", second))
        return endpoint_slice("web", endpoints)

    def objects(self) -> list[Obj]:
        return [
            pod("web-1", self.ip(2), "web", "v1"),
            pod("web-2", self.ip(3), "web", "v2"),
            pod("other-1", self.ip(4), "other", "v1"),
            service("web"),
            service("other"),
            self.web_slice(),
            endpoint_slice("other", [(self.ip(4), "other-1", READY)]),
            VIRTUAL_SERVICE,
        ]

    def need_fake(self) -> FakeApiServer:
        if self.fake is None:
            pytest.skip("fault injection needs the fake API server")
        return self.fake


@pytest_asyncio.fixture(scope="module", loop_scope="module", params=["fake", "real"])
async def kube(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Kube]:
    work = tmp_path_factory.mktemp("kube")
    fake: FakeApiServer | None = None
    lab: Lab | None = None
    meshd_args: tuple[str, ...] = ("--kube-crd-recheck", "1")
    if request.param == "real":
        plane: ControlPlane = request.getfixturevalue("real_kube")
        if (why := netns_unavailable()) is not None:
            pytest.skip(f"the real API server needs network-namespace app hosts: {why}")
        kubeconfig = plane.kubeconfig
        meshd_args += ("--namespace", NS)  # its Lease, CA Secret and mesh ConfigMap in the test's namespace
    else:
        fake = FakeApiServer()
        await fake.start()
        kubeconfig = fake.write_kubeconfig(work / "kubeconfig")
    rest = KubeRest.from_kubeconfig(kubeconfig)
    mesh = Mesh(work_dir=work, delta=False, kubeconfig=kubeconfig, meshd_args=meshd_args)
    kube = Kube(mesh, rest, fake, {})
    try:
        async with logs_on_failure(mesh):
            await rest.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}})
            await mesh.meshd.start()
            if fake is None:
                lab = Lab(host_bridge=True)
                await lab.start()
                for host, (service_name, version, pod_name) in APP_HOSTS.items():
                    ns = await lab.pod(pod_name)
                    proc = await lab.spawn(ns, sys.executable, APP, service_name, version, pod_name, "8080")
                    assert proc.stdout is not None and await proc.stdout.readline() == b"ready\n"
                    kube.hosts[host] = ns.ip
            else:
                for host, (service_name, version, pod_name) in APP_HOSTS.items():
                    await mesh.app(service=service_name, version=version, pod=pod_name, ip=mesh.ip(host))
            await mesh.sidecar(pod="client", ip=mesh.ip(1), namespace=NS)
            yield kube
    finally:
        if fake is None:
            for obj in reversed(kube.objects()):
                await rest.delete(obj["apiVersion"], obj["kind"], NS, obj["metadata"]["name"])
        await rest.close()
        if lab is not None:
            await lab.close()
        if fake is not None:
            await fake.stop()


# -- observing Envoy and meshd -------------------------------------------------------------------


async def pods_answering(kube: Kube, count: int = 20, headers: dict[str, str] | None = None) -> Counter[str]:
    seen: Counter[str] = Counter()
    for _ in range(count):
        status, _, body = await kube.mesh.request(via_ip=kube.ip(1), host="web:9080", headers=headers, timeout=5)
        seen[str(json.loads(body)["pod"]) if status == 200 else f"status-{status}"] += 1
    return seen


async def endpoints_of(kube: Kube, cluster: str = WEB) -> set[str]:
    """Addresses Envoy holds for a cluster (its /clusters admin page)."""
    text = await kube.mesh.envoys["client"].admin_get("/clusters")
    return set(re.findall(rf"^{re.escape(cluster)}::([\d.]+):\d+::cx_active", text, re.M))


async def holds_endpoints(kube: Kube, expected: set[str], cluster: str = WEB) -> None:
    async def check() -> bool:
        return await endpoints_of(kube, cluster) == expected

    await eventually(check, timeout=20, what=f"Envoy to hold {sorted(expected)} for {cluster}")


async def pushes(kube: Kube) -> dict[str, float]:
    text = await kube.mesh.meshd.metrics()
    return {m[1]: float(m[2]) for m in re.finditer(r'^pilot_xds_pushes\{type="(\w+)"\} ([\d.e+]+)', text, re.M)} | {
        "_": 0.0
    }


async def informers(kube: Kube) -> dict[str, Any]:
    status = await kube.mesh.meshd.get_json("/debug/informers")
    return {k["kind"]: k for k in status["kinds"]}


async def baseline(kube: Kube) -> None:
    """Every scenario starts from the same cluster: web (2 pods), other (1 pod), the VirtualService."""
    for obj in kube.objects():
        await kube.apply(obj)
    await holds_endpoints(kube, {kube.ip(2), kube.ip(3)})


# -- scenarios ---------------------------------------------------------------------------------


async def test_objects_created_in_the_cluster_drive_envoy(kube: Kube) -> None:
    assert await endpoints_of(kube) == set(), "nothing is served before the objects exist"
    started = time.monotonic()
    for obj in kube.objects():
        await kube.apply(obj)

    async def routed() -> bool:
        return set(await pods_answering(kube, 6)) == {"web-1", "web-2"}

    await eventually(routed, timeout=15, what="traffic to both web pods")
    elapsed = time.monotonic() - started
    print(f"objects created -> Envoy routes: {elapsed:.2f}s")
    assert elapsed < 5
    assert set(await pods_answering(kube, 6, headers={"x-to": "other"})) == {"other-1"}
    status = await informers(kube)
    assert status["VirtualService"]["synced"] and status["VirtualService"]["apiVersion"] == "networking.istio.io/v1"


async def test_pod_scaled_down_leaves_the_load_balancing_set(kube: Kube) -> None:
    await baseline(kube)
    await kube.apply(kube.web_slice(second=None))
    await kube.delete(pod("web-2", kube.ip(3), "web", "v2"))
    await holds_endpoints(kube, {kube.ip(2)})
    assert await pods_answering(kube, 20) == Counter({"web-1": 20})


async def test_terminating_endpoint_leaves_the_load_balancing_set(kube: Kube) -> None:
    await baseline(kube)
    await kube.apply(kube.web_slice(second={"ready": False, "serving": True, "terminating": True}))
    await holds_endpoints(kube, {kube.ip(2)})
    assert await pods_answering(kube, 20) == Counter({"web-1": 20})


async def test_emptied_slice_removes_its_endpoints(kube: Kube) -> None:
    """A Service whose last ready pod left: its slice has no endpoints (a real API server serves
    `"endpoints": null, "ports": null`); Envoy must drop the old endpoints, not keep them forever."""
    await baseline(kube)
    emptied = {**kube.web_slice(), "endpoints": [], "ports": []}
    await kube.apply(emptied)
    started = time.monotonic()
    await holds_endpoints(kube, set())
    print(f"EndpointSlice emptied -> endpoints gone from Envoy: {time.monotonic() - started:.2f}s")
    assert set(await pods_answering(kube, 4)) == {"status-503"}


async def test_invalid_object_is_reported_and_the_rest_keeps_serving(kube: Kube) -> None:
    await baseline(kube)
    bad = {
        **VIRTUAL_SERVICE,
        "metadata": {"name": "bad", "namespace": NS},
        "spec": {"hosts": ["other"], "http": [{"route": [{"destination": {"host": "other"}}], "timeout": "ten"}]},
    }
    await kube.apply(bad)

    async def reported() -> list[Any]:
        errors = await kube.mesh.meshd.get_json("/debug/config_errors")
        return [e for e in errors if e["resource"] == f"VirtualService {NS}/bad"]

    [error] = await eventually(reported, what="the invalid VirtualService reported")
    assert error["origin"] == f"kube:VirtualService/{NS}/bad" and error["field"] == "spec.http[0].timeout"
    assert set(await pods_answering(kube, 40)) == {"web-1", "web-2"}
    await kube.delete(bad)


async def test_weights_not_adding_up_to_100_are_relative(kube: Kube) -> None:
    """As Istio does today: weights 1 and 3 send a quarter to web, three quarters to other (only a total of 0
    is refused)."""
    await baseline(kube)
    split = {**VIRTUAL_SERVICE, "spec": {"hosts": ["web"], "http": [{"route": [
        {"destination": {"host": "web"}, "weight": 1}, {"destination": {"host": "other"}, "weight": 3},
    ]}]}}  # fmt: skip
    await kube.apply(split)

    async def both() -> Counter[str]:
        seen = await pods_answering(kube, 40)
        return seen if seen["other-1"] and seen.keys() & {"web-1", "web-2"} else Counter()

    await eventually(both, timeout=20, what="traffic to web and other")
    seen = await pods_answering(kube, 80)  # now that the split is in place: about 20 to web, 60 to other
    assert seen["other-1"] > seen["web-1"] + seen["web-2"] > 0, seen
    errors = await kube.mesh.meshd.get_json("/debug/config_errors")
    assert not [e for e in errors if e["resource"] == f"VirtualService {NS}/web"], errors
    await kube.apply(VIRTUAL_SERVICE)


async def test_out_of_range_port_never_reaches_envoy(kube: Kube) -> None:
    """A WorkloadEntry port of 99999: the real API server refuses it (the CRD schema), the fake one stores
    it and meshd refuses it (its reader); either way Envoy's EDS keeps updating for everyone."""
    await baseline(kube)
    entry = {
        "apiVersion": "networking.istio.io/v1",
        "kind": "WorkloadEntry",
        "metadata": {"name": "bad-port", "namespace": NS},
        "spec": {"address": "192.0.2.10", "ports": {"http": 99999}, "labels": {"app": "ext"}},
    }
    if kube.fake is None:
        with pytest.raises(KubeError) as refused:
            await kube.rest.create(entry)
        assert refused.value.status == 422 and "65535" in str(refused.value.body), refused.value.body
    else:
        await kube.apply(entry)

        async def reported() -> list[Any]:
            errors = await kube.mesh.meshd.get_json("/debug/config_errors")
            return [e for e in errors if e["resource"] == f"WorkloadEntry {NS}/bad-port"]

        [error] = await eventually(reported, what="the WorkloadEntry refused")
        assert error["field"] == "spec.ports.http", error
    await kube.apply(kube.web_slice(second=None))  # EDS still updates
    await holds_endpoints(kube, {kube.ip(2)})
    await kube.delete(entry)


async def test_delete_while_disconnected_is_applied_after_relist(kube: Kube) -> None:
    fake = kube.need_fake()
    await baseline(kube)
    assert set(await pods_answering(kube, 4, headers={"x-to": "other"})) == {"other-1"}
    relists = (await informers(kube))["EndpointSlice"]["relists"]
    await fake.pause()  # every watch cut, connections refused
    fake.delete("discovery.k8s.io/v1", "EndpointSlice", NS, "other-1")
    fake.compact()  # the DELETED event is gone from history: only a relist can find it
    await fake.resume()
    await holds_endpoints(kube, set(), cluster=f"outbound|9080||other.{NS}.svc.cluster.local")
    assert (await informers(kube))["EndpointSlice"]["relists"] > relists
    assert set(await pods_answering(kube, 4, headers={"x-to": "other"})) == {"status-503"}


async def test_410_relists_without_a_push_storm(kube: Kube) -> None:
    fake = kube.need_fake()
    await baseline(kube)
    await holds_endpoints(kube, {kube.ip(4)}, cluster=f"outbound|9080||other.{NS}.svc.cluster.local")
    before_relists = {k: v["relists"] for k, v in (await informers(kube)).items() if not v["absent"]}
    before_pushes = await pushes(kube)
    before_versions = await acked_versions(kube)
    await fake.pause()
    fake.apply({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "unrelated", "namespace": "default"}})
    fake.compact()  # every reflector's resourceVersion is now too old: 410 for every kind
    await fake.resume()

    async def relisted() -> bool:
        now = await informers(kube)
        return all(now[k]["relists"] > n for k, n in before_relists.items())

    await eventually(relisted, timeout=30, what="every kind to relist")
    # Nothing changed in the mesh: no push at all, Envoy's config versions unchanged.
    assert await pushes(kube) == before_pushes
    assert await acked_versions(kube) == before_versions
    # A real change afterwards is one EDS push, nothing else.
    await kube.apply(kube.web_slice(second=None))
    await holds_endpoints(kube, {kube.ip(2)})
    after = await pushes(kube)
    changed = {t for t in after if after[t] != before_pushes.get(t)}
    assert changed == {"eds"} and after["eds"] - before_pushes["eds"] == 1, (before_pushes, after)


async def acked_versions(kube: Kube) -> dict[str, Any]:
    [conn] = [c for c in await kube.mesh.meshd.get_json("/debug/syncz") if "client" in c["proxy"]]
    return {t: v["acked"] for t, v in conn["types"].items()}


async def ads_refused(kube: Kube) -> bool:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{kube.mesh.meshd.xds_port}") as channel:
        call = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel).StreamAggregatedResources()
        node = base_pb2.Node(id=f"sidecar~{kube.ip(9)}~probe.{NS}~{NS}.svc.cluster.local")
        await call.write(discovery_pb2.DiscoveryRequest(node=node, type_url=CLUSTER))
        try:
            await asyncio.wait_for(call.read(), 2)
        except grpc.aio.AioRpcError as err:
            return err.code() == grpc.StatusCode.UNAVAILABLE
        except TimeoutError:
            return False  # held open without an answer: not refused
        finally:
            call.cancel()
        return False


async def test_restart_while_the_api_server_fails_keeps_envoy_serving(kube: Kube) -> None:
    fake = kube.need_fake()
    await baseline(kube)
    await kube.mesh.meshd.stop()
    fake.fail(status=500, count=1_000_000, verb="list")
    outage = time.monotonic()  # the fake API server stamps requests with time.monotonic()
    await kube.apply(kube.web_slice(second=None))  # changed while meshd cannot list
    await kube.mesh.meshd.start(wait_ready=False)

    async def not_ready() -> bool:
        async with kube.mesh.meshd.session.get(kube.mesh.meshd.url("/ready")) as resp:
            return resp.status == 503

    await eventually(not_ready, what="meshd up but not ready")
    assert await eventually(lambda: ads_refused(kube), what="ADS refused with UNAVAILABLE")
    # Envoy keeps its last config: both endpoints, and traffic still flows.
    assert await endpoints_of(kube) == {kube.ip(2), kube.ip(3)}
    assert set(await pods_answering(kube, 40)) == {"web-1", "web-2"}
    assert not await kube.mesh.meshd.ready()
    lists = fake.count(verb="list", since=outage)
    assert lists <= 3 * 15, f"{lists} lists during the outage: backoff, not a hot loop"
    fake.clear_faults()
    await eventually(kube.mesh.meshd.ready, timeout=30, what="meshd ready once lists work")
    await eventually(lambda: _converged(kube), timeout=60, what="Envoy to converge on the change")
    assert await pods_answering(kube, 10) == Counter({"web-1": 10})


async def _converged(kube: Kube) -> bool:
    return await endpoints_of(kube) == {kube.ip(2)}


async def test_crd_installed_later_is_picked_up(kube: Kube) -> None:
    fake = kube.need_fake()
    await baseline(kube)
    fake.remove_crd("networking.istio.io", "DestinationRule")

    async def absent() -> bool:
        return bool((await informers(kube))["DestinationRule"]["absent"])

    await eventually(absent, timeout=20, what="DestinationRule CRD seen absent")
    assert await ads_ready(kube)
    fake.install_crd("networking.istio.io", "DestinationRule", ["v1beta1"], plural="destinationrules")
    fake.apply(
        {
            "apiVersion": "networking.istio.io/v1beta1",
            "kind": "DestinationRule",
            "metadata": {"name": "web", "namespace": NS},
            "spec": {"host": "web", "subsets": [{"name": "v1", "labels": {"version": "v1"}}]},
        }
    )
    subset = f"outbound|9080|v1|web.{NS}.svc.cluster.local"
    await holds_endpoints(kube, {kube.ip(2)}, cluster=subset)
    assert (await informers(kube))["DestinationRule"]["apiVersion"] == "networking.istio.io/v1beta1"


async def ads_ready(kube: Kube) -> bool:
    """/ready stays 200 while a CRD is absent: an absent kind counts as synced."""
    return await kube.mesh.meshd.ready()


async def test_no_hot_loop_while_idle(kube: Kube) -> None:
    """Over an idle second, meshd makes no list request and keeps one watch per kind (the root-certificate
    publisher hears of its ConfigMaps from the informer's)."""
    fake = kube.need_fake()
    await baseline(kube)
    present = [k for k, v in (await informers(kube)).items() if not v["absent"]]

    expected = dict.fromkeys(present, 1)

    async def one_each() -> bool:
        return all(fake.open_watches(k) == n for k, n in expected.items())

    await eventually(one_each, what="one watch per kind")
    since = time.monotonic()  # the fake API server stamps requests with time.monotonic()
    await asyncio.sleep(1.0)  # measuring an interval, not waiting for a condition
    assert fake.count(verb="list", since=since) == 0
    assert fake.count(verb="watch", since=since) == 0


async def test_an_envoy_nack_is_written_on_the_resource_behind_it(kube: Kube) -> None:
    """Envoy rejects the cluster generated for web (replaced through a test hook by one it NACKs): the
    DestinationRule of web gets a status message naming that cluster, within seconds, and traffic goes on."""
    await baseline(kube)
    rule: Obj = {
        "apiVersion": "networking.istio.io/v1beta1",  # (test_crd_installed_later leaves only v1beta1 served)
        "kind": "DestinationRule",
        "metadata": {"name": "web", "namespace": NS},
        "spec": {"host": "web", "trafficPolicy": {"loadBalancer": {"simple": "ROUND_ROBIN"}}},
    }
    await kube.apply(rule)
    await kube.mesh.meshd.post(f"/debug/test/inject-invalid-cluster?name={WEB.replace('|', '%7C')}")

    async def status() -> list[Any]:
        current = await kube.rest.get(rule["apiVersion"], "DestinationRule", NS, "web")
        messages = list(((current or {}).get("status") or {}).get("validationMessages") or [])
        assert any(WEB in m["description"] for m in messages), current
        return messages

    started = time.monotonic()
    [message] = await eventually(status, timeout=15, what="the NACK on the DestinationRule's status")
    print(f"NACK -> status on the DestinationRule: {time.monotonic() - started:.2f}s")
    assert "Envoy rejected CDS resource" in message["description"] and "client." in message["description"]
    assert set(await pods_answering(kube, 20)) == {"web-1", "web-2"}
    await kube.mesh.meshd.post("/debug/test/clear")

    async def cleared() -> bool:
        current = await kube.rest.get(rule["apiVersion"], "DestinationRule", NS, "web")
        return not ((current or {}).get("status") or {}).get("validationMessages")

    await eventually(cleared, timeout=15, what="the status to clear once the cluster is valid again")
    await kube.delete(rule)


async def test_istio_kinds_meshd_does_not_translate_get_a_status_saying_so(kube: Kube) -> None:
    """WorkloadGroup (an Istio kind meshd does not translate yet) and an invalid EnvoyFilter are never silently
    ignored: each object gets Reconciled False with what that means (the kind not supported; the field that is
    wrong), and an entry in /debug/config_errors."""
    objects: list[Obj] = [
        {
            "apiVersion": "networking.istio.io/v1",
            "kind": "WorkloadGroup",
            "metadata": {"name": "vms", "namespace": NS},
            "spec": {"template": {"serviceAccount": "vm"}},
        },
        {
            "apiVersion": "networking.istio.io/v1alpha3",
            "kind": "EnvoyFilter",
            "metadata": {"name": "lua", "namespace": NS},
            "spec": {"configPatches": [{"applyTo": "HTTP_FILTER", "patch": {"operation": "INSERT_BEFORE"}}]},
        },
    ]
    for obj in objects:
        await kube.apply(obj)

    async def reported() -> dict[str, str]:
        errors = await kube.mesh.meshd.get_json("/debug/config_errors")
        found = {e["resource"]: f"{e['field']}: {e['message']}" for e in errors}
        assert {f"WorkloadGroup {NS}/vms", f"EnvoyFilter {NS}/lua"} <= set(found), errors
        return found

    found = await eventually(reported, timeout=20, what="both objects reported")
    assert "no WorkloadEntry is created" in found[f"WorkloadGroup {NS}/vms"]
    assert found[f"EnvoyFilter {NS}/lua"].startswith("spec.configPatches[0].patch.value: required for INSERT_BEFORE")

    async def status(obj: Obj) -> dict[str, Any]:
        current = await kube.rest.get(obj["apiVersion"], obj["kind"], NS, obj["metadata"]["name"])
        conditions = ((current or {}).get("status") or {}).get("conditions") or []
        assert [c["status"] for c in conditions if c["type"] == "Reconciled"] == ["False"], current
        return dict(current or {})

    for obj in objects:
        current = await eventually(lambda obj=obj: status(obj), timeout=20, what=f"status on {obj['kind']}")  # type: ignore[misc]
        [message] = current["status"]["validationMessages"]
        wanted = "not supported by meshd" if obj["kind"] == "WorkloadGroup" else "required for INSERT_BEFORE"
        assert wanted in message["description"]
        await kube.delete(obj)


async def test_a_telemetry_gets_a_status_accepted_or_naming_its_field(kube: Kube) -> None:
    """Telemetry is a translated kind: through the API server (its CRD from the chart, v1 and v1alpha1), a valid
    one gets Reconciled True; one naming a provider the mesh config lacks gets Reconciled False naming the
    field; one with metrics overrides is accepted, one whose tag value reads an attribute Envoy lacks is refused
    by validation naming the field."""
    good: Obj = {
        "apiVersion": "telemetry.istio.io/v1",
        "kind": "Telemetry",
        "metadata": {"name": "logs", "namespace": NS},
        "spec": {"accessLogging": [{"filter": {"expression": "response.code >= 500"}}]},
    }
    unknown: Obj = {
        "apiVersion": "telemetry.istio.io/v1alpha1",
        "kind": "Telemetry",
        "metadata": {"name": "traces", "namespace": NS},
        "spec": {"selector": {"matchLabels": {"app": "web"}}, "tracing": [{"providers": [{"name": "nowhere"}]}]},
    }
    overrides: Obj = {
        "apiVersion": "telemetry.istio.io/v1",
        "kind": "Telemetry",
        "metadata": {"name": "metrics", "namespace": NS},
        "spec": {"metrics": [{"providers": [{"name": "prometheus"}], "overrides": [{"disabled": True}]}]},
    }
    peer: Obj = {
        "apiVersion": "telemetry.istio.io/v1",
        "kind": "Telemetry",
        "metadata": {"name": "peer", "namespace": NS},
        "spec": {
            "selector": {"matchLabels": {"app": "other"}},
            "metrics": [{"overrides": [{"tagOverrides": {"app": {"value": "upstream_peer.labels['app'].value"}}}]}],
        },
    }
    for obj in (good, unknown, overrides, peer):
        await kube.apply(obj)

    async def reconciled(obj: Obj, expected: str) -> dict[str, Any]:
        current = await kube.rest.get(obj["apiVersion"], obj["kind"], NS, obj["metadata"]["name"])
        conditions = ((current or {}).get("status") or {}).get("conditions") or []
        assert [c["status"] for c in conditions if c["type"] == "Reconciled"] == [expected], current
        return dict(current or {})

    await eventually(lambda: reconciled(good, "True"), timeout=20, what="Reconciled True on the valid Telemetry")
    current = await eventually(lambda: reconciled(unknown, "False"), timeout=20, what="the unknown provider")
    [message] = current["status"]["validationMessages"]
    assert "spec.tracing[0].providers[0].name" in message["description"]
    assert "'nowhere' is not an extensionProviders entry" in message["description"]
    await eventually(lambda: reconciled(overrides, "True"), timeout=20, what="Reconciled True on metrics overrides")
    current = await eventually(lambda: reconciled(peer, "False"), timeout=20, what="the peer attribute refused")
    [message] = current["status"]["validationMessages"]
    assert "spec.metrics[0].overrides[0].tagOverrides.app.value" in message["description"]
    assert "attribute 'upstream_peer'" in message["description"]
    for obj in (good, unknown, overrides, peer):
        await kube.delete(obj)


async def test_a_wasm_plugin_gets_a_status_accepted_or_naming_its_field(kube: Kube) -> None:
    """WasmPlugin (extensions.istio.io v1alpha1, its CRD from the chart): a valid one gets Reconciled True; an
    oci:// one (no registry is pulled from) Reconciled False naming spec.url."""
    good: Obj = {
        "apiVersion": "extensions.istio.io/v1alpha1",
        "kind": "WasmPlugin",
        "metadata": {"name": "header", "namespace": NS},
        # selecting no proxy here: no Envoy tries to read the file (one that cannot is a NACK reported on it)
        "spec": {
            "selector": {"matchLabels": {"app": "no-such-workload"}},
            "url": "file:///etc/wasm/header.wasm",
            "phase": "AUTHZ",
            "pluginConfig": {"a": {"b": [1, 2]}},
        },
    }
    registry: Obj = {
        "apiVersion": "extensions.istio.io/v1alpha1",
        "kind": "WasmPlugin",
        "metadata": {"name": "registry", "namespace": NS},
        "spec": {"url": "oci://registry.example.com/header:v1"},
    }
    for obj in (good, registry):
        await kube.apply(obj)

    async def reconciled(obj: Obj, expected: str) -> dict[str, Any]:
        current = await kube.rest.get(obj["apiVersion"], obj["kind"], NS, obj["metadata"]["name"])
        conditions = ((current or {}).get("status") or {}).get("conditions") or []
        assert [c["status"] for c in conditions if c["type"] == "Reconciled"] == [expected], current
        return dict(current or {})

    current = await eventually(lambda: reconciled(good, "True"), timeout=20, what="Reconciled True on the plugin")
    assert current["spec"]["pluginConfig"] == {"a": {"b": [1, 2]}}  # kept whole by the CRD (free-form)
    current = await eventually(lambda: reconciled(registry, "False"), timeout=20, what="the oci:// plugin refused")
    [message] = current["status"]["validationMessages"]
    assert "spec.url" in message["description"] and "oci://" in message["description"]
    for obj in (good, registry):
        await kube.delete(obj)
