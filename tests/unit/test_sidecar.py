"""Bad Sidecars are refused with the resource and field named, and nothing else is lost."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from meshd.api.meta import ResourceKey
from meshd.api.parse import parse_resource
from meshd.model.world import build_world
from meshd.sources.yaml_file import parse_file
from meshd.translate.scope import select_sidecar


def _sidecar(name: str, spec: dict[str, Any], created: str = "") -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "namespace": "shop"}
    if created:
        meta["creationTimestamp"] = created
    return {"apiVersion": "networking.istio.io/v1", "kind": "Sidecar", "metadata": meta, "spec": spec}


@pytest.mark.parametrize(
    ("spec", "field", "message"),
    [
        pytest.param({"egress": [{"hosts": ["reviews"]}]}, "spec.egress[0].hosts[0]", "must be <namespace>/<host>",
                     id="host-without-namespace"),
        pytest.param({"egress": [{"hosts": ["./*"]}, {"hosts": ["*/*"]}]}, "spec.egress",
                     "only one egress listener may omit the port", id="two-catch-alls"),
        pytest.param({"egress": [{"hosts": []}]}, "spec.egress[0].hosts", "at least 1", id="no-hosts"),
    ],
)  # fmt: skip
def test_invalid_sidecar_is_refused_and_the_rest_of_the_file_is_kept(
    spec: dict[str, Any], field: str, message: str
) -> None:
    service = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web", "namespace": "shop"},
               "spec": {"ports": [{"port": 80}]}}  # fmt: skip
    text = yaml.safe_dump_all([_sidecar("bad", spec), service])
    result = parse_file(text, origin="scope.yaml")
    [error] = result.errors
    assert error.key == ResourceKey("Sidecar", "shop", "bad")
    assert error.field == field and message in error.message, str(error)
    assert str(error).startswith("scope.yaml: Sidecar shop/bad: ")
    assert list(result.resources) == [ResourceKey("Service", "shop", "web")]


def test_a_second_namespace_default_sidecar_is_reported_and_the_oldest_applies() -> None:
    resources = [
        parse_resource(_sidecar("newer", {"egress": [{"hosts": ["*/*"]}]}, "2026-02-01T00:00:00Z")),
        parse_resource(_sidecar("older", {"egress": [{"hosts": ["./*"]}]}, "2026-01-01T00:00:00Z")),
    ]
    world = build_world(resources, domain_suffix="cluster.local")
    chosen, errors = select_sidecar(world, namespace="shop", labels={}, root_namespace="istio-system")
    assert chosen is not None and chosen.metadata.name == "older"
    [error] = errors
    assert error.key == ResourceKey("Sidecar", "shop", "newer")
    assert error.field == "spec.workloadSelector" and "already the namespace default" in error.message
