"""ProxyConfig on a real kube-apiserver (tests/kubereal; skipped without KUBEBUILDER_ASSETS): meshd reads
ProxyConfigs like every other kind, gives each a status, and its injection webhook (called by the API server at
https://127.0.0.1:<port>/inject) puts the merged settings into the `istio-proxy` container of each new Pod:
`--envoy-concurrency` and environment variables. Istio's order: the root namespace's ProxyConfig < the Pod's
namespace's < the Pod's `proxy.istio.io/config` annotation < a ProxyConfig selecting the Pod's labels. An invalid
ProxyConfig gets Reconciled False naming its field and changes no injection. A real `meshd agent` given the
injected settings runs Envoy with them."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import pathlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest
import pytest_asyncio

from tests.e2e.agents import AgentProcess
from tests.e2e.harness import Meshd, eventually, free_port, logs_on_failure, next_subnet
from tests.kubeapi import KubeRest
from tests.kubereal.control_plane import ControlPlane

pytestmark = [pytest.mark.e2e, pytest.mark.asyncio(loop_scope="module")]
NS = "meshd-pc"  # meshd's namespace: the root namespace
APPS = "meshd-pc-apps"
PC = "networking.istio.io/v1beta1"
LABELS = {"meshd-pc-injection": "enabled"}


@dataclass
class Setup:
    rest: KubeRest
    meshd: Meshd


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def setup(real_kube: ControlPlane, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Setup]:
    rest = KubeRest.from_kubeconfig(real_kube.kubeconfig)
    await rest.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}})
    await rest.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": APPS, "labels": LABELS}})
    work: pathlib.Path = tmp_path_factory.mktemp("proxyconfig")
    port = free_port()
    meshd = Meshd(
        log_path=work / "meshd.log",
        kubeconfig=real_kube.kubeconfig,
        extra_args=("--namespace", NS, "--leader-identity", "pc", "--lease-duration", "6",
                    "--webhook-port", str(port), "--status-interval", "0.2"),
    )  # fmt: skip
    hook = "meshd-pc-injector"
    async with logs_on_failure(meshd):  # a failing test's report carries meshd's log
        try:
            await meshd.start()

            async def root() -> str | None:
                cm = await rest.get("v1", "ConfigMap", NS, "istio-ca-root-cert")
                return None if cm is None else str((cm.get("data") or {}).get("root-cert.pem"))

            pem = await eventually(root, what="meshd's root certificate")
            await rest.apply({
                "apiVersion": "admissionregistration.k8s.io/v1", "kind": "MutatingWebhookConfiguration",
                "metadata": {"name": hook},
                "webhooks": [{
                    "name": "injection.pc.meshd.test",
                    "clientConfig": {"url": f"https://127.0.0.1:{port}/inject",
                                     "caBundle": base64.b64encode(pem.encode()).decode()},
                    "rules": [{"apiGroups": [""], "apiVersions": ["v1"], "operations": ["CREATE"],
                               "resources": ["pods"]}],
                    "namespaceSelector": {"matchLabels": {**LABELS, "kubernetes.io/metadata.name": APPS}},
                    "failurePolicy": "Fail", "sideEffects": "None", "admissionReviewVersions": ["v1"],
                    "reinvocationPolicy": "Never",
                }],
            })  # fmt: skip
            yield Setup(rest, meshd)
        finally:
            await rest.delete("admissionregistration.k8s.io/v1", "MutatingWebhookConfiguration", "", hook)
            await rest.delete("v1", "Namespace", "", APPS)
            await rest.close()


def proxy_config(name: str, namespace: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": PC, "kind": "ProxyConfig", "metadata": {"name": name, "namespace": namespace}, "spec": spec}


async def reconciled(setup: Setup, namespace: str, name: str, *, accepted: bool) -> dict[str, Any]:
    """The ProxyConfig's status once meshd has decided on it (Reconciled True: meshd holds it)."""

    async def decided() -> dict[str, Any] | None:
        current = await setup.rest.get(PC, "ProxyConfig", namespace, name)
        status = (current or {}).get("status") or {}
        conditions = [c["status"] for c in status.get("conditions") or [] if c["type"] == "Reconciled"]
        return status if conditions == [("True" if accepted else "False")] else None

    return await eventually(decided, timeout=120, what=f"status on ProxyConfig {namespace}/{name}")


async def injected_proxy(
    setup: Setup, *, labels: dict[str, str], annotations: dict[str, str] | None = None
) -> dict[str, Any]:
    """A new Pod through the API server (and so the injector): its istio-proxy container."""

    async def create() -> dict[str, Any] | None:
        name = f"web-{time.monotonic_ns()}"
        meta: dict[str, Any] = {"name": name, "namespace": APPS, "labels": labels}
        if annotations:
            meta["annotations"] = annotations
        await setup.rest.create({
            "apiVersion": "v1", "kind": "Pod", "metadata": meta,
            "spec": {"serviceAccountName": "default", "containers": [{"name": "app", "image": "none"}]},
        })  # fmt: skip
        stored = await setup.rest.get("v1", "Pod", APPS, name)
        await setup.rest.delete("v1", "Pod", APPS, name)
        proxies = [c for c in ((stored or {}).get("spec") or {}).get("containers") or [] if c["name"] == "istio-proxy"]
        return proxies[0] if proxies else None

    proxy: dict[str, Any] = await eventually(create, timeout=120, what="an injected Pod stored by the API server")
    return proxy


async def injected(
    setup: Setup, *, labels: dict[str, str], annotations: dict[str, str] | None = None
) -> tuple[str | None, dict[str, str]]:
    """A new Pod's istio-proxy: its --envoy-concurrency (None: not given) and environment variables set by value."""
    proxy = await injected_proxy(setup, labels=labels, annotations=annotations)
    args = proxy["args"]
    concurrency = args[args.index("--envoy-concurrency") + 1] if "--envoy-concurrency" in args else None
    return concurrency, {e["name"]: e["value"] for e in proxy.get("env") or [] if "value" in e}


async def test_proxy_configs_reach_new_pods_in_istios_order(setup: Setup) -> None:
    rest = setup.rest
    await rest.apply(proxy_config("mesh-wide", NS, {"environmentVariables": {"PC_ROOT": "root", "PC_LEVEL": "root"}}))
    namespace_wide = {"concurrency": 3, "environmentVariables": {"PC_LEVEL": "namespace"}}
    await rest.apply(proxy_config("ns-wide", APPS, namespace_wide))
    await reconciled(setup, NS, "mesh-wide", accepted=True)
    await reconciled(setup, APPS, "ns-wide", accepted=True)
    # the namespace's ProxyConfig over the root namespace's
    assert await injected(setup, labels={"app": "other"}) == ("3", {"PC_ROOT": "root", "PC_LEVEL": "namespace"})

    await rest.apply(proxy_config(
        "web", APPS, {"selector": {"matchLabels": {"app": "web"}}, "concurrency": 4,
                      "environmentVariables": {"PC_LEVEL": "workload"}},
    ))  # fmt: skip
    await reconciled(setup, APPS, "web", accepted=True)
    # a ProxyConfig selecting the Pod over the namespace's; Pods it does not select keep the namespace's
    assert await injected(setup, labels={"app": "web"}) == ("4", {"PC_ROOT": "root", "PC_LEVEL": "workload"})
    assert (await injected(setup, labels={"app": "other"}))[0] == "3"

    # the annotation over the namespace's ProxyConfig, under the selecting one (Istio's documented order)
    annotation = {"proxy.istio.io/config": "concurrency: 5\nproxyMetadata: {PC_LEVEL: annotation, PC_OWN: own}\n"}
    assert await injected(setup, labels={"app": "other"}, annotations=annotation) == (
        "5", {"PC_ROOT": "root", "PC_LEVEL": "annotation", "PC_OWN": "own"}
    )  # fmt: skip
    assert await injected(setup, labels={"app": "web"}, annotations=annotation) == (
        "4", {"PC_ROOT": "root", "PC_LEVEL": "workload", "PC_OWN": "own"}
    )  # fmt: skip


async def test_an_invalid_proxy_config_is_reported_and_changes_no_injection(setup: Setup) -> None:
    await setup.rest.apply(proxy_config("ns-wide", APPS, {"concurrency": 3}))
    await setup.rest.apply(proxy_config(
        "distroless", APPS, {"selector": {"matchLabels": {"app": "db"}}, "concurrency": 9,
                             "environmentVariables": {"PC_BAD": "yes"}, "image": {"imageType": "distroless"}},
    ))  # fmt: skip
    status = await reconciled(setup, APPS, "distroless", accepted=False)
    [message] = status["validationMessages"]
    assert "spec.image.imageType" in message["description"] and "meshd ships one image" in message["description"]
    concurrency, env = await injected(setup, labels={"app": "db"})
    assert concurrency == "3" and "PC_BAD" not in env, (concurrency, env)

    # a second ProxyConfig without selector in the namespace: ignored (the oldest applies), and said so.
    # Istio's order is creation time (whole seconds), then name: created within ns-wide's second, a name
    # sorting before "ns-wide" would apply instead, so this one's name sorts after it.
    await setup.rest.apply(proxy_config("ns-wide-later", APPS, {"concurrency": 8}))

    async def warned() -> str | None:
        current = await setup.rest.get(PC, "ProxyConfig", APPS, "ns-wide-later")
        messages = ((current or {}).get("status") or {}).get("validationMessages") or []
        return next(
            (m["description"] for m in messages if "already applies to the namespace" in m["description"]), None
        )

    warning = await eventually(warned, timeout=120, what="a warning on ns-wide-later")
    assert f"ProxyConfig {APPS}/ns-wide (older)" in warning
    assert (await injected(setup, labels={"app": "db"}))[0] == "3"
    await setup.rest.delete(PC, "ProxyConfig", APPS, "ns-wide-later")


def _children(pid: int) -> list[int]:
    found = []
    for entry in pathlib.Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                stat = (entry / "stat").read_text()
                if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                    found.append(int(entry.name))
    return found


async def test_the_agent_runs_envoy_with_the_injected_settings(setup: Setup) -> None:
    """The injected container's settings, given to a real `meshd agent` as the container would (its
    --envoy-concurrency, its environment): Envoy runs 3 worker threads (admin /server_info) and has the
    ProxyConfig's environment variable."""
    namespace_wide = {"concurrency": 3, "environmentVariables": {"PC_LEVEL": "ns"}}
    await setup.rest.apply(proxy_config("ns-wide", APPS, namespace_wide))

    async def updated() -> tuple[list[str], dict[str, str]] | None:
        proxy = await injected_proxy(setup, labels={"app": "agent"})
        env = {e["name"]: e["value"] for e in proxy["env"] if "value" in e}
        return (proxy["args"], env) if env.get("PC_LEVEL") == "ns" else None

    args, env = await eventually(updated, timeout=120, what="a Pod injected with the changed ProxyConfig")
    ip = f"{next_subnet()}.9"
    agent = AgentProcess(
        pod="agent-pc", ip=ip, env=env,
        args=("--namespace", APPS, "--service-account", "default", "--restart-base", "0.2",
              "--xds-address", f"127.0.0.1:{setup.meshd.xds_port}", "--xds-plaintext",
              "--envoy-concurrency", args[args.index("--envoy-concurrency") + 1]),
    )  # fmt: skip
    try:
        await agent.start()
        await agent.wait_ready()
        info = json.loads(await agent.admin_get("/server_info"))
        assert info["command_line_options"]["concurrency"] == 3, info["command_line_options"]
        assert agent.process is not None
        [envoy] = _children(agent.process.pid)
        environ = await asyncio.to_thread(pathlib.Path(f"/proc/{envoy}/environ").read_bytes)
        assert b"PC_LEVEL=ns" in environ.split(b"\0")
    except BaseException:
        print(agent.log()[-5000:])
        raise
    finally:
        await agent.close()
