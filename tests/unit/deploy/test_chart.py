"""The Helm chart, linted and rendered by real Helm with default and non-default values; every rendered
manifest validated against Kubernetes' OpenAPI schemas (kubernetes-validate, offline)."""

from __future__ import annotations

import shlex
from typing import Any

import kubernetes_validate
import pytest

from meshd.cli import build_parser, serve_settings
from tests.unit.deploy.chart import NAMESPACE, lint, notes, of_kind, one, render

KUBE_VERSION = kubernetes_validate.latest_version()
VALUE_SETS: dict[str, dict[str, Any]] = {
    "default": {},
    "no-crds": {"crds": {"install": False}},
    "ha": {"replicaCount": 3, "autoscaling": {"enabled": True, "minReplicas": 3, "maxReplicas": 7}},
    "custom": {
        "image": {"repository": "registry.example.com/mesh/meshd", "tag": "1.2.3", "pullPolicy": "Always"},
        "serviceName": "istiod",
        "mesh": {
            "trustDomain": "example.org",
            "discoverySelectors": [{"matchLabels": {"mesh": "on"}}],
        },
        "podDisruptionBudget": {"enabled": False},
        "webhooks": {"injectorName": "inj", "validatorName": "val", "validation": {"enabled": False}},
    },
}


@pytest.fixture(scope="module", params=sorted(VALUE_SETS))
def rendered(request: pytest.FixtureRequest) -> tuple[str, list[dict[str, Any]]]:
    return request.param, render(VALUE_SETS[request.param])


@pytest.fixture(scope="module")
def default() -> list[dict[str, Any]]:
    return render({})


@pytest.mark.parametrize("name", sorted(VALUE_SETS))
def test_helm_lint_is_clean(name: str) -> None:
    report = lint(VALUE_SETS[name])
    assert report["errors"] == []
    assert [m for m in report["messages"] if m["severity"] >= 2] == []  # no warnings, no errors


def test_every_manifest_is_valid_kubernetes(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    _, docs = rendered
    assert docs
    for doc in docs:
        kubernetes_validate.validate(doc, KUBE_VERSION, strict=True)  # raises on any schema error


def test_kubernetes_validate_refuses_a_broken_manifest(default: list[dict[str, Any]]) -> None:
    deployment = one(default, "Deployment")
    broken = {**deployment, "spec": {**deployment["spec"], "replicas": "three"}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBE_VERSION, strict=True)


def test_default_renders_the_whole_control_plane(default: list[dict[str, Any]]) -> None:
    kinds = sorted({d["kind"] for d in default})
    assert kinds == [
        "ClusterRole",
        "ClusterRoleBinding",
        "ConfigMap",
        "CustomResourceDefinition",
        "Deployment",
        "MutatingWebhookConfiguration",
        "PodDisruptionBudget",
        "Role",
        "RoleBinding",
        "Service",
        "ServiceAccount",
        "ValidatingWebhookConfiguration",
    ]
    for doc in default:
        if doc["kind"] not in ("ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition") and not doc[
            "kind"
        ].endswith("WebhookConfiguration"):
            assert doc["metadata"]["namespace"] == NAMESPACE, doc["metadata"]


def test_crds_rendered_only_when_installed(default: list[dict[str, Any]]) -> None:
    crds = of_kind(default, "CustomResourceDefinition")
    assert sorted(c["metadata"]["name"] for c in crds) == [
        "authorizationpolicies.security.istio.io",
        "destinationrules.networking.istio.io",
        "envoyfilters.networking.istio.io",
        "gateways.networking.istio.io",
        "peerauthentications.security.istio.io",
        "proxyconfigs.networking.istio.io",
        "requestauthentications.security.istio.io",
        "serviceentries.networking.istio.io",
        "sidecars.networking.istio.io",
        "telemetries.telemetry.istio.io",
        "virtualservices.networking.istio.io",
        "wasmplugins.extensions.istio.io",
        "workloadentries.networking.istio.io",
        "workloadgroups.networking.istio.io",
    ]
    for c in crds:  # kept on uninstall: deleting a CRD deletes every object of its kind
        assert c["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    assert of_kind(render({"crds": {"install": False}}), "CustomResourceDefinition") == []


def test_deployment(default: list[dict[str, Any]]) -> None:
    deployment = one(default, "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    assert deployment["spec"]["replicas"] == 1
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 1337
    (container,) = pod["containers"]
    assert container["image"] == "ghcr.io/meshd/meshd:0.1.0"  # tag defaults to appVersion
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert container["readinessProbe"]["httpGet"] == {"path": "/ready", "port": 15014}
    assert "tcpSocket" in container["livenessProbe"]
    assert container["resources"]["requests"]
    env = {e["name"]: e for e in container["env"]}
    assert env["POD_NAMESPACE"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.namespace"
    assert {p["containerPort"] for p in container["ports"]} == {15010, 15012, 15014, 15017}
    assert deployment["spec"]["template"]["metadata"]["annotations"]["sidecar.istio.io/inject"] == "false"
    assert pod["serviceAccountName"] == one(default, "ServiceAccount")["metadata"]["name"]


def test_deployment_args_are_meshd_serve_flags(default: list[dict[str, Any]]) -> None:
    """The rendered args parse with meshd's own CLI parser (Kubernetes mode: no --config-dir, in-cluster)."""
    (container,) = one(default, "Deployment")["spec"]["template"]["spec"]["containers"]
    args = [a.replace("$(POD_NAMESPACE)", NAMESPACE).replace("$(POD_NAME)", "meshd-abc") for a in container["args"]]
    parsed, unknown = build_parser().parse_known_args(args)
    # the webhook names: the contract with the webhook certificate/caBundle slice (see README)
    assert [u.split("=")[0] for u in unknown if u.startswith("--")] in (
        [],
        ["--injector-webhook-name", "--validator-webhook-name"],
    ), shlex.join(unknown)
    assert parsed.command == "serve"
    assert parsed.config_dir is None and parsed.kubeconfig is None
    assert parsed.namespace == NAMESPACE
    assert parsed.webhook_port == 15017
    settings = serve_settings(parsed)
    assert f"meshd.{NAMESPACE}.svc" in settings.secure_sans
    assert settings.trust_domain == "cluster.local" and settings.ca_enabled
    assert settings.leader_identity == "meshd-abc"


def test_service_ports(default: list[dict[str, Any]]) -> None:
    service = one(default, "Service")
    ports = {p["port"]: (p["name"], p["targetPort"]) for p in service["spec"]["ports"]}
    assert ports == {
        15010: ("grpc-xds", "grpc-xds"),
        15012: ("https-dns", "tls-xds"),
        15014: ("http-monitoring", "http-monitoring"),
        443: ("https-webhook", "https-webhook"),
    }
    container_ports = {
        p["name"]: p["containerPort"]
        for p in one(default, "Deployment")["spec"]["template"]["spec"]["containers"][0]["ports"]
    }
    assert container_ports["https-webhook"] == 15017
    selector = service["spec"]["selector"]
    labels = one(default, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert selector.items() <= labels.items()


def test_mesh_configmap(default: list[dict[str, Any]]) -> None:
    import yaml

    configmap = one(default, "ConfigMap")
    assert configmap["metadata"]["name"] == "istio"
    mesh = yaml.safe_load(configmap["data"]["mesh"])
    assert mesh == {
        "rootNamespace": NAMESPACE,
        "trustDomain": "cluster.local",
        "defaultConfig": {"discoveryAddress": f"meshd.{NAMESPACE}.svc:15012"},
    }
    custom = yaml.safe_load(one(render(VALUE_SETS["custom"]), "ConfigMap")["data"]["mesh"])
    assert custom["trustDomain"] == "example.org"
    assert custom["discoverySelectors"] == [{"matchLabels": {"mesh": "on"}}]
    assert custom["defaultConfig"]["discoveryAddress"] == f"istiod.{NAMESPACE}.svc:15012"


def test_mesh_configmap_is_what_meshd_reads(default: list[dict[str, Any]]) -> None:
    from meshd.kube.meshconfig import parse_mesh_config

    parsed = parse_mesh_config(one(render(VALUE_SETS["custom"]), "ConfigMap")["data"]["mesh"])
    assert parsed.trust_domain == "example.org"
    assert parsed.selects({"mesh": "on"}) and not parsed.selects({"mesh": "off"})


def test_high_availability_values() -> None:
    docs = render(VALUE_SETS["ha"])
    hpa = one(docs, "HorizontalPodAutoscaler")
    assert hpa["spec"]["minReplicas"] == 3 and hpa["spec"]["maxReplicas"] == 7
    assert hpa["spec"]["scaleTargetRef"]["name"] == one(docs, "Deployment")["metadata"]["name"]
    assert "replicas" not in one(docs, "Deployment")["spec"]  # the HPA owns it
    assert one(render({"replicaCount": 3}), "Deployment")["spec"]["replicas"] == 3
    assert of_kind(render({}), "HorizontalPodAutoscaler") == []
    assert one(docs, "PodDisruptionBudget")["spec"]["minAvailable"] == 1


def test_custom_values() -> None:
    docs = render(VALUE_SETS["custom"])
    (container,) = one(docs, "Deployment")["spec"]["template"]["spec"]["containers"]
    assert container["image"] == "registry.example.com/mesh/meshd:1.2.3"
    assert container["imagePullPolicy"] == "Always"
    assert "--trust-domain=example.org" in container["args"]
    assert one(docs, "Service")["metadata"]["name"] == "istiod"
    assert of_kind(docs, "PodDisruptionBudget") == []
    assert of_kind(docs, "ValidatingWebhookConfiguration") == []
    assert one(docs, "MutatingWebhookConfiguration")["metadata"]["name"] == "inj"


def test_injection_webhook(default: list[dict[str, Any]]) -> None:
    config = one(default, "MutatingWebhookConfiguration")
    assert config["metadata"]["name"] == "meshd-sidecar-injector"
    by_namespace, by_object = config["webhooks"]
    for hook in (by_namespace, by_object):
        assert hook["clientConfig"]["service"] == {
            "name": "meshd",
            "namespace": NAMESPACE,
            "path": "/inject",
            "port": 443,
        }
        assert "caBundle" not in hook["clientConfig"]  # meshd patches it; helm upgrade must not wipe it
        assert hook["failurePolicy"] == "Ignore"
        assert hook["rules"] == [
            {"operations": ["CREATE"], "apiGroups": [""], "apiVersions": ["v1"], "resources": ["pods"]}
        ]
    assert selects(by_namespace, namespace={"istio-injection": "enabled"}, pod={})
    assert not selects(by_namespace, namespace={"istio-injection": "enabled"}, pod={"sidecar.istio.io/inject": "false"})
    assert not selects(by_namespace, namespace={"istio-injection": "disabled"}, pod={})
    assert selects(by_object, namespace={}, pod={"sidecar.istio.io/inject": "true"})
    assert not selects(by_object, namespace={}, pod={})
    assert not selects(by_object, namespace={"istio-injection": "disabled"}, pod={"sidecar.istio.io/inject": "true"})
    # never both: a pod is injected once
    for ns in ({"istio-injection": "enabled"}, {}, {"istio-injection": "disabled"}):
        for pod in ({}, {"sidecar.istio.io/inject": "true"}, {"sidecar.istio.io/inject": "false"}):
            assert not (selects(by_namespace, namespace=ns, pod=pod) and selects(by_object, namespace=ns, pod=pod))


def test_validation_webhook(default: list[dict[str, Any]]) -> None:
    config = one(default, "ValidatingWebhookConfiguration")
    assert config["metadata"]["name"] == "meshd-validator"
    (hook,) = config["webhooks"]
    assert hook["clientConfig"]["service"]["path"] == "/validate"
    assert hook["clientConfig"]["service"]["port"] == 443
    assert "caBundle" not in hook["clientConfig"]
    assert hook["failurePolicy"] == "Ignore"
    covered = {(g, r) for rule in hook["rules"] for g in rule["apiGroups"] for r in rule["resources"]}
    with_gateway_api = of_kind(render({"crds": {"gatewayApi": True}}), "CustomResourceDefinition")
    crds = {(c["spec"]["group"], c["spec"]["names"]["plural"]) for c in with_gateway_api}
    # every kind meshd translates; the kinds it does not translate yet are admitted (their status says so)
    unsupported = {
        ("networking.istio.io", "workloadgroups"),
    }
    assert covered == crds - unsupported


def test_notes_tell_the_next_step() -> None:
    text = notes()
    assert "kubectl label namespace <your-namespace> istio-injection=enabled" in text
    assert "rollout restart" in text
    assert "crds.install=false" in notes({"crds": {"install": False}})


def selects(hook: dict[str, Any], *, namespace: dict[str, str], pod: dict[str, str]) -> bool:
    """Whether the API server would call this webhook (namespaceSelector AND objectSelector)."""
    namespace = {"kubernetes.io/metadata.name": "apps", **namespace}
    return matches(hook.get("namespaceSelector", {}), namespace) and matches(hook.get("objectSelector", {}), pod)


def matches(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    if any(labels.get(k) != v for k, v in selector.get("matchLabels", {}).items()):
        return False
    for req in selector.get("matchExpressions", []):
        key, op, values = req["key"], req["operator"], req.get("values", [])
        ok = {
            "In": key in labels and labels[key] in values,
            "NotIn": key not in labels or labels[key] not in values,
            "Exists": key in labels,
            "DoesNotExist": key not in labels,
        }[op]
        if not ok:
            return False
    return True
