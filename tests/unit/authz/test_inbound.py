"""A workload's policies -> its inbound filters, judged by the decision the filters make (Istio's order:
CUSTOM, DENY, ALLOW) for HTTP requests and TCP connections, including every fail-closed path."""

from __future__ import annotations

from typing import Any

from envoy.extensions.filters.http.ext_authz.v3 import ext_authz_pb2
from envoy.extensions.filters.http.rbac.v3 import rbac_pb2 as http_rbac_pb2
from envoy.extensions.filters.network.rbac.v3 import rbac_pb2 as net_rbac_pb2

from meshd.api.authorization import AuthorizationPolicy
from meshd.api.meshconfig import MeshPolicy, parse_mesh_policy
from meshd.api.parse import parse_resource
from meshd.model.services import MeshService, ServicePort
from meshd.translate.authz.inbound import InboundAuthz, inbound_authz
from meshd.translate.authz.selection import Selected
from tests.unit.authz import rbac_eval

SERVICES = {
    "authz.x.svc.cluster.local": MeshService(
        hostname="authz.x.svc.cluster.local",
        namespace="x",
        name="authz",
        ports=(ServicePort("grpc", 9000, "GRPC"), ServicePort("http", 8000, "HTTP")),
    )
}
MESH = parse_mesh_policy(
    {
        "extensionProviders": [
            {"name": "grpc", "envoyExtAuthzGrpc": {"service": "authz.x.svc.cluster.local", "port": 9000}},
            {"name": "http", "envoyExtAuthzHttp": {"service": "authz.x.svc.cluster.local", "port": 8000}},
            {"name": "gone", "envoyExtAuthzHttp": {"service": "nowhere.x.svc.cluster.local", "port": 8000}},
        ]
    }
)


def policy(name: str, spec: dict[str, Any], **annotations: str) -> AuthorizationPolicy:
    doc = {
        "apiVersion": "security.istio.io/v1",
        "kind": "AuthorizationPolicy",
        "metadata": {"name": name, "namespace": "foo", "annotations": annotations},
        "spec": spec,
    }
    found = parse_resource(doc)
    assert isinstance(found, AuthorizationPolicy)
    return found


def build(
    *policies: AuthorizationPolicy, unattached: tuple[AuthorizationPolicy, ...] = (), mesh: MeshPolicy = MESH
) -> InboundAuthz:
    return inbound_authz(Selected(policies, unattached), mesh=mesh, trust_domain="cluster.local", services=SERVICES)


def decide(authz: InboundAuthz, request: dict[str, Any], *, tcp: bool = False) -> str:
    """ "allow", "deny" or "ext_authz" (the request goes to the provider), as the filters decide in order."""
    if tcp:
        configs = []
        for f in authz.network_filters:
            if f.name == "envoy.filters.network.ext_authz":
                configs.append(("ext_authz", None))
                continue
            config = net_rbac_pb2.RBAC()
            f.typed_config.Unpack(config)
            configs.append(("rbac", config))
    else:
        configs = []
        for f in authz.http_filters:
            if f.name == "envoy.filters.http.ext_authz":
                ext = ext_authz_pb2.ExtAuthz()
                f.typed_config.Unpack(ext)
                configs.append(("ext_authz", ext))
                continue
            config = http_rbac_pb2.RBAC()
            f.typed_config.Unpack(config)
            configs.append(("rbac", config))
    marked = False
    for kind, config in configs:
        if kind == "ext_authz":
            if marked:
                return "ext_authz"
            continue
        assert config is not None
        if config.HasField("shadow_rules") and config.shadow_rules_stat_prefix == "istio_ext_authz_":
            marked = any(rbac_eval.policy(p, request) for p in config.shadow_rules.policies.values())
        if not config.HasField("rules"):
            continue
        matched = any(rbac_eval.policy(p, request) for p in config.rules.policies.values())
        if config.rules.action == 0 and not matched:  # ALLOW
            return "deny"
        if config.rules.action == 1 and matched:  # DENY
            return "deny"
    return "allow"


def req(
    path: str = "/", *, method: str = "GET", port: int = 8080, peer: str | None = None, **more: Any
) -> dict[str, Any]:
    return {"path": path, "headers": {":method": method}, "destination_port": port, "principal": peer, **more}


def test_no_policy_allows_and_allow_nothing_denies() -> None:
    assert decide(build(), req()) == "allow"
    nothing = build(policy("allow-nothing", {}))
    assert decide(nothing, req()) == "deny"
    assert decide(nothing, req(), tcp=True) == "deny"


def test_allow_by_path_and_method_deny_first_then_allow() -> None:
    authz = build(
        policy(
            "allow",
            {"rules": [{"to": [{"operation": {"methods": ["GET"], "paths": ["/info*"], "notPaths": ["/info/x"]}}]}]},
        ),
        policy("deny", {"action": "DENY", "rules": [{"to": [{"operation": {"paths": ["/info/secret"]}}]}]}),
    )
    assert decide(authz, req("/info/a")) == "allow"
    assert decide(authz, req("/info/a", method="POST")) == "deny"
    assert decide(authz, req("/info/x")) == "deny"  # notPaths
    assert decide(authz, req("/info/secret")) == "deny"  # DENY wins over a matching ALLOW
    assert decide(authz, req("/other")) == "deny"


def test_tcp_allow_rules_with_http_fields_are_left_out_and_deny_rules_broadened() -> None:
    allow = policy("allow", {"rules": [{"to": [{"operation": {"ports": ["9000"]}}]},
                                       {"to": [{"operation": {"ports": ["9001"], "methods": ["GET"]}}]}]})  # fmt: skip
    authz = build(allow)
    assert decide(authz, req(port=9000), tcp=True) == "allow"
    assert decide(authz, req(port=9001), tcp=True) == "deny"  # its rule has an HTTP-only field: left out
    assert decide(authz, req(port=9001), tcp=False) == "allow"  # on HTTP the rule applies as written
    deny = policy("deny", {"action": "DENY", "rules": [{"to": [{"operation": {"ports": ["9000"], "paths": ["/x"]}}]}]})
    authz = build(deny)
    assert decide(authz, req(port=9000), tcp=True) == "deny"  # broader on TCP: the whole port
    assert decide(authz, req(port=9001), tcp=True) == "allow"
    assert decide(authz, req("/y", port=9000), tcp=False) == "allow"  # on HTTP only /x


def test_a_refused_policy_fails_closed_by_action() -> None:
    bad_deny = policy("bad-deny", {"action": "DENY", "rules": [{"from": [{"source": {"ipBlocks": ["nope"]}}]}]})
    assert bad_deny.refusal is not None
    assert decide(build(bad_deny), req()) == "deny"
    assert decide(build(bad_deny), req(), tcp=True) == "deny"
    bad_allow = policy("bad-allow", {"rules": [{"to": [{"operation": {"method": ["GET"]}}]}]})
    assert decide(build(bad_allow), req()) == "deny"  # an ALLOW policy without rules
    good_allow = policy("good", {"rules": [{"to": [{"operation": {"paths": ["/ok"]}}]}]})
    assert decide(build(bad_allow, good_allow), req("/ok")) == "allow"  # the other ALLOW still allows
    unreadable = policy("unreadable", {"action": "PERMIT"})
    assert decide(build(unreadable), req()) == "deny"
    bad_audit = policy("bad-audit", {"action": "AUDIT", "rules": [{"when": [{"key": "nope", "values": ["1"]}]}]})
    assert decide(build(bad_audit), req()) == "allow"  # AUDIT decides nothing


def test_dry_run_never_enforces_and_is_in_the_shadow_rules() -> None:
    dry = policy("dry", {"action": "DENY", "rules": [{}]}, **{"istio.io/dry-run": "true"})
    authz = build(dry)
    assert decide(authz, req()) == "allow"
    (http,) = authz.http_filters
    config = http_rbac_pb2.RBAC()
    http.typed_config.Unpack(config)
    assert config.shadow_rules_stat_prefix == "istio_dry_run_deny_" and list(config.shadow_rules.policies)
    refused_dry = policy("dry-bad", {"action": "DENY", "rules": [{"from": [{"source": {"ipBlocks": ["x"]}}]}]},
                         **{"istio.io/dry-run": "true"})  # fmt: skip
    assert refused_dry.refusal is not None and refused_dry.dry_run
    assert decide(build(refused_dry), req()) == "allow"
    dry_allow = policy(
        "dry-allow", {"rules": [{"to": [{"operation": {"paths": ["/only"]}}]}]}, **{"istio.io/dry-run": "true"}
    )
    assert decide(build(dry_allow), req("/other")) == "allow"  # a dry-run ALLOW is no ALLOW policy


def test_custom_sends_what_its_rules_match_to_the_provider() -> None:
    custom = policy(
        "ext",
        {"action": "CUSTOM", "provider": {"name": "grpc"}, "rules": [{"to": [{"operation": {"paths": ["/admin*"]}}]}]},
    )
    authz = build(custom)
    assert decide(authz, req("/admin/x")) == "ext_authz"
    assert decide(authz, req("/public")) == "allow"
    assert decide(authz, req(port=5432), tcp=True) == "ext_authz"  # gRPC: network ext_authz, rule broadened
    http_custom = policy(
        "ext",
        {"action": "CUSTOM", "provider": {"name": "http"}, "rules": [{"to": [{"operation": {"paths": ["/admin*"]}}]}]},
    )
    assert decide(build(http_custom), req(port=5432), tcp=True) == "deny"  # an HTTP provider cannot check TCP


def test_custom_with_an_unusable_provider_or_two_providers_denies() -> None:
    for name in ("missing", "gone"):
        custom = policy(
            "ext",
            {"action": "CUSTOM", "provider": {"name": name}, "rules": [{"to": [{"operation": {"paths": ["/admin"]}}]}]},
        )
        assert decide(build(custom), req("/public")) == "deny", name
    one = policy("one", {"action": "CUSTOM", "provider": {"name": "grpc"}, "rules": [{}]})
    two = policy("two", {"action": "CUSTOM", "provider": {"name": "http"}, "rules": [{}]})
    assert decide(build(one, two), req()) == "deny"


def test_an_unattached_target_fails_closed() -> None:
    gateway = {"kind": "Gateway", "group": "gateway.networking.k8s.io", "name": "g"}
    deny = policy(
        "gw-deny", {"action": "DENY", "targetRefs": [gateway], "rules": [{"to": [{"operation": {"paths": ["/x"]}}]}]}
    )
    assert decide(build(unattached=(deny,)), req("/anything")) == "deny"
    allow = policy(
        "gw-allow",
        {"targetRefs": [{"kind": "Gateway", "group": "gateway.networking.k8s.io", "name": "g"}], "rules": [{}]},
    )
    assert decide(build(unattached=(allow,)), req()) == "deny"


def test_path_normalization_comes_from_the_mesh_config() -> None:
    assert build().normalization == "BASE"
    mesh = parse_mesh_policy({"pathNormalization": {"normalization": "DECODE_AND_MERGE_SLASHES"}})
    assert build(mesh=mesh).normalization == "DECODE_AND_MERGE_SLASHES"
    assert build(mesh=mesh) != build()  # part of the value a cache key holds
