"""The fake API server speaks Kubernetes' wire protocol: checked with kubernetes-asyncio (the
client meshd uses in production) and with plain HTTP."""

from __future__ import annotations

import asyncio
import pathlib
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from kubernetes_asyncio import client, watch
from kubernetes_asyncio.client.exceptions import ApiException

from tests.e2e.harness import eventually
from tests.kubeapi import FakeApiServer, KubeRest, TokenIdentity
from tests.kubeapi.client import KubeError


def service(name: str, namespace: str = "default", **labels: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": namespace, "labels": labels},
        "spec": {"ports": [{"name": "http", "port": 80}]},
    }


VS = {
    "apiVersion": "networking.istio.io/v1",
    "kind": "VirtualService",
    "metadata": {"name": "web", "namespace": "default"},
    "spec": {"hosts": ["web"], "http": [{"route": [{"destination": {"host": "web"}}]}]},
}


@pytest.fixture
async def server(tmp_path: pathlib.Path) -> AsyncIterator[FakeApiServer]:
    fake = FakeApiServer(bookmark_interval_s=0.2)
    await fake.start()
    yield fake
    await fake.stop()


async def test_list_then_watch_from_the_lists_resource_version(server: FakeApiServer, api: client.ApiClient) -> None:
    server.create(service("a"))
    core = client.CoreV1Api(api)
    listed = await core.list_service_for_all_namespaces()
    assert [s.metadata.name for s in listed.items] == ["a"]
    server.create(service("b"))  # after the list: the watch must deliver it
    events: list[tuple[str, str]] = []
    w = watch.Watch()
    async with w:
        async for event in w.stream(
            core.list_service_for_all_namespaces, resource_version=listed.metadata.resource_version, timeout_seconds=5
        ):
            events.append((event["type"], event["object"].metadata.name))
            if len(events) == 1:
                server.delete("v1", "Service", "default", "a")
            if len(events) == 2:
                break
    assert events == [("ADDED", "b"), ("DELETED", "a")]


async def test_bookmarks_carry_the_current_resource_version(server: FakeApiServer, api: client.ApiClient) -> None:
    core = client.CoreV1Api(api)
    listed = await core.list_namespaced_pod("default")
    server.create(service("unrelated"))  # moves the global resourceVersion, not a pod event
    w = watch.Watch()
    async with w:
        async for event in w.stream(
            core.list_namespaced_pod,
            "default",
            resource_version=listed.metadata.resource_version,
            allow_watch_bookmarks=True,
            timeout_seconds=5,
        ):
            assert event["type"] == "BOOKMARK"
            assert event["raw_object"]["metadata"]["resourceVersion"] == server.resource_version
            break


@pytest.mark.parametrize("mode", ["event", "http"])
async def test_compacted_history_answers_410(server: FakeApiServer, api: client.ApiClient, mode: str) -> None:
    server.expired_mode = mode
    core = client.CoreV1Api(api)
    old = (await core.list_service_for_all_namespaces()).metadata.resource_version
    server.create(service("a"))
    server.compact()
    with pytest.raises(ApiException) as caught:
        async with watch.Watch() as w:
            async for _ in w.stream(core.list_service_for_all_namespaces, resource_version=old, timeout_seconds=2):
                pass
    assert caught.value.status == 410


async def test_writes_follow_the_api_servers_concurrency_rules(server: FakeApiServer) -> None:
    rest = KubeRest(server.url)
    try:
        created = await rest.create(VS)
        assert created["metadata"]["generation"] == 1
        with pytest.raises(KubeError) as exists:
            await rest.create(VS)
        assert exists.value.status == 409 and exists.value.body["reason"] == "AlreadyExists"
        stale = {**created, "spec": {"hosts": ["other"]}}
        updated = await rest.replace(stale)
        assert updated["metadata"]["generation"] == 2
        with pytest.raises(KubeError) as conflict:
            await rest.replace(stale)  # the resourceVersion it carries is gone now
        assert conflict.value.status == 409 and conflict.value.body["reason"] == "Conflict"
        status = {**updated, "status": {"validationMessages": [{"description": "bad"}]}}
        with_status = await rest.replace(status, subresource="status")
        assert with_status["status"]["validationMessages"][0]["description"] == "bad"
        assert with_status["metadata"]["generation"] == 2  # status writes do not bump the generation
        # the main resource ignores status; the status subresource ignores spec
        again = await rest.replace({**with_status, "status": {}, "spec": {"hosts": ["third"]}})
        assert again["status"]["validationMessages"] and again["spec"]["hosts"] == ["third"]
        patched = await rest.patch(
            "networking.istio.io/v1", "VirtualService", "default", "web", {"metadata": {"labels": {"x": "y"}}}
        )
        assert patched["metadata"]["labels"] == {"x": "y"}
        # served at every version, stored once
        old = await rest.get("networking.istio.io/v1alpha3", "VirtualService", "default", "web")
        assert old is not None and old["apiVersion"] == "networking.istio.io/v1alpha3"
        await rest.delete("networking.istio.io/v1", "VirtualService", "default", "web")
        assert await rest.get("networking.istio.io/v1", "VirtualService", "default", "web") is None
    finally:
        await rest.close()


async def test_list_pages_and_selectors(server: FakeApiServer) -> None:
    for i in range(5):
        server.create(service(f"s{i}", app="a" if i % 2 else "b"))
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{server.url}/api/v1/services", params={"limit": "2"}) as resp:
            page = await resp.json()
        assert len(page["items"]) == 2 and page["metadata"]["continue"]
        async with session.get(
            f"{server.url}/api/v1/services", params={"limit": "10", "continue": page["metadata"]["continue"]}
        ) as resp:
            rest = await resp.json()
        assert [i["metadata"]["name"] for i in rest["items"]] == ["s2", "s3", "s4"]
        async with session.get(f"{server.url}/api/v1/services", params={"labelSelector": "app=a"}) as resp:
            assert [i["metadata"]["name"] for i in (await resp.json())["items"]] == ["s1", "s3"]
        async with session.get(f"{server.url}/api/v1/services", params={"fieldSelector": "metadata.name=s4"}) as resp:
            assert [i["metadata"]["name"] for i in (await resp.json())["items"]] == ["s4"]


async def test_faults_and_stream_cuts(server: FakeApiServer, api: client.ApiClient) -> None:
    core = client.CoreV1Api(api)
    server.fail(status=429, verb="list", kind="Service", retry_after=3)
    with pytest.raises(ApiException) as caught:
        await core.list_service_for_all_namespaces()
    assert caught.value.status == 429 and caught.value.headers["Retry-After"] == "3"
    listed = await core.list_service_for_all_namespaces()  # the fault was for one request only
    w = watch.Watch()
    stream = w.stream(
        core.list_service_for_all_namespaces, resource_version=listed.metadata.resource_version, timeout_seconds=5
    )
    first = asyncio.ensure_future(stream.__anext__())

    async def opened() -> bool:
        return server.open_watches("Service") == 1

    await eventually(opened, what="the watch to open")
    server.drop_watches("Service", mid_event=True)
    with pytest.raises(aiohttp.ClientPayloadError):
        await first
    await w.close()
    assert server.count(verb="watch", kind="Service") == 1


async def test_pause_refuses_connections(server: FakeApiServer) -> None:
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{server.url}/api/v1/pods") as resp:
            assert resp.status == 200
        await server.pause()
        with pytest.raises(aiohttp.ClientConnectionError):
            async with session.get(f"{server.url}/api/v1/pods") as resp:
                pass
        await server.resume()
        async with session.get(f"{server.url}/api/v1/pods") as resp:
            assert resp.status == 200


async def test_discovery_follows_crds(server: FakeApiServer, api: client.ApiClient) -> None:
    apis = client.ApisApi(api)
    groups = {g.name: g for g in (await apis.get_api_versions()).groups}
    assert groups["networking.istio.io"].preferred_version.version == "v1"
    server.remove_crd("networking.istio.io", "Gateway")
    custom = client.CustomObjectsApi(api)
    with pytest.raises(ApiException) as caught:
        await custom.list_cluster_custom_object("networking.istio.io", "v1", "gateways")
    assert caught.value.status == 404
    server.install_crd("networking.istio.io", "Gateway", ["v1beta1"], plural="gateways")
    listed = await custom.list_cluster_custom_object("networking.istio.io", "v1beta1", "gateways")
    assert listed["items"] == []


async def test_token_review(server: FakeApiServer, api: client.ApiClient) -> None:
    server.tokens["good"] = TokenIdentity(username="system:serviceaccount:default:web")
    auth = client.AuthenticationV1Api(api)

    async def review(token: str, audiences: list[str]) -> Any:
        body = client.V1TokenReview(spec=client.V1TokenReviewSpec(token=token, audiences=audiences))
        return (await auth.create_token_review(body)).status

    ok = await review("good", ["istio-ca"])
    assert ok.authenticated and ok.user.username == "system:serviceaccount:default:web"
    assert not (await review("good", ["other"])).authenticated
    assert not (await review("bad", ["istio-ca"])).authenticated
