"""EnvoyFilter applyTo BOOTSTRAP: which patches reach a proxy (context, proxy match, order), how they apply
(Istio's proto.Merge, filter by filter, PGV-checked), how the generator serves them, how a refusal is
reported on the EnvoyFilter."""

from __future__ import annotations

import dataclasses
from typing import Any

from envoy.config.bootstrap.v3.bootstrap_pb2 import Bootstrap
from google.protobuf import json_format

from meshd.api.envoyfilter import EnvoyFilter
from meshd.api.meta import ResourceKey
from meshd.api.parse import parse_resource
from meshd.generate.nacks import nack_errors
from meshd.model.world import build_world
from meshd.translate.envoyfilter.bootstrap import (
    AGENT_METADATA,
    BOOTSTRAP_PATCH,
    apply_patches,
    decode,
    parse_name,
    selected_patches,
)
from meshd.translate.proxy import parse_node_id
from meshd.xds.isolation import Rejected


def _ef(patches: list[dict[str, Any]], *, name: str = "ef", ns: str = "default", **spec: Any) -> EnvoyFilter:
    found = parse_resource(
        {"apiVersion": "networking.istio.io/v1alpha3", "kind": "EnvoyFilter",
         "metadata": {"name": name, "namespace": ns}, "spec": {"configPatches": patches, **spec}}
    )  # fmt: skip
    assert isinstance(found, EnvoyFilter)
    return found


def _merge(value: dict[str, Any], **match: Any) -> dict[str, Any]:
    return {"applyTo": "BOOTSTRAP", "match": match, "patch": {"operation": "MERGE", "value": value}}


def _base() -> Bootstrap:
    return json_format.ParseDict(
        {"node": {"id": "sidecar~10.0.0.1~a.default~default.svc.cluster.local", "metadata": {"NAMESPACE": "default"}},
         "stats_flush_interval": "0.250s",
         "layered_runtime": {"layers": [{"name": "static", "static_layer": {"a": 1}}]}},
        Bootstrap(),
    )  # fmt: skip


def _patches(*filters: EnvoyFilter, router: bool = False, **metadata: str) -> list[tuple[str, Bootstrap]]:
    chosen = selected_patches(filters, router=router, metadata=metadata)
    assert all(isinstance(s.patch.message, Bootstrap) for s in chosen)
    return [(s.resource, s.patch.message) for s in chosen]  # type: ignore[misc]


def test_context_and_proxy_match_select_the_patches_in_order() -> None:
    ef = _ef(
        [
            _merge({"node": {"metadata": {"ANY": "1"}}}),
            _merge({"node": {"metadata": {"GW": "1"}}}, context="GATEWAY"),
            _merge({"node": {"metadata": {"SC": "1"}}}, context="SIDECAR_OUTBOUND"),
            _merge({"node": {"metadata": {"V": "1"}}}, proxy={"proxyVersion": "^1\\.2"}),
            _merge({"node": {"metadata": {"M": "1"}}}, proxy={"metadata": {"TIER": "gold"}}),
            {"applyTo": "CLUSTER", "patch": {"operation": "REMOVE"}},
        ]
    )
    assert [n for n, _ in _patches(ef)] == ["0/default/ef/0", "0/default/ef/2"]
    assert [n for n, _ in _patches(ef, router=True)] == ["0/default/ef/0", "0/default/ef/1"]
    assert [n for n, _ in _patches(ef, ISTIO_VERSION="1.2.3", TIER="gold")] == [
        "0/default/ef/0", "0/default/ef/2", "0/default/ef/3", "0/default/ef/4"
    ]  # fmt: skip
    assert parse_name("3/istio-system/stats/12") == (3, "istio-system", "stats", 12)
    assert parse_name("istio-system/stats") is None


def test_merge_is_protobufs_merge_as_istio_applies_it() -> None:
    ef = _ef(
        [
            _merge({"node": {"metadata": {"EXTRA": "x"}}, "stats_flush_interval": "5s"}),
            _merge({"layered_runtime": {"layers": [{"name": "patched", "static_layer": {"b": 2}}]}}),
        ]
    )
    result, refused = apply_patches(_base(), _patches(ef))
    assert not refused
    out = json_format.MessageToDict(result, preserving_proto_field_name=True)
    assert out["node"]["metadata"] == {"NAMESPACE": "default", "EXTRA": "x"}  # map entries by key
    assert out["node"]["id"].startswith("sidecar~")  # unset fields of the patch keep the base's
    assert out["stats_flush_interval"] == "5.250s"  # a Duration merges field by field, as Go's proto.Merge
    assert [layer["name"] for layer in out["layered_runtime"]["layers"]] == ["static", "patched"]  # appended


def test_a_filter_breaking_a_pgv_rule_is_left_out_and_the_others_apply() -> None:
    bad = _ef([_merge({"node": {"metadata": {"BAD": "1"}}}), _merge({"layered_runtime": {"layers": [{"name": ""}]}})],
              name="bad")  # fmt: skip
    good = _ef([_merge({"node": {"metadata": {"GOOD": "1"}}})], name="good")
    result, refused = apply_patches(_base(), _patches(bad, good))
    assert [(r.envoy_filter, r.resources) for r in refused] == [("default/bad", ("0/default/bad/0", "0/default/bad/1"))]
    assert "layered_runtime.layers[1].name" in refused[0].message, refused[0].message
    assert dict(json_format.MessageToDict(result.node.metadata)) == {"NAMESPACE": "default", "GOOD": "1"}


def test_decode_orders_by_filter_then_patch_and_names_strangers() -> None:
    body = Bootstrap(stats_flush_interval={"seconds": 1}).SerializeToString()
    patches, bad = decode({"1/ns/b/0": body, "0/ns/a/10": body, "0/ns/a/2": body, "nonsense": body})
    assert [n for n, _ in patches] == ["0/ns/a/2", "0/ns/a/10", "1/ns/b/0"]
    assert bad == ["nonsense"]


def _generate(docs: list[EnvoyFilter], *, metadata: dict[str, str]) -> tuple[Any, Any]:
    from meshd.generate.generator import ConfigGenerator
    from meshd.generate.options import GenerateOptions

    world = build_world(docs, domain_suffix="cluster.local")
    generator = ConfigGenerator(world, options=GenerateOptions(inbound_port=15006), check=True)
    proxy = dataclasses.replace(
        parse_node_id("sidecar~10.0.0.1~a.default~default.svc.cluster.local"), metadata=tuple(sorted(metadata.items()))
    )
    return generator, generator.snapshot(proxy)


def test_the_generator_serves_the_patches_to_an_agent_that_applies_them_and_reports_them_for_others() -> None:
    ef = _ef([_merge({"node": {"metadata": {"EF": "1"}}}), {"applyTo": "CLUSTER", "patch": {"operation": "REMOVE"}}])
    generator, snap = _generate([ef], metadata={AGENT_METADATA: "true"})
    served = {n: r.body for n, r in snap.resources.get(BOOTSTRAP_PATCH, {}).items()}
    assert list(served) == ["0/default/ef/0"]
    patches, _ = decode(served)
    assert dict(json_format.MessageToDict(patches[0][1].node.metadata)) == {"EF": "1"}
    assert not list(generator.refused)

    generator, snap = _generate([ef], metadata={})
    assert BOOTSTRAP_PATCH not in snap.resources
    errors = list(generator.refused)
    assert [(e.key, e.field) for e in errors] == [(ef.key, "spec.configPatches[0]")], errors
    assert "its node agent does not apply bootstrap patches" in errors[0].message


def test_a_refusal_by_the_agent_is_reported_on_the_envoyfilter() -> None:
    ef = _ef([_merge({"node": {"metadata": {"EF": "1"}}})], name="stats", ns="istio-system")
    world = build_world([ef], domain_suffix="cluster.local")
    proxy = parse_node_id("sidecar~10.0.0.1~a.default~default.svc.cluster.local")
    rejected = Rejected(BOOTSTRAP_PATCH, "0/istio-system/stats/0", "v1", "bootstrap patch '0/istio-system/stats/0': no")
    errors = nack_errors([(proxy, rejected)], world)
    assert [e.key for e in errors] == [ResourceKey("EnvoyFilter", "istio-system", "stats")]
    assert "the node agent rejected bootstrap patch '0/istio-system/stats/0' (proxies a.default)" in errors[0].message
