"""Gateway API status written by meshd's leader on a real kube-apiserver (tests/kubereal; skipped without
KUBEBUILDER_ASSETS), the CRDs the chart installs with crds.gatewayApi: GatewayClass Accepted (and
InvalidParameters), Gateway Accepted/Programmed (as Istio: AddressNotAssigned until a gateway pod exists and
while the LoadBalancer Service meshd deployed waits for an address, then that address), listener conditions
(UnsupportedProtocol, InvalidCertificateRef until the Secret exists) and attachedRoutes;
HTTPRoute Accepted/ResolvedRefs per parent with NotAllowedByListeners,
NoMatchingListenerHostname, NoMatchingParent, UnsupportedValue (an unsupported field), a mesh route (GAMMA:
a Service parent) Accepted, NoMatchingParent for a missing Service or port,
BackendNotFound, InvalidKind and RefNotPermitted until a ReferenceGrant allows the reference; TCPRoute and
TLSRoute status on TCP / TLS Passthrough listeners and a TLSRoute's on a Service parent; GRPCRoute Accepted,
NotAllowedByListeners (a listener whose
kinds exclude it), NoMatchingListenerHostname, BackendNotFound, RefNotPermitted until a ReferenceGrant, a Service
parent (mesh) Accepted, attachedRoutes and supportedKinds; a listener's certificateRef to another
namespace's Secret RefNotPermitted until a ReferenceGrant allows it. Another controller's
GatewayClass and Gateways get nothing from meshd."""

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
NS = "meshd-gwapi"
GW_NS = "gwapi-infra"
APP_NS = "gwapi-apps"
TEAM_NS = "gwapi-team"
GW = "gateway.networking.k8s.io/v1"
VERSIONS = {"TCPRoute": "gateway.networking.k8s.io/v1alpha2", "TLSRoute": "gateway.networking.k8s.io/v1alpha2"}


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def kube(real_kube: ControlPlane, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[KubeRest]:
    rest = KubeRest.from_kubeconfig(real_kube.kubeconfig)
    for ns in (NS, GW_NS, APP_NS, TEAM_NS):
        await rest.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
    work: pathlib.Path = tmp_path_factory.mktemp("gwapi-kube")
    meshd = Meshd(
        log_path=work / "meshd.log",
        kubeconfig=real_kube.kubeconfig,
        extra_args=("--namespace", NS, "--webhook-port", str(free_port()), "--status-interval", "0.2"),
    )
    try:
        await meshd.start()
        yield rest
    except BaseException:
        print(f"----- meshd.log -----\n{meshd.log()[-8000:]}")
        raise
    finally:
        await meshd.close()
        await rest.close()


def conditions(obj: dict[str, Any] | None) -> dict[str, tuple[str, str]]:
    found = ((obj or {}).get("status") or {}).get("conditions") or []
    return {c["type"]: (c["status"], c["reason"]) for c in found}


def parent_conditions(obj: dict[str, Any] | None, index: int = 0) -> dict[str, tuple[str, str]]:
    parents = ((obj or {}).get("status") or {}).get("parents") or []
    return {c["type"]: (c["status"], c["reason"]) for c in parents[index]["conditions"]} if len(parents) > index else {}


async def wait_for(kube: KubeRest, kind: str, ns: str, name: str, check: Any, what: str) -> dict[str, Any]:
    async def probe() -> dict[str, Any] | None:
        obj = await kube.get(VERSIONS.get(kind, GW), kind, ns, name)
        return obj if obj is not None and check(obj) else None

    found: dict[str, Any] = await eventually(probe, timeout=60, what=what)
    return found


def service(name: str, ns: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": ns},
        "spec": {"ports": [{"name": "http", "port": 8080}]},
    }


def route(name: str, ns: str, *, parent: dict[str, Any], backend: dict[str, Any], **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": GW,
        "kind": "HTTPRoute",
        "metadata": {"name": name, "namespace": ns},
        "spec": {"parentRefs": [parent], "rules": [{"backendRefs": [backend]}], **spec},
    }


GATEWAY = {
    "apiVersion": GW,
    "kind": "Gateway",
    "metadata": {"name": "gw", "namespace": GW_NS},
    "spec": {
        "gatewayClassName": "istio",
        "listeners": [
            {"name": "http", "port": 80, "protocol": "HTTP", "hostname": "*.example.com",
             "allowedRoutes": {"namespaces": {"from": "All"}}},
            {"name": "same", "port": 8080, "protocol": "HTTP"},
            {"name": "https", "port": 443, "protocol": "HTTPS",
             "tls": {"mode": "Terminate", "certificateRefs": [{"name": "gw-cert"}]}},
            {"name": "udp", "port": 9001, "protocol": "UDP"},
            {"name": "tcp", "port": 9000, "protocol": "TCP", "allowedRoutes": {"namespaces": {"from": "All"}}},
            {"name": "tls", "port": 8443, "protocol": "TLS", "hostname": "*.example.com",
             "tls": {"mode": "Passthrough"}, "allowedRoutes": {"namespaces": {"from": "All"}}},
        ],
    },
}  # fmt: skip
PARENT = {"name": "gw", "namespace": GW_NS, "sectionName": "http"}


async def test_gateway_class_and_gateway_status(kube: KubeRest) -> None:
    await kube.apply({"apiVersion": GW, "kind": "GatewayClass", "metadata": {"name": "istio"},
                      "spec": {"controllerName": "istio.io/gateway-controller"}})  # fmt: skip
    await kube.apply(
        {
            "apiVersion": GW,
            "kind": "GatewayClass",
            "metadata": {"name": "meshd-params"},
            "spec": {
                "controllerName": "meshd.io/gateway-controller",
                "parametersRef": {"group": "", "kind": "ConfigMap", "name": "x", "namespace": NS},
            },
        }
    )
    await kube.apply({"apiVersion": GW, "kind": "GatewayClass", "metadata": {"name": "foreign"},
                      "spec": {"controllerName": "example.com/other"}})  # fmt: skip
    await wait_for(kube, "GatewayClass", "", "istio", lambda o: conditions(o).get("Accepted") == ("True", "Accepted"),
                   "GatewayClass istio Accepted")  # fmt: skip
    await wait_for(kube, "GatewayClass", "", "meshd-params",
                   lambda o: conditions(o).get("Accepted") == ("False", "InvalidParameters"),
                   "GatewayClass with parametersRef: InvalidParameters")  # fmt: skip

    await kube.apply(GATEWAY)
    gw = await wait_for(kube, "Gateway", GW_NS, "gw", lambda o: "Programmed" in conditions(o), "Gateway status")
    assert conditions(gw)["Accepted"] == ("True", "Accepted")
    # no gateway pod yet: before the Service meshd deploys exists, "not found"; then "no instances" (Istio's)
    assert conditions(gw)["Programmed"][0] == "False"
    assert conditions(gw)["Programmed"][1] in ("AddressNotUsable", "AddressNotAssigned"), conditions(gw)
    listeners = {lst["name"]: lst for lst in gw["status"]["listeners"]}
    lc = {name: {c["type"]: (c["status"], c["reason"]) for c in lst["conditions"]} for name, lst in listeners.items()}
    assert lc["http"]["Accepted"] == ("True", "Accepted") and lc["http"]["Programmed"] == ("True", "Programmed")
    assert lc["udp"]["Accepted"] == ("False", "UnsupportedProtocol")
    assert lc["tcp"]["Accepted"] == ("True", "Accepted") and lc["tls"]["Programmed"] == ("True", "Programmed")
    assert listeners["tcp"]["supportedKinds"] == [{"group": "gateway.networking.k8s.io", "kind": "TCPRoute"}]
    assert listeners["tls"]["supportedKinds"] == [{"group": "gateway.networking.k8s.io", "kind": "TLSRoute"}]
    assert lc["https"]["ResolvedRefs"] == ("False", "InvalidCertificateRef")
    assert listeners["http"]["supportedKinds"] == [
        {"group": "gateway.networking.k8s.io", "kind": "HTTPRoute"},
        {"group": "gateway.networking.k8s.io", "kind": "GRPCRoute"},
    ]

    # the Secret appears: the HTTPS listener resolves; another controller's classes get nothing of meshd
    cert, key = _tls_pair()
    await kube.apply({"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
                      "metadata": {"name": "gw-cert", "namespace": GW_NS},
                      "stringData": {"tls.crt": cert, "tls.key": key}})  # fmt: skip

    def https_resolved(o: dict[str, Any]) -> bool:
        https = next(lst for lst in o["status"]["listeners"] if lst["name"] == "https")
        return any(c["type"] == "ResolvedRefs" and c["status"] == "True" for c in https["conditions"])

    await wait_for(kube, "Gateway", GW_NS, "gw", https_resolved, "HTTPS listener ResolvedRefs once the Secret exists")
    foreign = await kube.get(GW, "GatewayClass", "", "foreign")
    assert not (foreign or {}).get("status", {}).get("conditions"), foreign

    # a gateway pod labelled with the Gateway's name: Programmed, its IP the address
    await kube.apply({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "gw-1", "namespace": GW_NS,
                      "labels": {"gateway.networking.k8s.io/gateway-name": "gw"}},
                      "spec": {"containers": [{"name": "proxy", "image": "envoy"}]}})  # fmt: skip
    pod = await kube.get("v1", "Pod", GW_NS, "gw-1")
    assert pod is not None
    pod["status"] = {"podIP": "10.70.0.5", "podIPs": [{"ip": "10.70.0.5"}], "phase": "Running"}
    await kube.replace(pod, subresource="status")
    # the Service meshd deployed is a LoadBalancer (the default) and nothing assigns it an address here:
    # Programmed False, AddressNotAssigned, "address pending", and no address (as Istio)
    host = f"gw-istio.{GW_NS}.svc.cluster.local"

    def pending(o: dict[str, Any]) -> bool:
        found = [c for c in o["status"]["conditions"] if c["type"] == "Programmed"]
        return bool(found) and found[0]["reason"] == "AddressNotAssigned" and "address pending" in found[0]["message"]

    gw = await wait_for(kube, "Gateway", GW_NS, "gw", pending, "Gateway waiting for its load balancer address")
    programmed_condition = next(c for c in gw["status"]["conditions"] if c["type"] == "Programmed")
    assert programmed_condition["status"] == "False"
    assert f'address pending for hostname "{host}"' in programmed_condition["message"], programmed_condition
    assert not gw["status"].get("addresses"), gw["status"]
    # the cloud's controller assigns one (written here through the Service's status, as it would)
    svc = await kube.get("v1", "Service", GW_NS, "gw-istio")
    assert svc is not None and svc["spec"]["type"] == "LoadBalancer", svc
    svc["status"] = {"loadBalancer": {"ingress": [{"ip": "203.0.113.10"}]}}
    await kube.replace(svc, subresource="status")
    programmed = ("True", "Programmed")
    gw = await wait_for(kube, "Gateway", GW_NS, "gw", lambda o: conditions(o).get("Programmed") == programmed,
                        "Gateway Programmed once its load balancer has an address")  # fmt: skip
    assert gw["status"]["addresses"] == [{"type": "IPAddress", "value": "203.0.113.10"}]


async def test_route_status_reasons(kube: KubeRest) -> None:
    await kube.apply(service("web", APP_NS))
    await kube.apply(service("shared", TEAM_NS))
    backend = {"name": "web", "port": 8080}
    cases = {
        "ok": (route("ok", APP_NS, parent=PARENT, backend=backend, hostnames=["web.example.com"]),
               {"Accepted": ("True", "Accepted"), "ResolvedRefs": ("True", "ResolvedRefs")}),
        "not-allowed": (route("not-allowed", APP_NS, parent={**PARENT, "sectionName": "same"}, backend=backend),
                        {"Accepted": ("False", "NotAllowedByListeners")}),
        "hostname": (route("hostname", APP_NS, parent=PARENT, backend=backend, hostnames=["web.other.org"]),
                     {"Accepted": ("False", "NoMatchingListenerHostname")}),
        "no-parent": (route("no-parent", APP_NS, parent={**PARENT, "sectionName": "nope"}, backend=backend),
                      {"Accepted": ("False", "NoMatchingParent")}),
        "mesh": (route("mesh", APP_NS, parent={"group": "", "kind": "Service", "name": "web"}, backend=backend),
                 {"Accepted": ("True", "Accepted"), "ResolvedRefs": ("True", "ResolvedRefs")}),
        "mesh-consumer": (route("mesh-consumer", TEAM_NS, parent={"group": "", "kind": "Service", "name": "web",
                                                                  "namespace": APP_NS, "port": 8080},
                                backend={"name": "shared", "port": 8080}),
                          {"Accepted": ("True", "Accepted"), "ResolvedRefs": ("True", "ResolvedRefs")}),
        "mesh-missing": (route("mesh-missing", APP_NS, parent={"group": "", "kind": "Service", "name": "nowhere"},
                               backend=backend),
                         {"Accepted": ("False", "NoMatchingParent")}),
        "mesh-port": (route("mesh-port", APP_NS, parent={"group": "", "kind": "Service", "name": "web", "port": 9999},
                            backend=backend),
                      {"Accepted": ("False", "NoMatchingParent")}),
        "missing": (route("missing", APP_NS, parent=PARENT, backend={"name": "nowhere", "port": 8080}),
                    {"Accepted": ("True", "Accepted"), "ResolvedRefs": ("False", "BackendNotFound")}),
        "kind": (route("kind", APP_NS, parent=PARENT, backend={"kind": "ConfigMap", "name": "x", "port": 80}),
                 {"ResolvedRefs": ("False", "InvalidKind")}),
        "refused": (route("refused", APP_NS, parent=PARENT, backend=backend) | {"spec": {
                        "parentRefs": [PARENT], "rules": [{"backendRefs": [backend],
                                                           "retry": {"backoff": "0s"}}]}},
                    {"Accepted": ("False", "UnsupportedValue")}),
    }  # fmt: skip
    for obj, _ in cases.values():
        await kube.apply(obj)
    for name, (obj, expected) in cases.items():
        await wait_for(
            kube, "HTTPRoute", obj["metadata"]["namespace"], name,
            lambda o, e=expected: all(parent_conditions(o).get(t) == v for t, v in e.items()),
            f"HTTPRoute {name}: {expected}",
        )  # fmt: skip
    gw = await wait_for(
        kube, "Gateway", GW_NS, "gw",
        lambda o: next(lst for lst in o["status"]["listeners"] if lst["name"] == "http")["attachedRoutes"] == 3,
        "listener http: 3 attached routes (ok, missing, kind)",
    )  # fmt: skip
    assert next(lst for lst in gw["status"]["listeners"] if lst["name"] == "same")["attachedRoutes"] == 0


async def test_cross_namespace_backend_needs_a_reference_grant(kube: KubeRest) -> None:
    cross = route("cross", APP_NS, parent=PARENT, backend={"name": "shared", "namespace": TEAM_NS, "port": 8080})
    await kube.apply(cross)
    await wait_for(kube, "HTTPRoute", APP_NS, "cross",
                   lambda o: parent_conditions(o).get("ResolvedRefs") == ("False", "RefNotPermitted"),
                   "RefNotPermitted without a ReferenceGrant")  # fmt: skip
    await kube.apply({
        "apiVersion": "gateway.networking.k8s.io/v1beta1", "kind": "ReferenceGrant",
        "metadata": {"name": "apps-to-shared", "namespace": TEAM_NS},
        "spec": {"from": [{"group": "gateway.networking.k8s.io", "kind": "HTTPRoute", "namespace": APP_NS}],
                 "to": [{"group": "", "kind": "Service", "name": "shared"}]},
    })  # fmt: skip
    await wait_for(kube, "HTTPRoute", APP_NS, "cross",
                   lambda o: parent_conditions(o).get("ResolvedRefs") == ("True", "ResolvedRefs"),
                   "ResolvedRefs once a ReferenceGrant allows it")  # fmt: skip


async def test_grpc_route_status(kube: KubeRest) -> None:
    await kube.apply(service("echo", APP_NS))
    await kube.apply(service("echo", TEAM_NS))
    await kube.apply({"apiVersion": GW, "kind": "Gateway", "metadata": {"name": "grpc-gw", "namespace": GW_NS},
                      "spec": {"gatewayClassName": "istio", "listeners": [
                          {"name": "grpc", "port": 80, "protocol": "HTTP", "hostname": "*.example.com",
                           "allowedRoutes": {"namespaces": {"from": "All"}}},
                          {"name": "http-only", "port": 8081, "protocol": "HTTP",
                           "allowedRoutes": {"namespaces": {"from": "All"},
                                             "kinds": [{"kind": "HTTPRoute"}]}}]}})  # fmt: skip
    parent = {"name": "grpc-gw", "namespace": GW_NS, "sectionName": "grpc"}

    def grpc_route(
        name: str, *, section: str = "grpc", backend: dict[str, Any] | None = None, **spec: Any
    ) -> dict[str, Any]:
        return {"apiVersion": GW, "kind": "GRPCRoute", "metadata": {"name": name, "namespace": APP_NS},
                "spec": {"parentRefs": [{**parent, "sectionName": section}],
                         "rules": [{"matches": [{"method": {"service": "meshd.test.Echo", "method": "Say"}}],
                                    "backendRefs": [backend or {"name": "echo", "port": 8080}]}], **spec}}  # fmt: skip

    cases = {
        "grpc-ok": (grpc_route("grpc-ok", hostnames=["echo.example.com"]),
                    {"Accepted": ("True", "Accepted"), "ResolvedRefs": ("True", "ResolvedRefs")}),
        "grpc-kinds": (grpc_route("grpc-kinds", section="http-only"),
                       {"Accepted": ("False", "NotAllowedByListeners")}),
        "grpc-hostname": (grpc_route("grpc-hostname", hostnames=["echo.other.org"]),
                          {"Accepted": ("False", "NoMatchingListenerHostname")}),
        "grpc-missing": (grpc_route("grpc-missing", backend={"name": "nowhere", "port": 8080}),
                         {"Accepted": ("True", "Accepted"), "ResolvedRefs": ("False", "BackendNotFound")}),
        "grpc-cross": (grpc_route("grpc-cross", backend={"name": "echo", "namespace": TEAM_NS, "port": 8080}),
                       {"Accepted": ("True", "Accepted"), "ResolvedRefs": ("False", "RefNotPermitted")}),
        "grpc-mesh": (grpc_route("grpc-mesh", parentRefs=[{"group": "", "kind": "Service", "name": "echo",
                                                            "port": 8080}]),
                      {"Accepted": ("True", "Accepted"), "ResolvedRefs": ("True", "ResolvedRefs")}),
    }  # fmt: skip
    for obj, _ in cases.values():
        await kube.apply(obj)
    for name, (_, expected) in cases.items():
        await wait_for(
            kube, "GRPCRoute", APP_NS, name,
            lambda o, e=expected: all(parent_conditions(o).get(t) == v for t, v in e.items()),
            f"GRPCRoute {name}: {expected}",
        )  # fmt: skip

    def attached(o: dict[str, Any]) -> dict[str, int]:
        return {lst["name"]: lst["attachedRoutes"] for lst in (o.get("status") or {}).get("listeners") or []}

    gw = await wait_for(kube, "Gateway", GW_NS, "grpc-gw", lambda o: attached(o) == {"grpc": 3, "http-only": 0},
                        "listener grpc: 3 GRPCRoutes (ok, missing, cross); http-only: none")  # fmt: skip
    kinds = {lst["name"]: [k["kind"] for k in lst["supportedKinds"]] for lst in gw["status"]["listeners"]}
    assert kinds == {"grpc": ["HTTPRoute", "GRPCRoute"], "http-only": ["HTTPRoute"]}, kinds
    # a ReferenceGrant for GRPCRoutes of APP_NS resolves the cross-namespace backend
    await kube.apply({
        "apiVersion": "gateway.networking.k8s.io/v1beta1", "kind": "ReferenceGrant",
        "metadata": {"name": "apps-grpc", "namespace": TEAM_NS},
        "spec": {"from": [{"group": "gateway.networking.k8s.io", "kind": "GRPCRoute", "namespace": APP_NS}],
                 "to": [{"group": "", "kind": "Service"}]},
    })  # fmt: skip
    await wait_for(kube, "GRPCRoute", APP_NS, "grpc-cross",
                   lambda o: parent_conditions(o).get("ResolvedRefs") == ("True", "ResolvedRefs"),
                   "ResolvedRefs once a ReferenceGrant allows it")  # fmt: skip


async def test_certificate_ref_to_another_namespace_needs_a_reference_grant(kube: KubeRest) -> None:
    cert, key = _tls_pair()
    await kube.apply({"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
                      "metadata": {"name": "shared-cert", "namespace": TEAM_NS},
                      "stringData": {"tls.crt": cert, "tls.key": key}})  # fmt: skip
    await kube.apply({"apiVersion": GW, "kind": "Gateway", "metadata": {"name": "cross-cert", "namespace": GW_NS},
                      "spec": {"gatewayClassName": "istio", "listeners": [
                          {"name": "https", "port": 443, "protocol": "HTTPS",
                           "tls": {"mode": "Terminate",
                                   "certificateRefs": [{"name": "shared-cert", "namespace": TEAM_NS}]}}]}})  # fmt: skip

    def listener(o: dict[str, Any]) -> dict[str, tuple[str, str]]:
        found = ((o.get("status") or {}).get("listeners") or [{}])[0].get("conditions") or []
        return {c["type"]: (c["status"], c["reason"]) for c in found}

    await wait_for(kube, "Gateway", GW_NS, "cross-cert",
                   lambda o: listener(o).get("ResolvedRefs") == ("False", "RefNotPermitted")
                   and listener(o).get("Programmed") == ("False", "Invalid"),
                   "listener ResolvedRefs False RefNotPermitted without a ReferenceGrant")  # fmt: skip
    await kube.apply({
        "apiVersion": "gateway.networking.k8s.io/v1beta1", "kind": "ReferenceGrant",
        "metadata": {"name": "gateways-to-certs", "namespace": TEAM_NS},
        "spec": {"from": [{"group": "gateway.networking.k8s.io", "kind": "Gateway", "namespace": GW_NS}],
                 "to": [{"group": "", "kind": "Secret", "name": "shared-cert"}]},
    })  # fmt: skip
    await wait_for(kube, "Gateway", GW_NS, "cross-cert",
                   lambda o: listener(o).get("ResolvedRefs") == ("True", "ResolvedRefs")
                   and listener(o).get("Programmed") == ("True", "Programmed"),
                   "listener ResolvedRefs once the ReferenceGrant allows the Secret")  # fmt: skip


async def test_tcp_and_tls_route_status(kube: KubeRest) -> None:
    await kube.apply(service("db", APP_NS))
    alpha = "gateway.networking.k8s.io/v1alpha2"

    def l4(kind: str, name: str, section: str, backend: str, **spec: Any) -> dict[str, Any]:
        return {"apiVersion": alpha, "kind": kind, "metadata": {"name": name, "namespace": APP_NS},
                "spec": {"parentRefs": [{"name": "gw", "namespace": GW_NS, "sectionName": section}],
                         "rules": [{"backendRefs": [{"name": backend, "port": 8080}]}], **spec}}  # fmt: skip

    mesh_db, db = {"group": "", "kind": "Service", "name": "db"}, {"name": "db", "port": 8080}
    cases = {
        ("TCPRoute", "tcp-ok"): (l4("TCPRoute", "tcp-ok", "tcp", "db"),
                                 {"Accepted": ("True", "Accepted"), "ResolvedRefs": ("True", "ResolvedRefs")}),
        ("TCPRoute", "tcp-missing"): (l4("TCPRoute", "tcp-missing", "tcp", "nowhere"),
                                      {"Accepted": ("True", "Accepted"), "ResolvedRefs": ("False", "BackendNotFound")}),
        ("TCPRoute", "tcp-on-tls"): (l4("TCPRoute", "tcp-on-tls", "tls", "db"),
                                     {"Accepted": ("False", "NotAllowedByListeners")}),
        ("TLSRoute", "tls-ok"): (l4("TLSRoute", "tls-ok", "tls", "db", hostnames=["db.example.com"]),
                                 {"Accepted": ("True", "Accepted"), "ResolvedRefs": ("True", "ResolvedRefs")}),
        ("TLSRoute", "tls-hostname"): (l4("TLSRoute", "tls-hostname", "tls", "db", hostnames=["db.other.org"]),
                                       {"Accepted": ("False", "NoMatchingListenerHostname")}),
        ("TLSRoute", "tls-on-tcp"): (l4("TLSRoute", "tls-on-tcp", "tcp", "db"),
                                     {"Accepted": ("False", "NotAllowedByListeners")}),
        # a Service parent (mesh): Accepted; with hostnames (the SNI is the Service's name): UnsupportedValue
        ("TLSRoute", "tls-mesh"): (l4("TLSRoute", "tls-mesh", "tls", "db") | {"spec": {
                                       "parentRefs": [mesh_db], "rules": [{"backendRefs": [db]}]}},
                                   {"Accepted": ("True", "Accepted"), "ResolvedRefs": ("True", "ResolvedRefs")}),
        ("TLSRoute", "tls-mesh-hostnames"): (l4("TLSRoute", "tls-mesh-hostnames", "tls", "db") | {"spec": {
                                                 "parentRefs": [mesh_db], "hostnames": ["db.example.com"],
                                                 "rules": [{"backendRefs": [db]}]}},
                                             {"Accepted": ("False", "UnsupportedValue")}),
        ("TLSRoute", "tls-mesh-missing"): (l4("TLSRoute", "tls-mesh-missing", "tls", "db") | {"spec": {
                                               "parentRefs": [{**mesh_db, "name": "nowhere"}],
                                               "rules": [{"backendRefs": [db]}]}},
                                           {"Accepted": ("False", "NoMatchingParent")}),
    }  # fmt: skip
    for obj, _ in cases.values():
        await kube.apply(obj)
    for (kind, name), (_, expected) in cases.items():
        await wait_for(
            kube, kind, APP_NS, name,
            lambda o, e=expected: all(parent_conditions(o).get(t) == v for t, v in e.items()),
            f"{kind} {name}: {expected}",
        )  # fmt: skip

    def attached(o: dict[str, Any]) -> dict[str, int]:
        return {lst["name"]: lst["attachedRoutes"] for lst in o["status"]["listeners"] if lst["name"] in ("tcp", "tls")}

    await wait_for(kube, "Gateway", GW_NS, "gw", lambda o: attached(o) == {"tcp": 2, "tls": 1},
                   "listener tcp: 2 TCPRoutes, tls: 1 TLSRoute")  # fmt: skip


def _tls_pair() -> tuple[str, str]:
    from tests.certs import Authority

    pem = Authority("gwapi test CA").issue("gw.example.com", sans=("gw.example.com",))
    return pem.cert.decode(), pem.key.decode()


async def test_gateway_addresses_link_to_a_service(kube: KubeRest) -> None:
    """Manual deployment: `spec.addresses` naming an existing Service (by FQDN) is Programmed with that address;
    one naming no Service is `Programmed: False, AddressNotUsable`."""
    spec = {"selector": {"istio": "ingressgateway"}, "ports": [{"name": "http", "port": 80}]}
    await kube.apply({"apiVersion": "v1", "kind": "Service",
                      "metadata": {"name": "istio-ingressgateway", "namespace": GW_NS}, "spec": spec})  # fmt: skip
    listeners = [{"name": "http", "port": 80, "protocol": "HTTP"}]
    for name, host in (("manual", f"istio-ingressgateway.{GW_NS}.svc.cluster.local"),
                       ("lost", f"nowhere.{GW_NS}.svc.cluster.local")):  # fmt: skip
        await kube.apply({"apiVersion": GW, "kind": "Gateway", "metadata": {"name": name, "namespace": GW_NS},
                          "spec": {"gatewayClassName": "istio", "listeners": listeners,
                                   "addresses": [{"type": "Hostname", "value": host}]}})  # fmt: skip
    found = await wait_for(kube, "Gateway", GW_NS, "manual",
                           lambda o: conditions(o).get("Programmed") == ("True", "Programmed"),
                           "Gateway manual Programmed by its Service's pods")  # fmt: skip
    assert conditions(found)["Accepted"] == ("True", "Accepted")
    assert found["status"]["addresses"] == [
        {"type": "Hostname", "value": f"istio-ingressgateway.{GW_NS}.svc.cluster.local"}
    ]
    await wait_for(kube, "Gateway", GW_NS, "lost",
                   lambda o: conditions(o).get("Programmed") == ("False", "AddressNotUsable"),
                   "Gateway lost: AddressNotUsable")  # fmt: skip
