"""meshd's Kubernetes duties against a real kube-apiserver + etcd (tests/kubereal; skipped without
KUBEBUILDER_ASSETS): the root ConfigMap published (not into kube-public / kube-node-lease) and repaired by a
watch; TokenReview-authenticated CSRs with a token from TokenRequest; two replicas, one Lease holder, status
written by the leader; the real API server calling meshd's validating and injection webhooks at https://127.0.0.1:<port>
(clientConfig.url: it never dials a cluster IP).

Each meshd uses its own namespace (`--namespace`) for its Lease, CA Secret and mesh ConfigMap."""

from __future__ import annotations

import base64
import pathlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest
import pytest_asyncio
from cryptography import x509

from meshd.agent.ca_client import generate_csr, request_certificate
from tests.e2e.harness import Meshd, eventually, free_port
from tests.kubeapi import KubeRest
from tests.kubeapi.client import KubeError
from tests.kubereal.control_plane import ControlPlane, request

pytestmark = [pytest.mark.e2e, pytest.mark.asyncio(loop_scope="module")]
NS = "meshd-real"
APP_NS = "meshd-real-apps"
ROOT_CM = "istio-ca-root-cert"
V1 = "networking.istio.io/v1"


@dataclass
class Cluster:
    plane: ControlPlane
    rest: KubeRest
    replicas: list[Meshd]
    work: pathlib.Path

    async def start_replica(self, name: str) -> Meshd:
        meshd = Meshd(
            log_path=self.work / f"{name}.log",
            kubeconfig=self.plane.kubeconfig,
            extra_args=("--namespace", NS, "--leader-identity", name, "--lease-duration", "6",
                        "--webhook-port", str(free_port()), "--status-interval", "0.2"),
        )  # fmt: skip
        meshd.name = name  # type: ignore[attr-defined]
        self.replicas.append(meshd)
        await meshd.start()
        return meshd


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def cluster(real_kube: ControlPlane, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Cluster]:
    rest = KubeRest.from_kubeconfig(real_kube.kubeconfig)
    for ns in (NS, APP_NS):
        await rest.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
    cluster = Cluster(real_kube, rest, [], tmp_path_factory.mktemp("kube-real"))
    try:
        await cluster.start_replica("meshd-a")
        yield cluster
    except BaseException:
        for meshd in cluster.replicas:
            print(f"----- {meshd.log_path.name} -----\n{meshd.log()[-5000:]}")
        raise
    finally:
        for meshd in cluster.replicas:
            await meshd.close()
        await rest.close()


async def holder(cluster: Cluster) -> str:
    lease = await cluster.rest.get("coordination.k8s.io/v1", "Lease", NS, "meshd-leader")
    return str(((lease or {}).get("spec") or {}).get("holderIdentity") or "")


async def root_map(cluster: Cluster, namespace: str) -> str | None:
    cm = await cluster.rest.get("v1", "ConfigMap", namespace, ROOT_CM)
    return None if cm is None else str((cm.get("data") or {}).get("root-cert.pem"))


async def test_root_configmap_published_skipping_system_namespaces_and_repaired_by_a_watch(cluster: Cluster) -> None:
    root = await eventually(lambda: root_map(cluster, APP_NS), what=f"{ROOT_CM} in {APP_NS}")

    assert await root_map(cluster, "default") == root
    assert await root_map(cluster, "kube-public") is None  # istiod skips both
    assert await root_map(cluster, "kube-node-lease") is None
    await cluster.rest.delete("v1", "ConfigMap", APP_NS, ROOT_CM)
    started = time.monotonic()
    await eventually(lambda: _is(root_map(cluster, APP_NS), root), timeout=10, what="deleted ConfigMap repaired")
    await cluster.rest.patch("v1", "ConfigMap", APP_NS, ROOT_CM, {"data": {"root-cert.pem": "tampered"}})
    await eventually(lambda: _is(root_map(cluster, APP_NS), root), timeout=10, what="edited ConfigMap repaired")
    print(f"root ConfigMap deleted/edited -> repaired: {time.monotonic() - started:.2f}s for both")


async def _is(value: Any, expected: Any) -> bool:
    return bool(await value == expected)


async def test_token_review_csr_with_a_token_from_token_request(cluster: Cluster) -> None:
    await cluster.rest.apply(
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "web", "namespace": APP_NS}}
    )
    token = request(
        cluster.plane, "POST", f"/api/v1/namespaces/{APP_NS}/serviceaccounts/web/token",
        {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
         "spec": {"audiences": ["istio-ca"], "expirationSeconds": 600}},
    )["status"]["token"]  # type: ignore[index]  # fmt: skip
    meshd = cluster.replicas[0]
    root = await eventually(lambda: root_map(cluster, APP_NS), what="the root")
    chain = await request_certificate(
        address=f"127.0.0.1:{meshd.secure_port}", root_cert_pem=root, token=str(token),
        csr_pem=generate_csr()[1], ttl_s=600,
    )  # fmt: skip
    leaf = x509.load_pem_x509_certificate(chain[0].encode())
    uris = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
        x509.UniformResourceIdentifier
    )
    assert uris == [f"spiffe://cluster.local/ns/{APP_NS}/sa/web"]


def bad_virtual_service(name: str) -> dict[str, Any]:
    return {
        "apiVersion": V1,
        "kind": "VirtualService",
        "metadata": {"name": name, "namespace": APP_NS},
        "spec": {"hosts": ["web"], "http": [{"route": [
            {"destination": {"host": "web"}, "weight": 0}, {"destination": {"host": "other"}, "weight": 0},
        ]}]},
    }  # fmt: skip


async def test_two_replicas_one_leader_writes_status_and_the_other_takes_over(cluster: Cluster) -> None:
    await cluster.start_replica("meshd-b")
    assert await eventually(lambda: holder(cluster), what="a Lease holder") in ("meshd-a", "meshd-b")
    await cluster.rest.apply(bad_virtual_service("bad"))

    async def status() -> list[Any]:
        vs = await cluster.rest.get(V1, "VirtualService", APP_NS, "bad")
        return list(((vs or {}).get("status") or {}).get("validationMessages") or [])

    [message] = await eventually(status, what="status on the invalid VirtualService")
    assert message["description"] == "spec.http[0].route: destination weights add up to 0"
    leader_name = await holder(cluster)
    leader = next(m for m in cluster.replicas if m.name == leader_name)  # type: ignore[attr-defined]
    await leader.stop()
    other = "meshd-b" if leader_name == "meshd-a" else "meshd-a"

    async def took_over() -> bool:
        return await holder(cluster) == other

    started = time.monotonic()
    await eventually(took_over, timeout=20, what=f"{other} to take the Lease")
    print(f"leader stopped -> {other} leads: {time.monotonic() - started:.2f}s")
    await cluster.rest.delete(V1, "VirtualService", APP_NS, "bad")
    await leader.start()


async def test_a_regex_error_is_a_schema_error_not_a_missing_reference(cluster: Cluster) -> None:
    bad = {
        "apiVersion": V1,
        "kind": "VirtualService",
        "metadata": {"name": "bad-regex", "namespace": APP_NS},
        "spec": {"hosts": ["web"], "http": [{"match": [{"uri": {"regex": "(unclosed"}}],
                                             "route": [{"destination": {"host": "web"}}]}]},
    }  # fmt: skip
    await cluster.rest.apply(bad)

    async def status() -> list[Any]:
        vs = await cluster.rest.get(V1, "VirtualService", APP_NS, "bad-regex")
        return list(((vs or {}).get("status") or {}).get("validationMessages") or [])

    [message] = await eventually(status, what="status on the VirtualService with a bad regex")
    assert "missing" in message["description"], message  # RE2's words...
    assert message["type"] == {"code": "IST0106", "name": "SchemaValidationError"}, message  # ...not IST0101
    await cluster.rest.delete(V1, "VirtualService", APP_NS, "bad-regex")


async def test_the_api_server_calls_the_validating_webhook_on_loopback(cluster: Cluster) -> None:
    meshd = cluster.replicas[0]
    port = int(meshd.extra_args[meshd.extra_args.index("--webhook-port") + 1])
    root = await eventually(lambda: root_map(cluster, NS), what="the root")
    config = {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingWebhookConfiguration",
        "metadata": {"name": "meshd-real-validator"},
        "webhooks": [{
            "name": "validation.meshd.test",
            "clientConfig": {"url": f"https://127.0.0.1:{port}/validate",
                             "caBundle": base64.b64encode(root.encode()).decode()},
            "rules": [{"apiGroups": ["networking.istio.io"], "apiVersions": ["*"],
                       "operations": ["CREATE", "UPDATE"], "resources": ["virtualservices"]}],
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": APP_NS}},
            "failurePolicy": "Fail", "sideEffects": "None", "admissionReviewVersions": ["v1"],
        }],
    }  # fmt: skip
    await cluster.rest.apply(config)
    try:

        async def refused() -> str:
            try:
                await cluster.rest.create(bad_virtual_service("refused"))
            except KubeError as error:
                return str(error.body.get("message", ""))
            await cluster.rest.delete(V1, "VirtualService", APP_NS, "refused")
            return ""

        message = await eventually(refused, what="the webhook to refuse the VirtualService")
        assert 'admission webhook "validation.meshd.test" denied the request' in message, message
        assert "spec.http[0].route: destination weights add up to 0" in message, message
    finally:
        await cluster.rest.delete(
            "admissionregistration.k8s.io/v1", "ValidatingWebhookConfiguration", "", config["metadata"]["name"]
        )


async def test_the_api_server_calls_the_injection_webhook_on_loopback(cluster: Cluster) -> None:
    """A MutatingWebhookConfiguration naming https://127.0.0.1:<port>/inject (caBundle: meshd's root) on a
    namespace labelled for injection: the Pod the API server stores has the sidecar."""
    meshd = cluster.replicas[0]
    port = int(meshd.extra_args[meshd.extra_args.index("--webhook-port") + 1])
    root = await eventually(lambda: root_map(cluster, NS), what="the root")
    inject_ns = "meshd-real-inject"
    labels = {"meshd-real-injection": "enabled"}
    await cluster.rest.apply(
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": inject_ns, "labels": labels}}
    )
    config = {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "MutatingWebhookConfiguration",
        "metadata": {"name": "meshd-real-injector"},
        "webhooks": [{
            "name": "injection.meshd.test",
            "clientConfig": {"url": f"https://127.0.0.1:{port}/inject",
                             "caBundle": base64.b64encode(root.encode()).decode()},
            "rules": [{"apiGroups": [""], "apiVersions": ["v1"], "operations": ["CREATE"], "resources": ["pods"]}],
            "namespaceSelector": {"matchLabels": {**labels, "kubernetes.io/metadata.name": inject_ns}},
            "failurePolicy": "Fail", "sideEffects": "None", "admissionReviewVersions": ["v1"],
            "reinvocationPolicy": "Never",
        }],
    }  # fmt: skip
    await cluster.rest.apply(config)
    try:

        async def injected() -> dict[str, Any] | None:
            name = f"web-{time.monotonic_ns()}"  # a fresh Pod per attempt: the configuration may take a moment
            pod = await cluster.rest.create({
                "apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": inject_ns},
                "spec": {"serviceAccountName": "default",  # what the ServiceAccount admission plugin (off here) sets
                         "containers": [{"name": "app", "image": "none", "ports": [{"containerPort": 8080}]}]},
            })  # fmt: skip
            stored = await cluster.rest.get("v1", "Pod", inject_ns, name)
            await cluster.rest.delete("v1", "Pod", inject_ns, name)
            containers = [c["name"] for c in ((stored or pod).get("spec") or {}).get("containers") or []]
            return stored if "istio-proxy" in containers else None

        stored = await eventually(injected, what="the API server to store an injected Pod")
        spec = stored["spec"]
        assert [c["name"] for c in spec["containers"]] == ["app", "istio-proxy"], spec["containers"]
        assert [c["name"] for c in spec.get("initContainers") or []] == ["istio-init"], spec.get("initContainers")
        annotations = stored["metadata"].get("annotations") or {}
        assert "sidecar.istio.io/status" in annotations, annotations
        assert (stored["metadata"].get("labels") or {}).get("security.istio.io/tlsMode") == "istio", stored["metadata"]
    finally:
        await cluster.rest.delete(
            "admissionregistration.k8s.io/v1", "MutatingWebhookConfiguration", "", config["metadata"]["name"]
        )
        await cluster.rest.delete("v1", "Namespace", "", inject_ns)
