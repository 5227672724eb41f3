"""The chart's Istio CRDs: generated from meshd's models and up to date, structural (as the API server
requires), and they accept Istio's documented YAML unchanged while refusing wrong types and values."""

from __future__ import annotations

import importlib.util
import json
import pathlib
import sys
from string import Template
from typing import Any

import jsonschema
import pytest
import yaml

from meshd.api.parse import REFUSED_KINDS
from tests.unit.deploy.chart import INVALID_EXAMPLES, ROOT, SECURITY_EXAMPLES, of_kind, render

ISTIO_DOCS = ROOT / "tests" / "e2e" / "istio_docs"


def load_tool() -> Any:
    spec = importlib.util.spec_from_file_location("meshd_tools_gencrds", ROOT / "tools" / "gencrds.py")
    assert spec is not None and spec.loader is not None
    module = sys.modules.get(spec.name)
    if module is None:
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # its dataclasses look their module up
        spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def crds() -> dict[tuple[str, str], dict[str, Any]]:
    """(group, kind) -> CRD, as Helm renders them: those generated from meshd's models (the kinds meshd does not
    translate yet carry Istio's own CRD schemas, templates/crds-unsupported.yaml)."""
    return {
        (c["spec"]["group"], c["spec"]["names"]["kind"]): c
        for c in of_kind(render({}), "CustomResourceDefinition")
        if c["spec"]["names"]["kind"] not in REFUSED_KINDS
    }


def test_committed_crds_are_generated_from_the_models() -> None:
    tool = load_tool()
    assert tool.main(["--check"]) == 0, "run `python tools/gencrds.py`"
    text = tool.OUTPUT.read_text()
    assert "&id" not in text and "*id" not in text  # plain YAML: no anchors for other tools to trip on


def test_served_versions_as_istio(crds: dict[tuple[str, str], dict[str, Any]]) -> None:
    for (group, kind), crd in crds.items():
        versions = {v["name"]: v for v in crd["spec"]["versions"]}
        expected = {
            "networking.istio.io": {"v1", "v1beta1", "v1alpha3"},
            "telemetry.istio.io": {"v1", "v1alpha1"},
            "extensions.istio.io": {"v1alpha1"},
        }.get(group, {"v1", "v1beta1"})
        if kind == "EnvoyFilter":
            expected = {"v1alpha3"}  # Istio serves EnvoyFilter as v1alpha3 only
        if kind == "ProxyConfig":
            expected = {"v1beta1"}  # and ProxyConfig as v1beta1 only
        assert set(versions) == expected
        assert all(v["served"] for v in versions.values())
        assert sum(v["storage"] for v in versions.values()) == 1
        assert all(v["subresources"] == {"status": {}} for v in versions.values())
        assert crd["spec"]["scope"] == "Namespaced"


def structural_problems(node: Any, path: str = "") -> list[str]:
    """The Kubernetes structural-schema rules a generated schema could break."""
    problems: list[str] = []
    if not isinstance(node, dict):
        return [f"{path}: not an object"]
    for banned in ("$ref", "$defs", "default", "anyOf", "oneOf", "allOf", "title"):
        if banned in node:
            problems.append(f"{path}: {banned}")
    int_or_string = node.get("x-kubernetes-int-or-string") is True
    preserve = node.get("x-kubernetes-preserve-unknown-fields") is True
    if "type" not in node and not int_or_string and not preserve:
        problems.append(f"{path}: no type")
    if int_or_string and "type" in node:
        problems.append(f"{path}: int-or-string with a type")
    if "properties" in node and "additionalProperties" in node:
        problems.append(f"{path}: properties and additionalProperties")
    if node.get("type") == "array" and "items" not in node:
        problems.append(f"{path}: array without items")
    if node.get("type") == "object" and not ("properties" in node or "additionalProperties" in node or preserve):
        problems.append(f"{path}: object without fields")
    for name, child in node.get("properties", {}).items():
        problems += structural_problems(child, f"{path}.{name}")
    if isinstance(node.get("additionalProperties"), dict):
        problems += structural_problems(node["additionalProperties"], f"{path}{{*}}")
    if "items" in node:
        problems += structural_problems(node["items"], f"{path}[]")
    return problems


def test_schemas_are_structural(crds: dict[tuple[str, str], dict[str, Any]]) -> None:
    for key, crd in crds.items():
        for version in crd["spec"]["versions"]:
            assert structural_problems(version["schema"]["openAPIV3Schema"]) == [], key


def test_structural_check_catches_a_ref() -> None:
    assert structural_problems({"type": "object", "properties": {"a": {"$ref": "#/$defs/A"}}})


def test_modelled_kinds_have_typed_specs(crds: dict[tuple[str, str], dict[str, Any]]) -> None:
    spec = spec_schema(crds, "networking.istio.io/v1", "VirtualService")
    http = spec["properties"]["http"]["items"]["properties"]
    assert http["timeout"] == {"type": "string"}  # a Go duration
    assert http["route"]["items"]["properties"]["weight"]["type"] == "integer"
    assert _preserving(spec) == []  # strict: an unknown field never reaches meshd unseen
    lb = spec_schema(crds, "networking.istio.io/v1", "DestinationRule")["properties"]["trafficPolicy"]
    assert "ROUND_ROBIN" in lb["properties"]["loadBalancer"]["properties"]["simple"]["enum"]
    gateway = spec_schema(crds, "networking.istio.io/v1", "Gateway")
    assert "x-kubernetes-preserve-unknown-fields" not in gateway  # strict: the API server refuses unknown fields
    tls = gateway["properties"]["servers"]["items"]["properties"]["tls"]
    assert "x-kubernetes-preserve-unknown-fields" not in tls
    assert "OPTIONAL_MUTUAL" in tls["properties"]["mode"]["enum"]
    # AuthorizationPolicy: strict, every level typed and closed (security config is never left open)
    authz = spec_schema(crds, "security.istio.io/v1", "AuthorizationPolicy")
    assert "x-kubernetes-preserve-unknown-fields" not in json.dumps(authz)
    assert authz["properties"]["action"]["enum"] == ["ALLOW", "DENY", "AUDIT", "CUSTOM"]
    rule = authz["properties"]["rules"]["items"]["properties"]
    assert rule["when"]["items"]["required"] == ["key"]
    assert rule["to"]["items"]["properties"]["operation"]["properties"]["notPaths"] == {
        "type": "array",
        "items": {"type": "string"},
    }


def _preserving(node: Any, path: str = "spec") -> list[str]:
    """Where a schema keeps fields it does not know."""
    found = [path] if isinstance(node, dict) and node.get("x-kubernetes-preserve-unknown-fields") else []
    if isinstance(node, dict):
        for name, child in node.get("properties", {}).items():
            found += _preserving(child, f"{path}.{name}")
        for key in ("items", "additionalProperties"):
            if isinstance(node.get(key), dict):
                found += _preserving(node[key], f"{path}.{key}")
    return found


def test_request_authentication_schema_is_strict(crds: dict[tuple[str, str], dict[str, Any]]) -> None:
    """No unknown field is kept anywhere in the spec (the API server prunes and warns), so a field meshd
    does not know never reaches it unseen; Istio's newer fields meshd refuses by name are kept for that."""
    for version in ("v1", "v1beta1"):
        spec = spec_schema(crds, f"security.istio.io/{version}", "RequestAuthentication")
        assert _preserving(spec) == []
        rule = spec["properties"]["jwtRules"]["items"]["properties"]
        assert {"jwksUri", "jwks_uri", "fromCookies", "timeout", "spaceDelimitedClaims", "presence"} <= set(rule)
        assert set(spec["properties"]) == {"selector", "targetRef", "targetRefs", "jwtRules"}


# Free-form by Istio's API (a google.protobuf.Struct): an EnvoyFilter patch's Envoy config, which meshd parses
# as the Envoy message its applyTo names (unknown fields refused with their path: tests/unit/test_envoyfilter.py).
FREE_FORM = {
    ("EnvoyFilter", "spec.configPatches.items.patch.value"),
    ("WasmPlugin", "spec.pluginConfig"),  # Istio's google.protobuf.Struct: the plugin's own configuration
}


def test_every_modelled_spec_is_closed(crds: dict[tuple[str, str], dict[str, Any]]) -> None:
    """No Istio kind meshd models keeps unknown fields anywhere in its spec (issue 21: strict schemas), but
    where Istio's API itself is free-form."""
    for (_, kind), crd in crds.items():
        for version in crd["spec"]["versions"]:
            spec = version["schema"]["openAPIV3Schema"]["properties"]["spec"]
            assert [p for p in _preserving(spec) if (kind, p) not in FREE_FORM] == [], (kind, version["name"])


def test_fields_meshd_refuses_are_typed_and_described(crds: dict[tuple[str, str], dict[str, Any]]) -> None:
    """A field of Istio's API that meshd refuses stays in the schema (typed), so the API server hands it to
    meshd, which refuses the object naming it, instead of pruning it silently."""
    spec = spec_schema(crds, "networking.istio.io/v1beta1", "WorkloadEntry")
    assert spec["properties"]["network"]["type"] == "string"
    assert spec["properties"]["network"]["description"].startswith("Refused by meshd when set: multi-network")


def test_int_or_string_conversion() -> None:
    tool = load_tool()
    node = {"anyOf": [{"type": "integer"}, {"type": "string"}, {"type": "null"}]}
    assert tool.structural(node, {}) == {"x-kubernetes-int-or-string": True}


def spec_schema(crds: dict[tuple[str, str], dict[str, Any]], api_version: str, kind: str) -> dict[str, Any]:
    schema: dict[str, Any] = openapi_schema(crds, api_version, kind)["properties"]["spec"]
    return schema


def openapi_schema(crds: dict[tuple[str, str], dict[str, Any]], api_version: str, kind: str) -> dict[str, Any]:
    group, _, version = api_version.partition("/")
    crd = crds[(group, kind)]
    (served,) = [v for v in crd["spec"]["versions"] if v["name"] == version and v["served"]]
    schema: dict[str, Any] = served["schema"]["openAPIV3Schema"]
    return schema


def to_json_schema(node: dict[str, Any]) -> dict[str, Any]:
    """Kubernetes OpenAPI v3 (structural) -> JSON Schema, for the Kubernetes extensions that change meaning."""
    if node.get("x-kubernetes-int-or-string"):
        return {"anyOf": [{"type": "integer"}, {"type": "string"}]}
    out = {k: v for k, v in node.items() if not k.startswith("x-kubernetes-")}
    if out.get("exclusiveMinimum") is True:
        out["exclusiveMinimum"] = out.pop("minimum")
    if out.get("exclusiveMaximum") is True:
        out["exclusiveMaximum"] = out.pop("maximum")
    if "properties" in out:
        out["properties"] = {k: to_json_schema(v) for k, v in out["properties"].items()}
    if isinstance(out.get("additionalProperties"), dict):
        out["additionalProperties"] = to_json_schema(out["additionalProperties"])
    if "items" in out:
        out["items"] = to_json_schema(out["items"])
    return out


def errors(crds: dict[tuple[str, str], dict[str, Any]], doc: dict[str, Any]) -> list[str]:
    schema = to_json_schema(openapi_schema(crds, doc["apiVersion"], doc["kind"]))
    as_json = json.loads(json.dumps(doc))  # map keys become strings, as the API server sees them
    validator = jsonschema.Draft202012Validator(schema)
    return [f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(as_json)]


def istio_documents(path: pathlib.Path) -> list[dict[str, Any]]:
    # workload files template their Pod addresses: any address will do here
    text = Template(path.read_text()).safe_substitute({k: "10.0.0.1" for k in _placeholders(path.read_text())})
    return [d for d in yaml.safe_load_all(text) if d and "istio.io/" in d.get("apiVersion", "")]


def _placeholders(text: str) -> set[str]:
    return {
        m.group("braced") or m.group("named")
        for m in Template.pattern.finditer(text)
        if m.group("braced") or m.group("named")
    }


DOC_FILES = [*sorted(ISTIO_DOCS.glob("*.yaml")), SECURITY_EXAMPLES]
VALID = [(f"{p.name}:{d['kind']}/{d['metadata']['name']}", d) for p in DOC_FILES for d in istio_documents(p)]
INVALID = [(d["metadata"]["name"], d) for d in yaml.safe_load_all(INVALID_EXAMPLES.read_text()) if d]


def test_the_examples_cover_every_kind() -> None:
    kinds = {d["kind"] for _, d in VALID}
    assert kinds == {
        "VirtualService",
        "DestinationRule",
        "Gateway",
        "ServiceEntry",
        "WorkloadEntry",
        "Sidecar",
        "PeerAuthentication",
        "AuthorizationPolicy",
        "RequestAuthentication",
        "EnvoyFilter",
    }
    assert len(VALID) >= 25


@pytest.mark.parametrize(("name", "doc"), VALID, ids=[n for n, _ in VALID])
def test_istio_documented_yaml_is_accepted(
    crds: dict[tuple[str, str], dict[str, Any]], name: str, doc: dict[str, Any]
) -> None:
    assert errors(crds, doc) == []


@pytest.mark.parametrize(("name", "doc"), INVALID, ids=[n for n, _ in INVALID])
def test_invalid_yaml_is_refused(crds: dict[tuple[str, str], dict[str, Any]], name: str, doc: dict[str, Any]) -> None:
    found = errors(crds, doc)
    assert found, f"{name} was accepted"
    why = doc["metadata"]["annotations"]["why"].replace("[", ".").replace("]", "")
    assert any(e.startswith(why + ":") for e in found), found
