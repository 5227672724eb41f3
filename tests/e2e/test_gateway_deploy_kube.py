"""Gateway API automated deployment on a real kube-apiserver with kube-controller-manager's garbage collector
(tests/kubereal; skipped without KUBEBUILDER_ASSETS): meshd's leader creates the ServiceAccount, Service and
Deployment of a Gateway (the API server validates them as it would any object), keeps them in step with the
Gateway (a listener removed removes its Service port), repairs a deleted one, never takes over an object it
does not own, deploys nothing for a manually deployed or foreign Gateway, and the garbage collector deletes
everything with the Gateway."""

from __future__ import annotations

import pathlib
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio

from tests.e2e.harness import Meshd, eventually, free_port
from tests.kubeapi import KubeRest
from tests.kubereal.control_plane import ControlPlane

pytestmark = [pytest.mark.e2e, pytest.mark.asyncio(loop_scope="module")]
NS = "meshd-gwdeploy"
GW_NS = "gwdeploy-infra"
GW = "gateway.networking.k8s.io/v1"
NAME_LABEL = "gateway.networking.k8s.io/gateway-name"


class Lab:
    def __init__(self, kube: KubeRest, meshd: Meshd) -> None:
        self.kube, self.meshd = kube, meshd

    async def obj(self, api_version: str, kind: str, name: str) -> dict[str, Any] | None:
        return await self.kube.get(api_version, kind, GW_NS, name)

    async def deployed(self, name: str) -> dict[str, dict[str, Any]]:
        """The three objects of `name`, once all exist."""

        async def probe() -> dict[str, dict[str, Any]] | None:
            found = {
                "ServiceAccount": await self.obj("v1", "ServiceAccount", name),
                "Service": await self.obj("v1", "Service", name),
                "Deployment": await self.obj("apps/v1", "Deployment", name),
            }
            return {k: v for k, v in found.items() if v is not None} if all(found.values()) else None

        result: dict[str, dict[str, Any]] = await eventually(probe, timeout=60, what=f"{name} deployed")
        return result


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def lab(real_kube_controllers: ControlPlane, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Lab]:
    rest = KubeRest.from_kubeconfig(real_kube_controllers.kubeconfig)
    for ns in (NS, GW_NS):
        await rest.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
    work: pathlib.Path = tmp_path_factory.mktemp("gwdeploy-kube")
    meshd = Meshd(
        log_path=work / "meshd.log",
        kubeconfig=real_kube_controllers.kubeconfig,
        extra_args=(
            "--namespace", NS, "--webhook-port", str(free_port()), "--gateway-deploy-resync", "1",
            "--inject-image", "registry.example/meshd:1.0",
        ),
    )  # fmt: skip
    try:
        await meshd.start()
        yield Lab(rest, meshd)
    except BaseException:
        print(f"----- meshd.log -----\n{meshd.log()[-8000:]}")
        raise
    finally:
        await meshd.close()
        await rest.close()


def gateway(name: str, listeners: list[dict[str, Any]], **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": GW,
        "kind": "Gateway",
        "metadata": {"name": name, "namespace": GW_NS},
        "spec": {"gatewayClassName": "istio", "listeners": listeners, **spec},
    }


HTTP = {"name": "http", "port": 80, "protocol": "HTTP"}
HTTPS = {"name": "https", "port": 443, "protocol": "HTTPS", "tls": {"certificateRefs": [{"name": "cert"}]}}
ALT = {"name": "alt", "port": 8080, "protocol": "HTTP"}


def ports(service: dict[str, Any] | None) -> list[int]:
    return sorted(p["port"] for p in ((service or {}).get("spec") or {}).get("ports") or [])


async def test_a_gateway_is_deployed_kept_in_step_repaired_and_deleted_with_it(lab: Lab) -> None:
    created = await lab.kube.apply(
        gateway("edge", [HTTP, HTTPS], infrastructure={"labels": {"team": "edge"}, "annotations": {"a.io/b": "c"}})
    )
    objects = await lab.deployed("edge-istio")
    for obj in objects.values():
        meta = obj["metadata"]
        assert [(o["kind"], o["name"], o["uid"]) for o in meta["ownerReferences"]] == [
            ("Gateway", "edge", created["metadata"]["uid"])
        ]
        assert meta["labels"]["team"] == "edge" and meta["annotations"]["a.io/b"] == "c"
        assert meta["labels"][NAME_LABEL] == "edge"
    service = objects["Service"]
    assert service["spec"]["type"] == "LoadBalancer" and ports(service) == [80, 443, 15021]
    assert service["spec"]["selector"] == {NAME_LABEL: "edge"}
    pod = objects["Deployment"]["spec"]["template"]
    [proxy] = pod["spec"]["containers"]
    assert proxy["image"] == "registry.example/meshd:1.0"
    assert proxy["args"][proxy["args"].index("--proxy-type") + 1] == "router"
    assert pod["metadata"]["labels"][NAME_LABEL] == "edge" and pod["spec"]["serviceAccountName"] == "edge-istio"

    # a listener replaced: its port leaves the Service (server-side apply), the new one is added
    await lab.kube.apply(gateway("edge", [HTTP, ALT]))

    async def in_step() -> bool:
        return ports(await lab.obj("v1", "Service", "edge-istio")) == [80, 8080, 15021]

    await eventually(in_step, timeout=60, what="Service ports follow the listeners")

    # deleted by hand: repaired by the next full pass
    await lab.kube.delete("v1", "Service", GW_NS, "edge-istio")

    async def repaired() -> bool:
        return ports(await lab.obj("v1", "Service", "edge-istio")) == [80, 8080, 15021]

    await eventually(repaired, timeout=60, what="the deleted Service recreated")

    # the Gateway deleted: the garbage collector deletes what it owned
    await lab.kube.delete(GW, "Gateway", GW_NS, "edge")

    async def gone() -> bool:
        left = [
            await lab.obj("v1", "ServiceAccount", "edge-istio"),
            await lab.obj("v1", "Service", "edge-istio"),
            await lab.obj("apps/v1", "Deployment", "edge-istio"),
        ]
        return all(obj is None for obj in left)

    await eventually(gone, timeout=90, what="the Gateway's objects deleted with it")


async def test_an_object_meshd_does_not_own_is_left_alone(lab: Lab) -> None:
    await lab.kube.apply(
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "taken-istio", "namespace": GW_NS},
            "spec": {"ports": [{"name": "mine", "port": 1234}]},
        }
    )
    await lab.kube.apply(gateway("taken", [HTTP]))
    await eventually(
        lambda: lab.obj("apps/v1", "Deployment", "taken-istio"), timeout=60, what="the Deployment is still created"
    )

    async def logged() -> bool:
        return "gateway_deploy_conflict object=Service/gwdeploy-infra/taken-istio" in lab.meshd.log()

    await eventually(logged, timeout=30, what="the conflict logged")
    assert ports(await lab.obj("v1", "Service", "taken-istio")) == [1234]


async def test_manual_and_foreign_gateways_get_nothing(lab: Lab) -> None:
    await lab.kube.apply(
        {"apiVersion": GW, "kind": "GatewayClass", "metadata": {"name": "other"},
         "spec": {"controllerName": "example.com/other-controller"}}
    )  # fmt: skip
    await lab.kube.apply(gateway("manual", [HTTP], addresses=[{"type": "Hostname", "value": "gw.example.com"}]))
    foreign = gateway("foreign", [HTTP])
    foreign["spec"]["gatewayClassName"] = "other"
    await lab.kube.apply(foreign)
    await lab.kube.apply(gateway("marker", [HTTP]))  # applied last: once it is deployed, the others were planned
    await lab.deployed("marker-istio")
    assert await lab.obj("apps/v1", "Deployment", "manual-istio") is None
    assert await lab.obj("apps/v1", "Deployment", "foreign-other") is None
