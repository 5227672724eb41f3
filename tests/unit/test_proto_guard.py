"""The proto guard: Envoy's PGV rules checked on real Envoy messages, and a generated resource that
breaks one left out of the snapshot with an error, the rest served."""

from __future__ import annotations

from typing import Any

import pytest
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import address_pb2
from envoy.config.listener.v3 import listener_components_pb2, listener_pb2
from envoy.config.route.v3 import route_components_pb2, route_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm
from google.protobuf import any_pb2, duration_pb2

from meshd.generate import outbound
from meshd.translate import routes
from meshd.translate.proto_guard import violations
from meshd.translate.spec import Spec
from meshd.xds.resource import CLUSTER, ENDPOINT, ROUTE
from tests.unit.test_cache import Mesh, _docs, _proxy, _resources


def _listener(port: int) -> listener_pb2.Listener:
    address = address_pb2.SocketAddress(address="0.0.0.0", port_value=port)
    return listener_pb2.Listener(name="l", address=address_pb2.Address(socket_address=address))


def test_a_negative_connect_timeout_is_found() -> None:
    bad = cluster_pb2.Cluster(name="c", connect_timeout=duration_pb2.Duration(seconds=-1))
    assert violations(bad) == ["connect_timeout: duration gt 0ns (got -1000000000ns)"]


def test_a_listener_port_above_65535_is_found() -> None:
    assert violations(_listener(70000)) == ["address.socket_address.port_value: lte 65535 (got 70000)"]
    assert violations(_listener(65535)) == []


def test_an_empty_virtual_host_name_and_no_domains_are_found() -> None:
    vhost = route_components_pb2.VirtualHost(name="", domains=[])
    assert violations(vhost) == ["name: min_len 1", "domains: min_items 1"]


def test_a_valid_message_passes() -> None:
    cluster = cluster_pb2.Cluster(
        name="c", type=cluster_pb2.Cluster.EDS, connect_timeout=duration_pb2.Duration(seconds=10)
    )
    cluster.eds_cluster_config.eds_config.ads.SetInParent()
    assert violations(cluster) == []
    assert violations(route_components_pb2.VirtualHost.FromString(routes.catch_all_vhost("ALLOW_ANY"))) == []


def test_a_violation_inside_an_any_typed_config_is_found() -> None:
    manager = hcm.HttpConnectionManager(
        stat_prefix="s",
        route_config=route_pb2.RouteConfiguration(virtual_hosts=[route_components_pb2.VirtualHost(domains=["*"])]),
    )
    packed = any_pb2.Any()
    packed.Pack(manager)
    chain = listener_components_pb2.FilterChain(
        filters=[
            listener_components_pb2.Filter(name="a"),
            listener_components_pb2.Filter(name="h", typed_config=packed),
        ]
    )
    listener = _listener(80)
    listener.filter_chains.append(chain)
    assert violations(listener) == [
        "filter_chains[0].filters[1].typed_config(HttpConnectionManager).route_config.virtual_hosts[0].name: min_len 1"
    ]


def test_a_packed_config_is_checked_wherever_it_recurs_and_a_clean_one_is_walked_once() -> None:
    """The clean-payload memo: a bad typed config is found (with its own path) every time it recurs; a clean
    one is parsed once, however many listeners carry it."""

    def listener(manager: hcm.HttpConnectionManager, chains: int) -> listener_pb2.Listener:
        packed = any_pb2.Any()
        packed.Pack(manager)
        found = _listener(80)
        for _ in range(chains):
            chain = listener_components_pb2.FilterChain(
                filters=[listener_components_pb2.Filter(name="h", typed_config=packed)]
            )
            found.filter_chains.append(chain)
        return found

    bad = hcm.HttpConnectionManager(
        stat_prefix="recurring",
        route_config=route_pb2.RouteConfiguration(virtual_hosts=[route_components_pb2.VirtualHost(domains=["*"])]),
    )
    where = "filters[0].typed_config(HttpConnectionManager).route_config.virtual_hosts[0].name: min_len 1"
    for _ in range(2):  # and again in a later resource
        assert violations(listener(bad, 2)) == [f"filter_chains[{i}].{where}" for i in (0, 1)]
    clean = hcm.HttpConnectionManager(stat_prefix="clean-recurring", route_config=route_pb2.RouteConfiguration())
    parsed: list[bytes] = []
    real = hcm.HttpConnectionManager.ParseFromString

    def counting(self: hcm.HttpConnectionManager, data: bytes) -> int:
        parsed.append(data)
        return int(real(self, data))

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(hcm.HttpConnectionManager, "ParseFromString", counting)
        assert violations(listener(clean, 3)) == [] and violations(listener(clean, 2)) == []
    assert len(parsed) == 1


def test_an_enum_outside_its_values_and_an_unset_required_oneof_are_found() -> None:
    address = address_pb2.SocketAddress(address="a", port_value=1, protocol=7)  # type: ignore[arg-type]
    assert violations(address) == ["protocol: defined_only (got 7)"]
    assert violations(address_pb2.Address()) == ["address: oneof required"]


# -- generation: a refused resource is left out and reported, every push while in use -----------------


def _break_one_cluster(monkeypatch: pytest.MonkeyPatch, target: str) -> None:
    real = outbound.service_cluster_specs

    def specs(*args: Any) -> Any:
        for spec in real(*args):
            if spec.name != target:
                yield spec
                continue

            def build(spec: Spec = spec) -> Any:
                cluster = spec.build()
                cluster.connect_timeout.seconds = -1
                return cluster

            yield spec._replace(key=("broken", spec.key), build=build)

    monkeypatch.setattr(outbound, "service_cluster_specs", specs)


def test_a_generated_cluster_with_a_bad_value_is_left_out_and_reported_across_pushes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    target = "outbound|9080||s2.a.svc.cluster.local"
    _break_one_cluster(monkeypatch, target)
    mesh = Mesh()
    proxy = _proxy("a", 1)
    snapshot = mesh.generator.snapshot(proxy)  # type: ignore[union-attr]
    clusters = snapshot.resources[CLUSTER]
    assert target not in clusters
    assert "outbound|9080||s1.a.svc.cluster.local" in clusters
    assert target in snapshot.resources[ENDPOINT]  # its endpoints are harmless: Envoy ignores them
    (error,) = mesh.generator.refused  # type: ignore[union-attr]
    assert error.field == f"cds {target}"
    assert "connect_timeout: duration gt 0ns" in error.message
    assert error in mesh.generator.errors  # type: ignore[union-attr]

    # An unrelated push carries the layer over unchanged: the refusal is still reported.
    generator = mesh.apply(_resources(_docs("b", "s2", ["10.0.0.7"])[1:2]))
    assert generator.snapshot(proxy).resources[CLUSTER] == clusters
    assert generator.refused == [error]


def test_a_virtual_host_with_a_bad_value_is_left_out_of_its_route_configuration(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    real = routes.naming.service_domains

    def domains(service: Any, **kwargs: Any) -> list[str]:
        return [] if service.hostname.startswith("s2.a.") else real(service, **kwargs)

    monkeypatch.setattr(routes.naming, "service_domains", domains)
    mesh = Mesh()
    snapshot = mesh.generator.snapshot(_proxy("a", 1))  # type: ignore[union-attr]
    (config,) = snapshot.resources[ROUTE].values()
    served = route_pb2.RouteConfiguration.FromString(config.body)
    assert [v.name for v in served.virtual_hosts] == ["s1.a.svc.cluster.local:9080"]
    assert violations(served) == []
    (error,) = mesh.generator.refused  # type: ignore[union-attr]
    assert error.field == "virtual host s2.a.svc.cluster.local:9080 of 9080"
    assert error.message.endswith("domains: min_items 1")
