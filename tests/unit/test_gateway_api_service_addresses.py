"""A Gateway's `Programmed` condition and `status.addresses` as Istio reports them (model/gateway_api/
service_addresses.py through the status writer's `desired_statuses`): the Service deployed for it (or named by
its `spec.addresses`): load balancer ingress / external IPs, a pending load balancer, its hostname; no Service,
no gateway pod; addresses never taken away once reported."""

from __future__ import annotations

import datetime
import json
from typing import Any

import pytest

from meshd.api.meta import KUBERNETES_GATEWAY, ResourceKey
from meshd.api.parse import parse_resource
from meshd.model.gateway_api.status import desired_statuses, render_api_status

GW = "gateway.networking.k8s.io/v1"
KEY = ResourceKey(KUBERNETES_GATEWAY, "infra", "gw")
HOST = "gw-istio.infra.svc.cluster.local"


def gateway(**spec: Any) -> dict[str, Any]:
    return {"apiVersion": GW, "kind": "Gateway", "metadata": {"name": "gw", "namespace": "infra"},
            "spec": {"gatewayClassName": "istio", "listeners": [
                {"name": "http", "port": 80, "protocol": "HTTP"}, {"name": "tcp", "port": 9000, "protocol": "TCP"}],
                **spec}}  # fmt: skip


def service(name: str = "gw-istio", *, type_: str = "LoadBalancer", **extra: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": "infra"},
                           "spec": {"type": type_, "selector": {"app": name}, "clusterIP": "10.96.0.9",
                                    "ports": [{"name": "http", "port": 80}]}}  # fmt: skip
    if "ingress" in extra:
        doc["status"] = {"loadBalancer": {"ingress": extra["ingress"]}}
    if "external_ips" in extra:
        doc["spec"]["externalIPs"] = extra["external_ips"]
    return doc


def gateway_pod(ip: str = "10.1.0.5") -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "gw-1", "namespace": "infra",
                         "labels": {"gateway.networking.k8s.io/gateway-name": "gw"}},
            "spec": {}, "status": {"podIP": ip}}  # fmt: skip


def status(*docs: dict[str, Any]) -> dict[str, Any]:
    desired = desired_statuses([parse_resource(d) for d in docs], errors=[], domain_suffix="cluster.local")
    body: dict[str, Any] = json.loads(desired[KEY].body)
    return body


def programmed(body: dict[str, Any]) -> tuple[str, str, str]:
    found = next(c for c in body["conditions"] if c["type"] == "Programmed")
    return found["status"], found["reason"], found["message"]


@pytest.mark.parametrize(
    ("docs", "want", "addresses"),
    [
        pytest.param(  # the guide's `networking.istio.io/service-type: ClusterIP`: the Service's name
            [service(type_="ClusterIP")],
            ("True", "Programmed", f"Resource programmed, assigned to service(s) {HOST}:80 and {HOST}:9000"),
            [{"type": "Hostname", "value": HOST}],
            id="cluster-ip-hostname",
        ),
        pytest.param(
            [service(type_="NodePort")], ("True", "Programmed", None), [{"type": "Hostname", "value": HOST}],
            id="node-port-hostname",
        ),
        pytest.param(
            [service(ingress=[{"ip": "203.0.113.7"}, {"hostname": "lb.example.com"}])],
            ("True", "Programmed", None),
            [{"type": "IPAddress", "value": "203.0.113.7"}, {"type": "Hostname", "value": "lb.example.com"}],
            id="load-balancer-ingress",
        ),
        pytest.param(
            [service(type_="ClusterIP", external_ips=["198.51.100.4"])],
            ("True", "Programmed", None),
            [{"type": "IPAddress", "value": "198.51.100.4"}],
            id="external-ips",
        ),
        pytest.param(
            [service()],
            ("False", "AddressNotAssigned",
             f"Assigned to service(s) {HOST}:80 and {HOST}:9000, but failed to assign to all requested addresses: "
             f'address pending for hostname "{HOST}"'),
            None,
            id="load-balancer-pending",
        ),
        pytest.param(  # a ClusterIP's ingress list is not an address (only a LoadBalancer's is)
            [service(type_="ClusterIP", ingress=[{"ip": "203.0.113.7"}])],
            ("True", "Programmed", None), [{"type": "Hostname", "value": HOST}],
            id="cluster-ip-ignores-ingress",
        ),
    ],
)  # fmt: skip
def test_an_automatically_deployed_gateway_reports_its_services_addresses(
    docs: list[dict[str, Any]], want: tuple[str, str, str | None], addresses: list[dict[str, str]] | None
) -> None:
    body = status(gateway(), gateway_pod(), *docs)
    got = programmed(body)
    assert got[:2] == want[:2], got
    if want[2] is not None:
        assert got[2] == want[2]
    assert body.get("addresses") == addresses


def test_no_service_or_no_gateway_pod_is_not_programmed() -> None:
    body = status(gateway(), service(type_="ClusterIP"))
    assert programmed(body) == (
        "False",
        "AddressNotAssigned",
        f'Failed to assign to any requested addresses: no instances found for hostname "{HOST}"',
    )
    assert "addresses" not in body
    body = status(gateway())
    assert programmed(body) == (
        "False",
        "AddressNotUsable",
        f'Failed to assign to any requested addresses: hostname "{HOST}" not found',
    )
    # gateway pods deployed by hand, without the Service (--no-gateway-deploy): their IPs
    body = status(gateway(), gateway_pod("10.1.0.5"))
    assert programmed(body)[:2] == ("True", "Programmed")
    assert body["addresses"] == [{"type": "IPAddress", "value": "10.1.0.5"}]


def test_a_manual_deployment_reports_the_named_services_addresses() -> None:
    host = "ingress.infra.svc.cluster.local"
    manual = gateway(addresses=[{"type": "Hostname", "value": host}])
    body = status(manual, service("ingress", type_="ClusterIP"))
    assert programmed(body)[:2] == ("True", "Programmed")
    assert body["addresses"] == [{"type": "Hostname", "value": host}]
    body = status(manual, service("ingress", ingress=[{"ip": "203.0.113.9"}]))
    assert programmed(body) == ("True", "Programmed", f"Resource programmed, assigned to service(s) {host}:80 and "
                                f"{host}:9000")  # fmt: skip
    assert body["addresses"] == [{"type": "IPAddress", "value": "203.0.113.9"}]
    body = status(manual, service("ingress"))
    assert programmed(body)[:2] == ("False", "AddressNotAssigned")
    assert "addresses" not in body


def test_addresses_once_reported_are_never_taken_away() -> None:
    t0 = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)
    from meshd.model.gateway_api.status import ApiStatus

    ready = ApiStatus(body=json.dumps(status(gateway(), gateway_pod(), service(ingress=[{"ip": "203.0.113.7"}]))))
    first = render_api_status(KEY, ready, obj={}, generation=1, now=t0)
    assert first is not None and first["addresses"] == [{"type": "IPAddress", "value": "203.0.113.7"}]
    pending = ApiStatus(body=json.dumps(status(gateway(), gateway_pod(), service())))
    later = render_api_status(KEY, pending, obj={"status": first}, generation=1, now=t0)
    assert later is not None and later["addresses"] == first["addresses"]
    assert [c["reason"] for c in later["conditions"] if c["type"] == "Programmed"] == ["AddressNotAssigned"]
    cluster = ApiStatus(body=json.dumps(status(gateway(), gateway_pod(), service(type_="ClusterIP"))))
    last = render_api_status(KEY, cluster, obj={"status": later}, generation=2, now=t0)
    assert last is not None and last["addresses"] == [{"type": "Hostname", "value": HOST}]
