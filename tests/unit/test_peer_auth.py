"""PeerAuthentication: validation (as Istio's) and mode precedence (workload > namespace > mesh,
UNSET inherits, port level by target port, the oldest policy wins)."""

from __future__ import annotations

from typing import Any

import pytest
from google.protobuf import json_format

from meshd.api.meta import InvalidResource
from meshd.api.parse import parse_resource
from meshd.api.security import PeerAuthentication
from meshd.model.derive import peer_authentications_by_namespace
from meshd.translate.peer_auth import (
    InboundMtls,
    check_policies,
    mtls_metadata,
    namespace_mode,
    service_mode,
    workload_mtls,
)

ROOT = "istio-system"


def _pa(
    ns: str,
    name: str,
    mode: str | None = None,
    *,
    selector: dict[str, str] | None = None,
    ports: dict[Any, Any] | None = None,
    created: str = "",
    version: str = "security.istio.io/v1",
) -> dict[str, Any]:
    spec: dict[str, Any] = {}
    if mode is not None:
        spec["mtls"] = {"mode": mode}
    if selector is not None:
        spec["selector"] = {"matchLabels": selector}
    if ports is not None:
        spec["portLevelMtls"] = ports
    meta: dict[str, Any] = {"name": name, "namespace": ns}
    if created:
        meta["creationTimestamp"] = created
    return {"apiVersion": version, "kind": "PeerAuthentication", "metadata": meta, "spec": spec}


def _policies(*docs: dict[str, Any]) -> dict[str, tuple[PeerAuthentication, ...]]:
    parsed = [parse_resource(d) for d in docs]
    return peer_authentications_by_namespace(p for p in parsed if isinstance(p, PeerAuthentication))


def _mode(policies: dict[str, tuple[PeerAuthentication, ...]], ns: str = "shop", **labels: str) -> InboundMtls:
    return workload_mtls(policies, namespace=ns, labels=labels, root_namespace=ROOT)


def test_without_any_policy_the_mesh_is_permissive() -> None:
    assert _mode({}) == InboundMtls("PERMISSIVE")


def test_namespace_overrides_mesh_and_workload_overrides_namespace() -> None:
    policies = _policies(
        _pa(ROOT, "default", "STRICT"),
        _pa("shop", "default", "PERMISSIVE"),
        _pa("shop", "legacy", "DISABLE", selector={"app": "legacy"}),
    )
    assert _mode(policies, "other").mode == "STRICT"  # mesh level
    assert _mode(policies, "shop", app="cart").mode == "PERMISSIVE"  # namespace level
    assert _mode(policies, "shop", app="legacy").mode == "DISABLE"  # workload level
    assert _mode(policies, "other", app="legacy").mode == "STRICT"  # a selector applies in its namespace only


def test_unset_inherits_from_the_level_above() -> None:
    policies = _policies(
        _pa(ROOT, "default", "STRICT"),
        _pa("shop", "default", "UNSET"),
        _pa("shop", "api", None, selector={"app": "api"}, ports={8080: {"mode": "DISABLE"}, 9090: {}}),
    )
    assert _mode(policies, "shop", app="cart").mode == "STRICT"
    api = _mode(policies, "shop", app="api")
    assert api.mode == "STRICT"
    assert api.for_port(8080) == "DISABLE"
    assert api.for_port(9090) == "STRICT"  # port-level UNSET: the workload's mode
    assert api.for_port(7070) == "STRICT"


def test_port_level_overrides_only_its_target_port() -> None:
    policies = _policies(_pa("shop", "api", "DISABLE", selector={"app": "api"}, ports={"8443": {"mode": "STRICT"}}))
    api = _mode(policies, app="api")
    assert (api.mode, api.for_port(8443), api.for_port(8080)) == ("DISABLE", "STRICT", "DISABLE")


def test_mesh_policy_in_the_root_namespace_with_a_selector_is_a_workload_policy() -> None:
    policies = _policies(_pa(ROOT, "gw", "STRICT", selector={"app": "gw"}))
    assert namespace_mode(policies, namespace="shop", root_namespace=ROOT) == "PERMISSIVE"
    assert _mode(policies, ROOT, app="gw").mode == "STRICT"
    assert _mode(policies, "shop", app="gw").mode == "PERMISSIVE"


def test_the_oldest_policy_wins_and_a_second_namespace_wide_one_is_reported() -> None:
    policies = _policies(
        _pa("shop", "newer", "STRICT", created="2024-02-01T00:00:00Z"),
        _pa("shop", "older", "DISABLE", created="2024-01-01T00:00:00Z"),
        _pa("shop", "w-new", "STRICT", selector={"app": "a"}, created="2024-02-01T00:00:00Z"),
        _pa("shop", "w-old", "PERMISSIVE", selector={"app": "a"}, created="2024-01-01T00:00:00Z"),
    )
    assert _mode(policies).mode == "DISABLE"
    assert _mode(policies, app="a").mode == "PERMISSIVE"
    errors = list(check_policies(policies))
    assert [(str(e.key), e.field) for e in errors] == [("PeerAuthentication shop/newer", "spec.selector")]
    assert "PeerAuthentication shop/older is already the namespace-wide policy" in errors[0].message


def test_auto_mtls_reads_the_namespace_mode_of_the_destination() -> None:
    policies = _policies(_pa(ROOT, "default", "DISABLE"), _pa("shop", "default", "STRICT"))
    assert service_mode(policies, namespace="shop", root_namespace=ROOT) == "STRICT"
    assert service_mode(policies, namespace="other", root_namespace=ROOT) == "DISABLE"


def test_an_empty_selector_is_namespace_wide() -> None:
    policies = _policies(_pa("shop", "default", "STRICT", selector={}))
    assert _mode(policies, app="x").mode == "STRICT"


@pytest.mark.parametrize("version", ["security.istio.io/v1", "security.istio.io/v1beta1"])
def test_both_served_versions_parse(version: str) -> None:
    parsed = parse_resource(_pa("shop", "p", "STRICT", version=version))
    assert isinstance(parsed, PeerAuthentication) and parsed.spec.mode == "STRICT"


@pytest.mark.parametrize(
    ("doc", "field", "message"),
    [
        (_pa("shop", "p", "OPTIONAL"), "spec.mtls.mode", "'UNSET', 'DISABLE', 'PERMISSIVE' or 'STRICT'"),
        (_pa("shop", "p", ports={8080: {"mode": "DISABLE"}}), "spec.portLevelMtls", "requires a workload selector"),
        (
            _pa("shop", "p", selector={}, ports={8080: {"mode": "DISABLE"}}),
            "spec.portLevelMtls",
            "requires a workload selector",
        ),
        (
            _pa("shop", "p", selector={"a": "b"}, ports={0: {"mode": "DISABLE"}}),
            "spec.portLevelMtls",
            "not in 1..65535",
        ),
        (_pa("shop", "p", selector={"a": "b"}, ports={"http": {}}), "spec.portLevelMtls", "integer"),
        (
            _pa("shop", "p", selector={"a": "b"}, ports={8080: {"mode": "NOPE"}}),
            "spec.portLevelMtls[8080].mode",
            "'STRICT'",
        ),
        (
            {**_pa("shop", "p", "STRICT"), "apiVersion": "networking.istio.io/v1"},
            "apiVersion",
            "security.istio.io/v1",
        ),
    ],
)
def test_invalid_policies_name_resource_and_field(doc: dict[str, Any], field: str, message: str) -> None:
    with pytest.raises(InvalidResource) as caught:
        parse_resource(doc)
    assert str(caught.value.key) == "PeerAuthentication shop/p"
    assert caught.value.field.startswith(field), caught.value
    assert message in caught.value.message, caught.value


def test_each_mode_names_the_policy_that_set_it() -> None:
    """The most specific policy whose mode is not UNSET (explain names it); none: the mesh default."""
    assert _mode({}).source == "mesh default"
    policies = _policies(
        _pa(ROOT, "default", "STRICT"),
        _pa("shop", "default", "UNSET"),
        _pa("shop", "api", None, selector={"app": "api"}, ports={8080: {"mode": "DISABLE"}, 9090: {}}),
        _pa("shop", "legacy", "DISABLE", selector={"app": "legacy"}),
        _pa("other", "default", "PERMISSIVE"),
    )
    assert _mode(policies, "shop", app="cart").source == f"{ROOT}/default"  # the namespace's policy is UNSET
    api = _mode(policies, "shop", app="api")
    assert (api.source, api.source_for_port(8080), api.source_for_port(9090)) == (
        f"{ROOT}/default",  # the workload policy's own mode is UNSET
        "shop/api",  # its portLevelMtls set this port
        f"{ROOT}/default",  # port-level UNSET inherits
    )
    assert _mode(policies, "shop", app="legacy").source == "shop/legacy"
    assert _mode(policies, "other").source == "other/default"
    renamed = _policies(_pa("shop", "old", "DISABLE", selector={"app": "legacy"}))
    assert _mode(policies, "shop", app="legacy") != _mode(renamed, "shop", app="legacy")  # part of the keys


def test_the_inbound_listener_metadata_names_them() -> None:
    policies = _policies(_pa("shop", "api", "STRICT", selector={"app": "api"}, ports={8080: {"mode": "DISABLE"}}))
    metadata = json_format.MessageToDict(mtls_metadata(_mode(policies, "shop", app="api")))
    assert metadata == {
        "filterMetadata": {
            "meshd": {"peer_authentication": "shop/api", "peer_authentication_ports": {"8080": "shop/api"}}
        }
    }
    assert json_format.MessageToDict(mtls_metadata(_mode({}))) == {
        "filterMetadata": {"meshd": {"peer_authentication": "mesh default"}}
    }
