"""Sidecar injection (pure): AdmissionReview in -> JSONPatch out -> applied with the fake API server's
own JSON patch -> the pod has exactly one sidecar and one init container, is a valid Pod per
Kubernetes' OpenAPI schema (kubernetes-validate, strict), and its containers line up with its
volumes; opt-in/opt-out rules, each annotation's effect, idempotency and bad input."""

from __future__ import annotations

import base64
import copy
import json
from typing import Any

import kubernetes_validate
import pytest

from meshd.agent.cli import settings_from_args
from meshd.cli import build_parser
from meshd.kube.admission import BadReview
from meshd.kube.inject import inject_review
from meshd.kube.inject_template import InjectionConfig
from tests.kubeapi.patch import json_patch

CONFIG = InjectionConfig(image="registry.example/meshd:1.0", xds_address="istiod.istio-system.svc:15012")


def make_pod(*, labels: dict[str, str] | None = None, annotations: dict[str, str] | None = None) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "generateName": "web-7d9f8c6b5-",
        "namespace": "shop",
        "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web-7d9f8c6b5", "uid": "u"}],
    }
    if labels is not None:
        meta["labels"] = labels
    if annotations is not None:
        meta["annotations"] = annotations
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": meta,
        "spec": {
            "serviceAccountName": "web",
            "containers": [
                {"name": "app", "image": "nginx:1.27", "ports": [{"containerPort": 8080}, {"containerPort": 9090}]}
            ],
        },
    }


def make_review(pod: Any, *, operation: str = "CREATE", kind: str = "Pod", uid: str = "uid-1") -> dict[str, Any]:
    return {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": uid,
            "kind": {"group": "", "version": "v1", "kind": kind},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": "shop",
            "operation": operation,
            "object": pod,
        },
    }


def answer(pod: Any, **kwargs: Any) -> dict[str, Any]:
    body = make_review(pod, **kwargs)
    out = inject_review(body, config=CONFIG)
    assert out["apiVersion"] == "admission.k8s.io/v1" and out["kind"] == "AdmissionReview"
    assert out["response"]["uid"] == body["request"]["uid"]
    return dict(out["response"])


def injected(pod: dict[str, Any], config: InjectionConfig = CONFIG) -> dict[str, Any]:
    response = inject_review(make_review(pod), config=config)["response"]
    assert response["allowed"] is True, response
    assert response["patchType"] == "JSONPatch"
    patched = json_patch(pod, json.loads(base64.b64decode(response["patch"])))
    assert isinstance(patched, dict)
    return patched


def container(pod: dict[str, Any], name: str, *, init: bool = False) -> dict[str, Any]:
    found = [c for c in pod["spec"]["initContainers" if init else "containers"] if c["name"] == name]
    assert len(found) == 1, [c["name"] for c in pod["spec"]["containers"]]
    return found[0]


def flag(args: list[str], name: str) -> str:
    assert args.count(name) == 1, (name, args)
    return args[args.index(name) + 1]


def validate_pod(pod: dict[str, Any]) -> None:
    named = copy.deepcopy(pod)
    named["metadata"].setdefault("name", "web-7d9f8c6b5-abcde")  # the API server names it after admission
    try:
        kubernetes_validate.validate(named, kubernetes_validate.latest_version(), strict=True)
    except kubernetes_validate.ValidationError as exc:
        pytest.fail(f"the injected pod is not a valid Pod: {str(exc).splitlines()[0]}")


def test_patched_pod_has_one_sidecar_one_init_container_and_is_a_valid_pod() -> None:
    pod = injected(make_pod())
    validate_pod(pod)
    assert [c["name"] for c in pod["spec"]["containers"]] == ["app", "istio-proxy"]
    assert [c["name"] for c in pod["spec"]["initContainers"]] == ["istio-init"]
    init = container(pod, "istio-init", init=True)
    assert init["args"][0] == "iptables" and flag(init["args"], "--proxy-uid") == "1337"
    assert sorted(init["securityContext"]["capabilities"]["add"]) == ["NET_ADMIN", "NET_RAW"]
    assert init["securityContext"]["runAsUser"] == 0
    proxy = container(pod, "istio-proxy")
    assert proxy["image"] == init["image"] == "registry.example/meshd:1.0"
    assert proxy["args"][0] == "agent" and flag(proxy["args"], "--interception-mode") == "REDIRECT"
    assert proxy["securityContext"]["runAsUser"] == 1337 and proxy["securityContext"]["runAsNonRoot"] is True
    assert proxy["securityContext"]["readOnlyRootFilesystem"] is True
    assert proxy["readinessProbe"]["httpGet"] == {"path": "/healthz/ready", "port": 15021}
    assert {"containerPort": 15090, "name": "http-envoy-prom", "protocol": "TCP"} in proxy["ports"]
    assert flag(proxy["args"], "--xds-address") == "istiod.istio-system.svc:15012"
    assert flag(proxy["args"], "--pod-ports") == "8080,9090"
    env = {e["name"]: e["valueFrom"]["fieldRef"]["fieldPath"] for e in proxy["env"]}
    assert env["POD_NAME"] == "metadata.name" and env["POD_NAMESPACE"] == "metadata.namespace"
    assert env["INSTANCE_IP"] == "status.podIP" and env["SERVICE_ACCOUNT"] == "spec.serviceAccountName"


def _mount_dir(container: dict[str, Any], volume: str) -> str:
    return str(next(m["mountPath"] for m in container["volumeMounts"] if m["name"] == volume))


def test_the_files_the_agent_reads_are_the_volumes_the_pod_mounts() -> None:
    pod = injected(make_pod())
    proxy = container(pod, "istio-proxy")
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    token_source = volumes["istio-token"]["projected"]["sources"][0]["serviceAccountToken"]
    assert token_source["audience"] == "istio-ca"
    token = flag(proxy["args"], "--token-file")
    assert token == f"{_mount_dir(proxy, 'istio-token')}/{token_source['path']}"
    assert volumes["istiod-ca-cert"]["configMap"]["name"] == "istio-ca-root-cert"
    assert flag(proxy["args"], "--root-cert") == f"{_mount_dir(proxy, 'istiod-ca-cert')}/root-cert.pem"
    assert "emptyDir" in volumes["workload-socket"]
    assert flag(proxy["args"], "--sds-socket").startswith(_mount_dir(proxy, "workload-socket") + "/")
    assert "emptyDir" in volumes["istio-envoy"] and flag(proxy["args"], "--workdir") == _mount_dir(proxy, "istio-envoy")
    assert {m["name"] for m in proxy["volumeMounts"]} <= set(volumes)


def test_the_sidecar_arguments_parse_with_meshd_agent_and_identity_comes_from_the_downward_api() -> None:
    pod = injected(make_pod(labels={"app": "web", "version": "v2"}))
    proxy = container(pod, "istio-proxy")
    args, unknown = build_parser().parse_known_args(proxy["command"][1:] + proxy["args"])
    assert unknown in ([], ["--interception-mode", "REDIRECT"])  # that flag comes with capture mode (issue 7 item 4)
    env = {
        "POD_NAME": "web-7d9f8c6b5-abcde",
        "POD_NAMESPACE": "shop",
        "INSTANCE_IP": "10.1.2.3",
        "SERVICE_ACCOUNT": "web",
    }
    settings = settings_from_args(args, env)
    assert (settings.pod, settings.namespace, settings.ip, settings.service_account) == (
        "web-7d9f8c6b5-abcde", "shop", "10.1.2.3", "web",
    )  # fmt: skip
    assert settings.root_cert is not None and str(settings.root_cert) == "/var/run/secrets/istio/root-cert.pem"
    assert settings.labels["app"] == "web" and settings.labels["security.istio.io/tlsMode"] == "istio"
    assert settings.xds_server_name == "istiod.istio-system.svc" and settings.status_port == 15021


def test_agent_flags_win_over_the_environment_and_a_missing_pod_name_is_an_error() -> None:
    args = build_parser().parse_args(["agent", "--pod", "flag-pod", "--ip", "10.0.0.9"])
    settings = settings_from_args(args, {"POD_NAME": "env-pod", "INSTANCE_IP": "10.9.9.9", "POD_NAMESPACE": "ns1"})
    assert (settings.pod, settings.ip, settings.namespace, settings.service_account) == (
        "flag-pod", "10.0.0.9", "ns1", "default",
    )  # fmt: skip
    with pytest.raises(ValueError, match="POD_NAME"):
        settings_from_args(build_parser().parse_args(["agent"]), {})


def test_labels_and_annotations_istio_adds() -> None:
    pod = injected(make_pod(labels={"app": "web", "version": "v2"}))
    labels, annotations = pod["metadata"]["labels"], pod["metadata"]["annotations"]
    assert labels["security.istio.io/tlsMode"] == "istio"
    assert labels["service.istio.io/canonical-name"] == "web"
    assert labels["service.istio.io/canonical-revision"] == "v2"
    status = json.loads(annotations["sidecar.istio.io/status"])
    assert status["containers"] == ["istio-proxy"] and status["initContainers"] == ["istio-init"]
    assert set(status["volumes"]) == {v["name"] for v in pod["spec"]["volumes"]}
    assert annotations["kubectl.kubernetes.io/default-container"] == "app"
    bare = injected(make_pod())  # no labels at all: the Deployment's name, revision "latest"
    assert bare["metadata"]["labels"]["service.istio.io/canonical-name"] == "web"
    assert bare["metadata"]["labels"]["service.istio.io/canonical-revision"] == "latest"


def test_existing_init_containers_volumes_labels_are_kept() -> None:
    pod = make_pod(labels={"app": "web", "service.istio.io/canonical-name": "shop-web"}, annotations={"a/b~c": "x"})
    pod["spec"]["initContainers"] = [{"name": "migrate", "image": "busybox"}]
    pod["spec"]["volumes"] = [{"name": "data", "emptyDir": {}}]
    out = injected(pod)
    validate_pod(out)
    assert [c["name"] for c in out["spec"]["initContainers"]] == ["migrate", "istio-init"]
    assert out["spec"]["volumes"][0]["name"] == "data" and len(out["spec"]["volumes"]) == 7
    assert out["metadata"]["labels"]["service.istio.io/canonical-name"] == "shop-web"  # not overwritten
    assert out["metadata"]["annotations"]["a/b~c"] == "x"


@pytest.mark.parametrize(
    ("labels", "annotations", "inject"),
    [
        ({}, {}, True),  # the webhook's selectors chose this pod: the policy injects
        ({"sidecar.istio.io/inject": "true"}, {}, True),
        ({"sidecar.istio.io/inject": "false"}, {}, False),
        ({}, {"sidecar.istio.io/inject": "false"}, False),
        ({}, {"sidecar.istio.io/inject": "no"}, False),
        ({"sidecar.istio.io/inject": "true"}, {"sidecar.istio.io/inject": "false"}, True),  # the label wins
        ({"sidecar.istio.io/inject": "false"}, {"sidecar.istio.io/inject": "true"}, False),
        ({"sidecar.istio.io/inject": "maybe"}, {}, True),
    ],
)
def test_opt_in_and_opt_out(labels: dict[str, str], annotations: dict[str, str], inject: bool) -> None:
    response = answer(make_pod(labels=labels, annotations=annotations))
    assert response["allowed"] is True
    assert ("patch" in response) is inject


def test_host_network_pods_and_system_namespaces_are_not_injected() -> None:
    pod = make_pod()
    pod["spec"]["hostNetwork"] = True
    assert "patch" not in answer(pod)
    body = make_review(make_pod())
    body["request"]["namespace"] = "kube-system"
    assert "patch" not in inject_review(body, config=CONFIG)["response"]


@pytest.mark.parametrize(
    ("annotation", "value", "init_flag", "expected"),
    [
        ("traffic.sidecar.istio.io/includeOutboundIPRanges", "10.0.0.0/8, 172.16.0.0/12",
         "--include-outbound-ip-ranges", "10.0.0.0/8,172.16.0.0/12"),
        ("traffic.sidecar.istio.io/excludeOutboundIPRanges", "169.254.169.254/32", "--exclude-outbound-ip-ranges",
         "169.254.169.254/32"),
        ("traffic.sidecar.istio.io/excludeInboundPorts", "8081,9000", "--exclude-inbound-ports",
         "15090,15021,15020,8081,9000"),
        ("traffic.sidecar.istio.io/excludeOutboundPorts", "3306", "--exclude-outbound-ports", "3306"),
        ("traffic.sidecar.istio.io/includeInboundPorts", "8080", "--include-inbound-ports", "8080"),
    ],
)  # fmt: skip
def test_each_capture_annotation_reaches_the_init_container(
    annotation: str, value: str, init_flag: str, expected: str
) -> None:
    default = flag(container(injected(make_pod()), "istio-init", init=True)["args"], init_flag)
    init = container(injected(make_pod(annotations={annotation: value})), "istio-init", init=True)
    assert flag(init["args"], init_flag) == expected != default


def test_capture_defaults_as_istio() -> None:
    args = container(injected(make_pod()), "istio-init", init=True)["args"]
    assert flag(args, "--include-outbound-ip-ranges") == "*" and flag(args, "--include-inbound-ports") == "*"
    assert flag(args, "--exclude-inbound-ports") == "15090,15021,15020"  # Envoy's own ports are never captured
    assert flag(args, "--exclude-outbound-ip-ranges") == "" and flag(args, "--exclude-outbound-ports") == ""


def test_proxy_image_log_level_and_proxy_config_annotations() -> None:
    pod = injected(
        make_pod(
            annotations={
                "sidecar.istio.io/proxyImage": "registry.example/meshd:debug",
                "sidecar.istio.io/logLevel": "debug",
                "proxy.istio.io/config": "concurrency: 4\ndiscoveryAddress: meshd-canary.istio-system.svc:15012\n",
            }
        )
    )
    proxy, init = container(pod, "istio-proxy"), container(pod, "istio-init", init=True)
    assert proxy["image"] == init["image"] == "registry.example/meshd:debug"
    assert flag(proxy["args"], "--envoy-log-level") == "debug"
    assert flag(proxy["args"], "--envoy-concurrency") == "4"
    assert flag(proxy["args"], "--xds-address") == "meshd-canary.istio-system.svc:15012"
    assert flag(proxy["args"], "--ca-address") == "meshd-canary.istio-system.svc:15012"
    json_config = injected(make_pod(annotations={"proxy.istio.io/config": '{"concurrency": 1}'}))
    assert flag(container(json_config, "istio-proxy")["args"], "--envoy-concurrency") == "1"


@pytest.mark.parametrize(
    ("annotation", "value"),
    [
        ("traffic.sidecar.istio.io/includeOutboundIPRanges", "10.0.0.0/8,not-a-cidr"),
        ("traffic.sidecar.istio.io/excludeOutboundIPRanges", "*"),
        ("traffic.sidecar.istio.io/excludeInboundPorts", "80,70000"),
        ("traffic.sidecar.istio.io/excludeOutboundPorts", "http"),
        ("traffic.sidecar.istio.io/includeInboundPorts", "-1"),
        ("sidecar.istio.io/proxyImage", "two words"),
        ("sidecar.istio.io/logLevel", "chatty"),
        ("proxy.istio.io/config", "concurrency: [1"),
        ("proxy.istio.io/config", "- a list"),
        ("proxy.istio.io/config", "concurrency: -2"),
        ("proxy.istio.io/config", "discoveryAddress: no-port"),
    ],
)
def test_unusable_annotation_values_are_refused_naming_the_annotation(annotation: str, value: str) -> None:
    response = answer(make_pod(annotations={annotation: value}))
    assert response["allowed"] is False and "patch" not in response
    message = response["status"]["message"]
    assert message.startswith("Pod shop/web-7d9f8c6b5-: ") and f"metadata.annotations[{annotation}]" in message
    assert response["status"]["code"] == 400


def test_idempotent_an_injected_pod_gets_no_second_sidecar() -> None:
    once = injected(make_pod())
    again = answer(once)
    assert again["allowed"] is True and "patch" not in again
    handmade = make_pod()
    handmade["spec"]["containers"].append({"name": "istio-proxy", "image": "x"})
    assert "patch" not in answer(handmade)


def test_reserved_names_are_refused_not_doubled() -> None:
    pod = make_pod()
    pod["spec"]["volumes"] = [{"name": "istio-envoy", "emptyDir": {}}]
    response = answer(pod)
    assert response["allowed"] is False and "spec.volumes" in response["status"]["message"]


def test_update_and_delete_are_allowed_untouched() -> None:
    for operation in ("UPDATE", "DELETE"):
        response = answer(make_pod(), operation=operation)
        assert response["allowed"] is True and "patch" not in response


@pytest.mark.parametrize(
    ("name", "mutate", "message"),
    [
        ("not-a-pod-kind", lambda b: b["request"].update(kind={"group": "apps", "version": "v1", "kind": "Deployment"}),
         "Pods only"),
        ("object-missing", lambda b: b["request"].pop("object"), "request.object is missing"),
        ("object-not-a-pod", lambda b: b["request"]["object"].update(kind="Service"), "not a Pod"),
        ("no-containers", lambda b: b["request"]["object"]["spec"].update(containers=[]), "spec.containers"),
        ("no-spec", lambda b: b["request"]["object"].pop("spec"), "spec is missing"),
        ("labels-not-a-map", lambda b: b["request"]["object"]["metadata"].update(labels=["x"]), "metadata.labels"),
        ("volumes-not-a-list", lambda b: b["request"]["object"]["spec"].update(volumes={"a": 1}), "spec.volumes"),
    ],
)  # fmt: skip
def test_malformed_pods_are_refused_with_a_message(name: str, mutate: Any, message: str) -> None:
    body = make_review(make_pod())
    mutate(body)
    response = inject_review(body, config=CONFIG)["response"]
    assert response["allowed"] is False, name
    assert message in response["status"]["message"], response["status"]["message"]


@pytest.mark.parametrize(
    "body",
    [
        None,
        [1, 2],
        {"kind": "Pod"},
        {"apiVersion": "v9", "kind": "AdmissionReview", "request": {"uid": "x"}},
        {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview"},
        {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": {"kind": {}}},
    ],
)
def test_bodies_that_are_not_admission_reviews_raise_bad_review(body: Any) -> None:
    with pytest.raises(BadReview):
        inject_review(body, config=CONFIG)


def test_the_mesh_config_discovery_address_is_read_at_each_injection() -> None:
    """meshConfig.defaultConfig.discoveryAddress (a live input) wins over --inject-xds-address; a pod's
    proxy.istio.io/config wins over both."""
    import logging

    from meshd.settings import Settings
    from meshd.wiring.webhooks import Webhook

    mesh = {"address": ""}
    settings = Settings(inject_xds_address="meshd.istio-system.svc:15012")
    webhook = Webhook(
        settings=settings,
        ssl_context=None,
        log=logging.getLogger("test"),
        metrics=None,  # type: ignore[arg-type]
        discovery_address=lambda: mesh["address"],
    )
    current = webhook._injection()
    assert current().xds_address == "meshd.istio-system.svc:15012"
    mesh["address"] = "meshd-canary.istio-system.svc:15012"
    config = current()
    assert flag(container(injected(make_pod(), config), "istio-proxy")["args"], "--xds-address") == mesh["address"]
    annotated = make_pod(annotations={"proxy.istio.io/config": "discoveryAddress: own.istio-system.svc:15012"})
    proxy = container(injected(annotated, config), "istio-proxy")
    assert flag(proxy["args"], "--xds-address") == "own.istio-system.svc:15012"
