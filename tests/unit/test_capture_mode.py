"""Which proxies get the capture-mode listeners (node metadata INTERCEPTION_MODE), which endpoints are
reached at their own port (pods whose sidecar captures), and the outbound traffic policy's source."""

from __future__ import annotations

import pytest

from meshd.agent.cli import settings_from_args
from meshd.agent.run import agent_bootstrap
from meshd.api.meta import InvalidResource
from meshd.api.parse import parse_resource
from meshd.cli import build_parser
from meshd.generate.generator import ConfigGenerator
from meshd.generate.options import GenerateOptions
from meshd.model.services import is_captured
from meshd.model.world import build_world
from meshd.translate.proxy import has_capture, parse_node_id
from meshd.xds.resource import CLUSTER, ENDPOINT, LISTENER


def test_interception_mode_in_node_metadata() -> None:
    assert has_capture({"INTERCEPTION_MODE": "REDIRECT"}) and has_capture({"INTERCEPTION_MODE": "redirect"})
    assert not has_capture({}) and not has_capture({"INTERCEPTION_MODE": "NONE"})
    assert not has_capture({"INTERCEPTION_MODE": "TPROXY"})  # not supported: bound listeners


def test_agent_flag_sets_interception_mode_in_bootstrap() -> None:
    parser = build_parser()
    base = ["agent", "--pod", "web-1", "--workdir", "/tmp/agent-capture"]
    default = settings_from_args(parser.parse_args(base))
    assert agent_bootstrap(default)["node"]["metadata"]["INTERCEPTION_MODE"] == "NONE"
    captured = settings_from_args(parser.parse_args([*base, "--interception-mode", "REDIRECT"]))
    assert has_capture(agent_bootstrap(captured)["node"]["metadata"])
    with pytest.raises(SystemExit):
        parser.parse_args([*base, "--interception-mode", "TPROXY"])


def test_serve_flag_sets_mesh_outbound_traffic_policy() -> None:
    args = build_parser().parse_args(["serve", "--outbound-traffic-policy", "REGISTRY_ONLY"])
    assert args.outbound_traffic_policy == "REGISTRY_ONLY"


@pytest.mark.parametrize(
    ("annotations", "captured"),
    [
        ({}, False),
        ({"sidecar.istio.io/status": "{}"}, True),  # injected: the injector's default mode is REDIRECT
        ({"sidecar.istio.io/interceptionMode": "REDIRECT"}, True),
        ({"sidecar.istio.io/status": "{}", "sidecar.istio.io/interceptionMode": "NONE"}, False),
    ],
)
def test_which_pods_are_captured(annotations: dict[str, str], captured: bool) -> None:
    assert is_captured(annotations) is captured


def _world(*, sidecar_mode: str | None = None) -> object:
    docs: list[dict[str, object]] = [
        {"apiVersion": "v1", "kind": "Pod",
         "metadata": {"name": "db", "namespace": "shop", "labels": {"security.istio.io/tlsMode": "istio"},
                      "annotations": {"sidecar.istio.io/status": "{}"}},
         "status": {"podIP": "10.0.0.2"}},
        {"apiVersion": "v1", "kind": "Pod",
         "metadata": {"name": "old", "namespace": "shop", "labels": {"security.istio.io/tlsMode": "istio"}},
         "status": {"podIP": "10.0.0.3"}},
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "db", "namespace": "shop"},
         "spec": {"clusterIP": "10.96.0.2", "ports": [{"name": "tcp", "port": 5432}]}},
        {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
         "metadata": {"name": "db", "namespace": "shop", "labels": {"kubernetes.io/service-name": "db"}},
         "ports": [{"name": "tcp", "port": 5432}],
         "endpoints": [{"addresses": ["10.0.0.2"], "targetRef": {"kind": "Pod", "name": "db", "namespace": "shop"}},
                       {"addresses": ["10.0.0.3"], "targetRef": {"kind": "Pod", "name": "old", "namespace": "shop"}}]},
    ]  # fmt: skip
    if sidecar_mode is not None:
        docs.append(
            {"apiVersion": "networking.istio.io/v1", "kind": "Sidecar", "metadata": {"name": "s", "namespace": "shop"},
             "spec": {"outboundTrafficPolicy": {"mode": sidecar_mode}}}
        )  # fmt: skip
    return build_world([parse_resource(d) for d in docs], domain_suffix="cluster.local")


def _snapshot(world: object, *, capture: bool, mesh_default: str = "ALLOW_ANY") -> dict[str, dict[str, bytes]]:
    generator = ConfigGenerator(
        world,  # type: ignore[arg-type]
        options=GenerateOptions(inbound_port=15006, sidecar_endpoint_port=15006, outbound_traffic_policy=mesh_default),
    )
    proxy = parse_node_id("sidecar~10.0.0.2~db.shop~shop.svc.cluster.local")
    snap = generator.snapshot(proxy.__class__(**{**proxy.__dict__, "capture": capture}))
    return {t: {n: r.body for n, r in by.items()} for t, by in snap.resources.items()}


def test_captured_endpoint_at_its_own_port_standalone_sidecar_at_15006() -> None:
    body = _snapshot(_world(), capture=False)[ENDPOINT]["outbound|5432||db.shop.svc.cluster.local"]
    from envoy.config.endpoint.v3 import endpoint_pb2

    assignment = endpoint_pb2.ClusterLoadAssignment.FromString(body)
    ports = {
        e.endpoint.address.socket_address.address: e.endpoint.address.socket_address.port_value
        for group in assignment.endpoints
        for e in group.lb_endpoints
    }
    assert ports == {"10.0.0.2": 5432, "10.0.0.3": 15006}


def test_bound_proxy_unchanged_capture_proxy_gets_virtual_listeners() -> None:
    bound = _snapshot(_world(), capture=False)
    assert "virtualOutbound" not in bound[LISTENER] and "PassthroughCluster" not in bound[CLUSTER]
    assert "10.0.0.2_5432" in bound[LISTENER]
    captured = _snapshot(_world(), capture=True)
    assert {"virtualOutbound", "virtualInbound", "0.0.0.0_5432"} <= captured[LISTENER].keys()
    assert "10.0.0.2_5432" not in captured[LISTENER]
    assert {"PassthroughCluster", "BlackHoleCluster", "InboundPassthroughCluster", "inbound|5432||"} <= captured[
        CLUSTER
    ].keys()


@pytest.mark.parametrize(
    ("sidecar_mode", "mesh_default", "catchall"),
    [
        (None, "ALLOW_ANY", b"PassthroughCluster"),
        (None, "REGISTRY_ONLY", b"BlackHoleCluster"),
        ("REGISTRY_ONLY", "ALLOW_ANY", b"BlackHoleCluster"),
        ("ALLOW_ANY", "REGISTRY_ONLY", b"PassthroughCluster"),
    ],
)
def test_outbound_traffic_policy_sidecar_over_mesh_default(
    sidecar_mode: str | None, mesh_default: str, catchall: bytes
) -> None:
    from envoy.config.listener.v3 import listener_pb2

    body = _snapshot(_world(sidecar_mode=sidecar_mode), capture=True, mesh_default=mesh_default)[LISTENER][
        "virtualOutbound"
    ]
    listener = listener_pb2.Listener.FromString(body)
    assert catchall in listener.default_filter_chain.filters[0].typed_config.value


def test_unknown_outbound_mode_is_refused_naming_the_field() -> None:
    doc = {"apiVersion": "networking.istio.io/v1", "kind": "Sidecar", "metadata": {"name": "s", "namespace": "x"},
           "spec": {"outboundTrafficPolicy": {"mode": "SOMETIMES"}}}  # fmt: skip
    with pytest.raises(InvalidResource, match=r"outboundTrafficPolicy\.mode"):
        parse_resource(doc)


@pytest.mark.parametrize(
    ("mesh_config", "flag", "catchall"),
    [
        ({"outboundTrafficPolicy": {"mode": "REGISTRY_ONLY"}}, "ALLOW_ANY", b"BlackHoleCluster"),
        ({"outboundTrafficPolicy": {"mode": "ALLOW_ANY"}}, "REGISTRY_ONLY", b"PassthroughCluster"),
        ({}, "REGISTRY_ONLY", b"BlackHoleCluster"),  # not in the mesh config: the flag
    ],
)
def test_mesh_config_outbound_traffic_policy_over_the_flag(
    mesh_config: dict[str, object], flag: str, catchall: bytes
) -> None:
    """meshConfig.outboundTrafficPolicy.mode (the `istio` ConfigMap, or --mesh-config) is the mesh default;
    `--outbound-traffic-policy` applies where it says nothing."""
    import yaml
    from envoy.config.listener.v3 import listener_pb2

    from meshd.api.mesh import parse_mesh_config
    from meshd.push.loop import generate_options
    from meshd.settings import Settings

    options = generate_options(Settings(outbound_traffic_policy=flag), parse_mesh_config(yaml.safe_dump(mesh_config)))
    generator = ConfigGenerator(_world(), options=options)  # type: ignore[arg-type]
    proxy = parse_node_id("sidecar~10.0.0.2~db.shop~shop.svc.cluster.local")
    snap = generator.snapshot(proxy.__class__(**{**proxy.__dict__, "capture": True}))
    listener = listener_pb2.Listener.FromString(snap.resources[LISTENER]["virtualOutbound"].body)
    assert catchall in listener.default_filter_chain.filters[0].typed_config.value


def test_mesh_config_outbound_mode_is_checked_naming_the_field() -> None:
    from meshd.api.meshconfig import InvalidMeshConfig, parse_mesh_policy

    with pytest.raises(InvalidMeshConfig, match=r"^outboundTrafficPolicy\.mode: "):
        parse_mesh_policy({"outboundTrafficPolicy": {"mode": "SOMETIMES"}})
