"""The World's indexes for VirtualService routing: wildcard hosts, delegates by name, sourceLabels."""

from __future__ import annotations

from typing import Any

from meshd.api.parse import parse_resource
from meshd.model.world import build_world
from meshd.translate.routes import validate_host_routes


def _vs(name: str, hosts: list[str], http: list[dict[str, Any]] | None = None, created: str = "") -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "namespace": "default"}
    if created:
        meta["creationTimestamp"] = created
    route = [{"route": [{"destination": {"host": "web"}}]}]
    return {"apiVersion": "networking.istio.io/v1", "kind": "VirtualService", "metadata": meta,
            "spec": {"hosts": hosts, "http": http or route}}  # fmt: skip


def _world(*docs: dict[str, Any]) -> Any:
    return build_world([parse_resource(d) for d in docs], domain_suffix="cluster.local")


def test_an_exact_host_wins_over_wildcards_and_the_most_specific_wildcard_wins() -> None:
    world = _world(
        _vs("all", ["*"]),
        _vs("example", ["*.example.com"]),
        _vs("api", ["*.api.example.com"]),
        _vs("www", ["www.example.com"]),
    )
    assert world.wildcard_hosts == ("*.api.example.com", "*.example.com", "*")
    names = {h: [v.metadata.name for v in world.virtual_services_for(h) or ()] for h in (
        "www.example.com", "eu.api.example.com", "api.example.com", "web.default.svc.cluster.local")}  # fmt: skip
    assert names == {
        "www.example.com": ["www"],
        "eu.api.example.com": ["api"],
        "api.example.com": ["example"],
        "web.default.svc.cluster.local": ["all"],
    }


def test_no_wildcard_means_no_virtual_service_for_other_hosts() -> None:
    world = _world(_vs("www", ["www.example.com"]))
    assert world.virtual_services_for("api.example.com") is None


def test_every_virtual_service_is_found_by_name_including_delegates() -> None:
    world = _world(_vs("root", ["web"]), _vs("delegate", []))
    assert set(world.virtual_services_by_name) == {("default", "root"), ("default", "delegate")}
    assert set(world.virtual_services) == {"web.default.svc.cluster.local"}  # a delegate routes no host itself


def test_source_selectors_are_the_distinct_source_labels_of_all_matches() -> None:
    gold = {"match": [{"sourceLabels": {"tier": "gold"}}], "route": [{"destination": {"host": "web"}}]}
    both = {"match": [{"sourceLabels": {"tier": "gold", "app": "a"}}], "route": [{"destination": {"host": "web"}}]}
    world = _world(_vs("one", ["web"], [gold, both]), _vs("two", [], [gold]))
    assert world.source_selectors == ((("app", "a"), ("tier", "gold")), (("tier", "gold"),))
    assert _world(_vs("one", ["web"])).source_selectors == ()


def test_a_wildcard_virtual_service_is_validated_for_the_services_it_covers() -> None:
    service = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web", "namespace": "default"},
               "spec": {"ports": [{"name": "http", "port": 80}]}}  # fmt: skip
    bad = [{"route": [{"destination": {"host": "web", "subset": "v9"}}]}]
    world = _world(service, _vs("everything", ["*.svc.cluster.local"], bad))
    errors = validate_host_routes(world, "*.svc.cluster.local")
    assert [(e.key.name if e.key else "", e.field) for e in errors] == [
        ("everything", "spec.http[0].route[0].destination.subset")
    ]
    assert validate_host_routes(_world(_vs("everything", ["*.svc.cluster.local"], bad)), "*.svc.cluster.local") == []
