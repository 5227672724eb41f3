"""virtualInbound assembled from a skeleton shared across proxies and each proxy's route configurations
(translate/inbound_splice.py): each proxy's listener routes its own services, the skeleton is built once
for the proxies serving the same ports the same way (and not shared across different telemetry), and a
refused part refuses the listener as a direct build would."""

from __future__ import annotations

from typing import Any

import pytest
from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2

from meshd.api.meta import InvalidResource
from meshd.api.parse import parse_resource
from meshd.generate.generator import ConfigGenerator
from meshd.generate.memo import ResourceMemo
from meshd.generate.options import GenerateOptions
from meshd.model.services import MeshService, ServicePort
from meshd.model.world import build_world
from meshd.translate import virtual_inbound
from meshd.translate.inbound_splice import assemble, build_skeleton
from meshd.translate.peer_auth import InboundMtls
from meshd.translate.proxy import parse_node_id
from meshd.translate.spec import Partial, Spec
from meshd.xds.resource import LISTENER

HCM = "envoy.filters.network.http_connection_manager"


def _docs(name: str, ip: str) -> list[dict[str, Any]]:
    return [
        {"apiVersion": "v1", "kind": "Pod",
         "metadata": {"name": name, "namespace": "shop", "labels": {"app": name, "security.istio.io/tlsMode": "istio"},
                      "annotations": {"sidecar.istio.io/status": "{}"}},
         "status": {"podIP": ip}},
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": "shop"},
         "spec": {"ports": [{"name": "http", "port": 9080, "targetPort": 8080}, {"name": "tcp-db", "port": 5432}]}},
        {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
         "metadata": {"name": name, "namespace": "shop", "labels": {"kubernetes.io/service-name": name}},
         "ports": [{"name": "http", "port": 8080}, {"name": "tcp-db", "port": 5432}],
         "endpoints": [{"addresses": [ip], "targetRef": {"kind": "Pod", "name": name, "namespace": "shop"}}]},
    ]  # fmt: skip


LOG_A = {"apiVersion": "telemetry.istio.io/v1", "kind": "Telemetry", "metadata": {"name": "log-a", "namespace": "shop"},
         "spec": {"selector": {"matchLabels": {"app": "a"}}, "accessLogging": [{"providers": [{"name": "envoy"}]}]}}  # fmt: skip  # noqa: E501

PROXIES = {"a": "10.0.0.2", "b": "10.0.0.3", "c": "10.0.0.4"}


def _inbound(extra: list[dict[str, Any]] = (), *, sds: bool = False) -> dict[str, listener_pb2.Listener]:  # type: ignore[assignment]
    docs = [d for name, ip in PROXIES.items() for d in _docs(name, ip)] + list(extra)
    world = build_world([parse_resource(d) for d in docs], domain_suffix="cluster.local")
    generator = ConfigGenerator(world, options=GenerateOptions(inbound_port=15006, sidecar_endpoint_port=15006))
    out = {}
    for name, ip in PROXIES.items():
        proxy = parse_node_id(f"sidecar~{ip}~{name}.shop~shop.svc.cluster.local")
        snap = generator.snapshot(proxy.__class__(**{**proxy.__dict__, "capture": True, "sds": sds}))
        out[name] = listener_pb2.Listener.FromString(snap.resources[LISTENER]["virtualInbound"].body)
    return out


def _http_managers(listener: listener_pb2.Listener) -> list[hcm_pb2.HttpConnectionManager]:
    found = []
    for chain in listener.filter_chains:
        for network_filter in chain.filters:
            if network_filter.name == HCM:
                hcm = hcm_pb2.HttpConnectionManager()
                network_filter.typed_config.Unpack(hcm)
                found.append(hcm)
    return found


def _served_routes(listener: listener_pb2.Listener) -> list[route_pb2.RouteConfiguration]:
    return [h.route_config for h in _managers_of_8080(listener)]


@pytest.fixture
def built(monkeypatch: pytest.MonkeyPatch) -> list[tuple[Any, ...]]:
    """The skeletons built (the arguments of each build)."""
    calls: list[tuple[Any, ...]] = []
    original = virtual_inbound._virtual_inbound

    def counting(*args: Any) -> listener_pb2.Listener:
        calls.append(args)
        return original(*args)

    monkeypatch.setattr(virtual_inbound, "_virtual_inbound", counting)
    return calls


@pytest.mark.parametrize("sds", [False, True])
def test_each_proxy_routes_its_own_services_from_one_shared_skeleton(built: list[tuple[Any, ...]], sds: bool) -> None:
    listeners = _inbound(sds=sds)
    assert len(built) == 1, "the proxies serve the same ports the same way: one skeleton"
    for name, listener in listeners.items():
        configs = _served_routes(listener)
        assert len(configs) == (2 if sds else 1)  # port 8080's plaintext chain, and its mTLS chain with SDS
        for config in configs:
            hosts = [vh.name for vh in config.virtual_hosts]
            assert hosts == [f"inbound|{name}.shop.svc.cluster.local:9080", "inbound|default"]
            assert f"{name}.shop.svc.cluster.local:9080" in config.virtual_hosts[0].domains
            assert config.virtual_hosts[0].routes[0].route.cluster == "inbound|8080||"
    # Apart from the routes, the listeners are the same; the TCP port has its chains.
    assert len({_without_routes(listener) for listener in listeners.values()}) == 1
    ports = {chain.filter_chain_match.destination_port.value for chain in listeners["a"].filter_chains}
    assert {8080, 5432, 15006} <= ports


def _without_routes(listener: listener_pb2.Listener) -> bytes:
    copy = listener_pb2.Listener()
    copy.CopyFrom(listener)
    for chain in copy.filter_chains:
        for network_filter in chain.filters:
            if network_filter.name == HCM:
                hcm = hcm_pb2.HttpConnectionManager()
                network_filter.typed_config.Unpack(hcm)
                hcm.route_config.ClearField("virtual_hosts")
                network_filter.typed_config.Pack(hcm)
    body: bytes = copy.SerializeToString(deterministic=True)
    return body


def test_telemetry_of_one_workload_is_not_shared_with_the_others(built: list[tuple[Any, ...]]) -> None:
    listeners = _inbound([LOG_A])
    assert len(built) == 2, "a's skeleton carries its access log: b and c share the other one"
    logged = {name: [len(h.access_log) for h in _managers_of_8080(listener)] for name, listener in listeners.items()}
    assert logged["a"][0] == logged["b"][0] + 1 == logged["c"][0] + 1
    assert _served_routes(listeners["a"])[0].virtual_hosts[0].name == "inbound|a.shop.svc.cluster.local:9080"


def _managers_of_8080(listener: listener_pb2.Listener) -> list[hcm_pb2.HttpConnectionManager]:
    return [h for h in _http_managers(listener) if h.route_config.name == "inbound|8080||"]


def test_a_route_configuration_the_proto_guard_refuses_refuses_the_listener() -> None:
    bad = MeshService(hostname="bad\nhost.shop.svc.cluster.local", namespace="shop", name="bad",
                      ports=(ServicePort(number=9080, name="http", protocol="HTTP"),))  # fmt: skip
    good = MeshService(hostname="good.shop.svc.cluster.local", namespace="shop", name="good",
                       ports=(ServicePort(number=9080, name="http", protocol="HTTP"),))  # fmt: skip
    skeleton = Spec(
        "virtualInbound",
        "k",
        lambda: virtual_inbound._virtual_inbound(
            ((8080, "HTTP"),), 15006, InboundMtls(mode="PERMISSIVE"), True, (), 0.0
        ),
    )
    served = assemble(skeleton, build_skeleton, {"inbound|8080||": [(good, 9080, 8080)]})
    assert isinstance(served, bytes)
    refused = assemble(skeleton, build_skeleton, {"inbound|8080||": [(bad, 9080, 8080)]})
    assert isinstance(refused, Partial) and refused.body is None
    [error] = refused.errors
    assert "route_config.virtual_hosts[0].domains" in str(error) and "virtualInbound" in str(error)


def test_a_refused_skeleton_refuses_the_listener() -> None:
    errors = assemble(Spec("virtualInbound", "k", lambda: None), lambda spec: ("refused",), {})  # type: ignore[arg-type,return-value]
    assert errors == Partial(None, ("refused",))  # type: ignore[arg-type]


def test_a_listener_refused_whole_is_left_out_and_the_others_are_served() -> None:
    error = InvalidResource(None, "lds virtualInbound", "left out: Envoy's proto validation refuses it: x")
    memo = ResourceMemo()
    served = memo.resolve(
        [
            Spec("virtualInbound", "refused", lambda: Partial(None, (error,)), LISTENER),
            Spec("virtualOutbound", "kept", lambda: listener_pb2.Listener(name="virtualOutbound")),
        ]
    )
    assert list(served) == ["virtualOutbound"]
    assert memo.refused == {"refused": (error,)}  # reported while in use
