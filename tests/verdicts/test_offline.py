"""The verdict table through meshd's models (as sources and the webhook parse), the real `istioctl validate`
(Istio 1.14, offline: the oracle), and the chart's CRD schemas: every layer gives each object its verdict."""

from __future__ import annotations

import json
import subprocess
from typing import Any

import jsonschema
import pytest
import yaml

from meshd.api.meta import InvalidResource, kind_identity
from meshd.api.parse import KINDS, parse_resource
from tests.peers import peer_binary
from tests.unit.deploy.chart import of_kind, render
from tests.unit.deploy.test_crd_schemas import openapi_schema, to_json_schema
from tests.verdicts.cases import CASES, IDS, Case

ISTIO_KINDS = {  # and the Gateway API's (KubernetesGateway is a gateway.networking.k8s.io Gateway)
    kind
    for kind, (_, versions) in KINDS.items()
    if any(".istio.io/" in v or v.startswith("gateway.networking.k8s.io/") for v in versions)
}


def test_the_table_covers_every_istio_kind_both_ways() -> None:
    assert len(CASES) >= 50
    assert len({c.name for c in CASES}) == len(CASES)
    for kind in ISTIO_KINDS:
        verdicts = {c.valid for c in CASES if kind_identity(c.doc["apiVersion"], c.doc["kind"]) == kind}
        assert verdicts == {True, False}, f"{kind}: needs valid and invalid cases"
    assert all(c.field for c in CASES if not c.valid)


def model_error(case: Case) -> InvalidResource | None:
    try:
        parse_resource(case.document(), fail_closed=False)
    except InvalidResource as error:
        return error
    return None


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_models(case: Case) -> None:
    error = model_error(case)
    if case.valid:
        assert error is None, str(error)
        return
    assert error is not None, "accepted"
    assert error.field.startswith(case.field), str(error)


def test_unknown_fields_get_a_suggestion() -> None:
    """A typo is refused with its path and the field it was probably meant to be."""
    typos = {"vs-typo-timeout": "timeout", "dr-typo-load-balancer": "loadBalancer", "pa-typo-mtls": "mtls",
             "ap-typo-method": "methods", "ra-typo-jwks-uri": "jwksUri", "vs-unknown-top-field": "hosts"}  # fmt: skip
    for case in CASES:
        if case.name in typos:
            error = model_error(case)
            assert error is not None and error.message == f"unknown field (did you mean {typos[case.name]!r}?)", error


def test_an_unknown_field_far_from_any_gets_no_suggestion() -> None:
    doc = {"apiVersion": "networking.istio.io/v1", "kind": "VirtualService", "metadata": {"name": "x"},
           "spec": {"hosts": ["a"], "zzzzqqq": 1}}  # fmt: skip
    with pytest.raises(InvalidResource) as caught:
        parse_resource(doc, fail_closed=False)
    assert (caught.value.field, caught.value.message) == ("spec.zzzzqqq", "unknown field")


@pytest.fixture(scope="module")
def istio_verdicts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """name -> istioctl's output ("" when valid), one `istioctl validate` run per object (offline)."""
    istioctl = peer_binary("istioctl")
    out = {}
    folder = tmp_path_factory.mktemp("verdicts")
    for case in CASES:
        path = folder / f"{case.name}.yaml"
        path.write_text(yaml.safe_dump(case.document()))
        run = subprocess.run([str(istioctl), "validate", "-f", str(path)], capture_output=True, text=True, timeout=60)
        out[case.name] = "" if run.returncode == 0 else (run.stdout + run.stderr).strip() or f"exit {run.returncode}"
    return out


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_istioctl_agrees_unless_the_table_says_why(case: Case, istio_verdicts: dict[str, str]) -> None:
    istio_valid = istio_verdicts[case.name] == ""
    if case.istio_differs:  # the note must stay true: Istio 1.14 does give the other verdict
        assert istio_valid != case.valid, f"istioctl now agrees: drop the note ({case.istio_differs})"
    else:
        assert istio_valid == case.valid, istio_verdicts[case.name] or "istioctl accepts it"


@pytest.fixture(scope="module")
def crds() -> dict[tuple[str, str], dict[str, Any]]:
    return {
        (c["spec"]["group"], c["spec"]["names"]["kind"]): c
        for c in of_kind(render({"crds": {"gatewayApi": True}}), "CustomResourceDefinition")
    }


def closed(node: Any) -> Any:
    """A structural schema as the API server applies it with strict field validation (`kubectl apply`'s
    default): an object's fields are exactly its properties, unless it preserves unknown fields."""
    if isinstance(node, list):
        return [closed(n) for n in node]
    if not isinstance(node, dict):
        return node
    out = {k: closed(v) for k, v in node.items()}
    if "properties" in node and not node.get("x-kubernetes-preserve-unknown-fields"):
        out["additionalProperties"] = False
    return out


def crd_errors(crds: dict[tuple[str, str], dict[str, Any]], doc: dict[str, Any]) -> list[str]:
    root = openapi_schema(crds, doc["apiVersion"], doc["kind"])  # apiVersion, kind, metadata: the server's own
    schema = to_json_schema({**root, "properties": {"spec": closed(root["properties"]["spec"])}})
    validator = jsonschema.Draft202012Validator(schema)
    found = validator.iter_errors(json.loads(json.dumps(doc)))
    return [f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in found]


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_crd_schemas(case: Case, crds: dict[tuple[str, str], dict[str, Any]]) -> None:
    """Valid objects and those only a rule refuses pass the schema (the webhook refuses the latter);
    `layer: schema` objects are refused by the schema itself, at the field the model names."""
    found = crd_errors(crds, case.document())
    if not case.schema:
        assert found == []
        return
    path = case.field.replace("[", ".").replace("]", "")
    parent = path.rpartition(".")[0]
    assert any(e.startswith((path + ":", parent + ":")) for e in found), found
