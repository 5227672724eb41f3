"""The destination side of `meshd explain` on the listeners meshd's own translation serves the server proxy:
the PeerAuthentication that set the mTLS mode is named (or "mesh default"), and TCP chains are authorized by
their network RBAC as meshd translated the AuthorizationPolicies (an ALLOW rule with HTTP-only fields matches
no connection, a DENY rule's HTTP-only fields are dropped)."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
from envoy.config.listener.v3 import listener_pb2

from meshd.ctl.explain_inbound import Call, explain_inbound
from meshd.generate.generator import ConfigGenerator
from meshd.generate.options import GenerateOptions
from meshd.model.world import build_world
from meshd.sources.yaml_file import parse_file
from meshd.translate.proxy import parse_node_id
from meshd.xds.resource import LISTENER

WEB_IP, CLIENT_ID = "10.0.0.2", "spiffe://cluster.local/ns/default/sa/client"

WORKLOAD = """\
apiVersion: v1
kind: Service
metadata: {name: web, namespace: default}
spec:
  ports: [{name: http, port: 9080, targetPort: 8080}, {name: tcp, port: 9000}, {name: tcp-other, port: 9001}]
---
apiVersion: v1
kind: Pod
metadata: {name: web, namespace: default, labels: {app: web, security.istio.io/tlsMode: istio}}
spec: {serviceAccountName: web}
status: {podIP: 10.0.0.2}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-1, namespace: default, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
ports: [{name: http, port: 8080}, {name: tcp, port: 9000}, {name: tcp-other, port: 9001}]
endpoints:
- addresses: [10.0.0.2]
  targetRef: {kind: Pod, name: web, namespace: default}
"""


def server_listeners(config: str, *, capture: bool) -> dict[str, list[Any]]:
    """The listeners meshd serves web's sidecar (run by the node agent: mTLS) for WORKLOAD + `config`."""
    parsed = parse_file(WORKLOAD + "---\n" + config, origin="case")
    assert not parsed.errors, parsed.errors
    world = build_world(parsed.resources.values(), domain_suffix="cluster.local")
    generator = ConfigGenerator(world, options=GenerateOptions(inbound_port=15006, sidecar_endpoint_port=15006))
    proxy = parse_node_id(f"sidecar~{WEB_IP}~web.default~default.svc.cluster.local")
    snapshot = generator.snapshot(dataclasses.replace(proxy, sds=True, capture=capture))
    listeners = []
    for resource in snapshot.select(LISTENER, None):
        listener = listener_pb2.Listener()
        resource.to_any().Unpack(listener)
        listeners.append(listener)
    return {"listeners": listeners}


def call(*, port: int, identity: str | None = CLIENT_ID, mtls: bool = True, path: str = "/") -> Call:
    return Call(
        host="web.default.svc.cluster.local", path=path, method="GET", headers={}, server_ip=WEB_IP,
        server_port=port, client_ip="10.0.0.1", client_identity=identity, mtls=mtls, sni="", service_port=9080,
    )  # fmt: skip


def steps(config: str, at: Call, *, capture: bool = False) -> tuple[dict[str, tuple[str, str]], str]:
    found = explain_inbound(server_listeners(config, capture=capture), at)
    return {step: (choice, why) for step, choice, why in found.steps}, found.outcome


def pa(name: str, mode: str, *, namespace: str = "default", selector: str = "", ports: str = "") -> str:
    spec = f"mtls: {{mode: {mode}}}"
    if selector:
        spec += f", selector: {{matchLabels: {{app: {selector}}}}}"
    if ports:
        spec += f", portLevelMtls: {{{ports}}}"
    return (
        "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\n"
        f"metadata: {{name: {name}, namespace: {namespace}}}\nspec: {{{spec}}}\n---\n"
    )


@pytest.mark.parametrize("capture", [False, True], ids=["bound", "capture"])
@pytest.mark.parametrize(
    ("config", "mode", "source"),
    [
        ("", "PERMISSIVE", "mesh default"),
        (pa("default", "STRICT", namespace="istio-system"), "STRICT", "PeerAuthentication istio-system/default"),
        (pa("default", "STRICT", namespace="istio-system") + pa("ns-wide", "PERMISSIVE"), "PERMISSIVE",
         "PeerAuthentication default/ns-wide"),
        (pa("ns-wide", "STRICT") + pa("web", "UNSET", selector="web"), "STRICT", "PeerAuthentication default/ns-wide"),
        (pa("ns-wide", "PERMISSIVE") + pa("web", "STRICT", selector="web"), "STRICT", "PeerAuthentication default/web"),
        (pa("web", "PERMISSIVE", selector="web", ports="8080: {mode: STRICT}"), "STRICT",
         "PeerAuthentication default/web"),
    ],
    ids=["none", "mesh-wide", "namespace", "workload-unset", "workload", "port-level"],
)  # fmt: skip
def test_the_peer_authentication_that_set_the_mode_is_named(config: str, mode: str, source: str, capture: bool) -> None:
    at = call(port=8080 if capture else 15006)
    found, outcome = steps(config, at, capture=capture)
    choice, why = found["peer auth"]
    assert choice == f"{mode}: mutual TLS as {CLIENT_ID}", found
    assert f"mode is {mode}, set by {source} " in why, why
    assert outcome == ""


def test_a_port_level_mode_names_its_policy_only_for_that_port() -> None:
    config = pa("ns-wide", "STRICT") + pa("web", "UNSET", selector="web", ports="9000: {mode: DISABLE}")
    plain_tcp, _ = steps(config, call(port=9000, mtls=False), capture=True)
    assert plain_tcp["peer auth"][0] == "DISABLE: plaintext", plain_tcp
    assert "set by PeerAuthentication default/web " in plain_tcp["peer auth"][1]
    http, _ = steps(config, call(port=8080), capture=True)
    assert "set by PeerAuthentication default/ns-wide " in http["peer auth"][1]


TCP_ALLOW = """\
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: tcp-policy, namespace: default}
spec:
  selector: {matchLabels: {app: web}}
  action: ALLOW
  rules:
  - from: [{source: {principals: [cluster.local/ns/default/sa/client]}}]
    to: [{operation: {ports: ["9000"]}}]
  - to: [{operation: {methods: [GET], ports: ["9001"]}}]
---
"""
TCP_DENY = """\
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: tcp-deny, namespace: default}
spec:
  selector: {matchLabels: {app: web}}
  action: DENY
  rules:
  - to: [{operation: {paths: [/admin], ports: ["9000"]}}]
---
"""
NOT_FIELDS = """\
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: others, namespace: default}
spec:
  selector: {matchLabels: {app: web}}
  action: DENY
  rules:
  - from: [{source: {notNamespaces: [default], ipBlocks: [10.0.0.0/24], notIpBlocks: [10.0.0.7/32]}}]
    to: [{operation: {notPorts: ["9001"]}}]
---
"""


def authz(config: str, at: Call) -> tuple[str, str, str]:
    found, outcome = steps(config, at, capture=True)
    choice, why = found["authorization"]
    return choice, why, outcome


def test_tcp_allow_by_port_and_principal_names_the_policy() -> None:
    choice, why, outcome = authz(TCP_ALLOW, call(port=9000))
    assert choice == "allowed by AuthorizationPolicy default/tcp-policy (rule 0)", why
    assert "network RBAC" in why and outcome == ""
    # another identity, and one not given: the principal rule decides against it, or cannot be decided
    choice, _, outcome = authz(TCP_ALLOW, call(port=9000, identity="spiffe://cluster.local/ns/bar/sa/intruder"))
    assert (choice, outcome) == (
        "denied: no ALLOW rule matches",
        "connection closed by RBAC (the client reads nothing) (no ALLOW policy matches)",
    )
    choice, why, _ = authz(TCP_ALLOW, call(port=9000, identity=None))
    assert choice == "undetermined" and "--from-identity" in why


def test_an_allow_rule_with_http_only_fields_matches_no_connection() -> None:
    choice, _, outcome = authz(TCP_ALLOW, call(port=9001))  # its only rule says `methods`: left out on TCP
    assert choice == "denied: no ALLOW rule matches" and outcome.startswith("connection closed by RBAC")
    # over HTTP the same rule is there (port 8080 is the HTTP port: no rule allows it either)
    found, _ = steps(TCP_ALLOW, call(port=8080), capture=True)
    assert found["authorization"][0] == "denied: no ALLOW rule matches"


def test_a_deny_rule_with_http_only_fields_is_broadened_on_tcp() -> None:
    choice, why, outcome = authz(TCP_ALLOW + TCP_DENY, call(port=9000))
    assert choice == "denied by AuthorizationPolicy default/tcp-deny (rule 0)", why
    assert (
        outcome
        == "connection closed by RBAC (the client reads nothing) (AuthorizationPolicy default/tcp-deny (rule 0))"
    )
    # over HTTP the DENY keeps its path: /other on 8080 is not denied by it
    found, _ = steps(TCP_DENY, call(port=8080, path="/other"), capture=True)
    assert found["authorization"][0] == "allowed: no policy denies it"


def test_not_fields_and_ip_blocks_on_tcp() -> None:
    # from 10.0.0.1 (in the block, not excepted) with an identity outside `default`, to 9000 (not 9001): denied
    outsider = "spiffe://cluster.local/ns/bar/sa/x"
    assert (
        authz(NOT_FIELDS, call(port=9000, identity=outsider))[0]
        == "denied by AuthorizationPolicy default/others (rule 0)"
    )
    assert authz(NOT_FIELDS, call(port=9001, identity=outsider))[0] == "allowed: no policy denies it"  # notPorts
    assert authz(NOT_FIELDS, call(port=9000))[0] == "allowed: no policy denies it"  # notNamespaces: default
    excepted = dataclasses.replace(call(port=9000, identity=outsider), client_ip="10.0.0.7")
    assert authz(NOT_FIELDS, excepted)[0] == "allowed: no policy denies it"  # notIpBlocks
    outside = dataclasses.replace(call(port=9000, identity=outsider), client_ip="10.1.0.1")
    assert authz(NOT_FIELDS, outside)[0] == "allowed: no policy denies it"  # not in ipBlocks
