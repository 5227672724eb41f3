"""The field walk (issue 21): every field of every Istio (and Gateway API) model meshd reads is either read by
translation (recorded while every golden case is translated) or refused by name when set (`refused(...)`
in the model, listed in the chart's CRD descriptions and docs/support.md). A field that is neither would
be accepted and silently ignored."""

from __future__ import annotations

import pathlib

import pytest
from pydantic import ValidationError

from meshd.api.meta import InvalidResource
from meshd.api.parse import parse_resource
from tests.fieldwalk.walk import GOLDEN, Field, istio_spec_models, reachable, recording, wire_name
from tests.golden import render as golden

SRC = pathlib.Path(__file__).resolve().parents[2] / "src" / "meshd"
# Fields translation reads on a path no golden case takes: the module that reads them (checked below).
READ_ELSEWHERE: dict[Field, str] = {
    ("JwtRule", "timeout"): "sources/jwks.py",  # the JWKS fetch's timeout (the fetcher, not translation)
    # EnvoyFilter (tests/unit/test_envoyfilter.py, tests/e2e/test_envoyfilter*.py)
    ("Patch", "filterClass"): "translate/envoyfilter/apply.py",
    ("ProxyMatch", "metadata"): "translate/envoyfilter/match.py",
    ("EnvoyFilterTargetRef", "kind"): "translate/authz/selection.py",
    ("EnvoyFilterTargetRef", "name"): "translate/authz/selection.py",
    ("EnvoyFilterTargetRef", "namespace"): "translate/authz/selection.py",
    # Gateway API (tests/unit/test_k8s_gateway_api.py)
    # automated deployment: the leader's objects per Gateway (tests/unit/kube/test_gateway_deploy.py,
    # tests/e2e/test_gateway_deploy_kube.py)
    ("KubernetesGatewaySpec", "infrastructure"): "kube/gateway_deploy.py",
    ("GatewayInfrastructure", "labels"): "kube/gateway_deploy.py",
    ("GatewayInfrastructure", "annotations"): "kube/gateway_deploy.py",
    # WasmPlugin (tests/unit/test_wasm_plugin.py, tests/e2e/test_wasm_plugin.py)
    ("WasmTargetRef", "kind"): "translate/authz/selection.py",
    ("WasmTargetRef", "name"): "translate/authz/selection.py",
    ("WasmTargetRef", "namespace"): "translate/authz/selection.py",
    # ProxyConfig: applied at injection, not translated (tests/unit/kube/test_inject_proxyconfig.py,
    # tests/e2e/test_proxyconfig_kube.py)
    ("ProxyConfigSpec", "selector"): "kube/inject_proxyconfig.py",
    ("ProxyConfigSpec", "concurrency"): "kube/inject_proxyconfig.py",
    ("ProxyConfigSpec", "environmentVariables"): "kube/inject_proxyconfig.py",
    ("ProxyConfigSelector", "matchLabels"): "kube/inject_proxyconfig.py",
}
# Fields refused by a validation rule rather than `refused(...)` (the rule names the field; its test is cited).
REFUSED_BY_RULE: dict[Field, str] = {
    # a GatewayClass with parametersRef is not Accepted (InvalidParameters): tests/e2e/test_gateway_api_kube.py
    **{
        ("ParametersReference", name): "meshd deploys no gateway proxy: no parameters apply (InvalidParameters)"
        for name in ("group", "kind", "name", "namespace")
    },
}
# Fields with no effect on traffic in Istio either: validated, documented here.
NO_TRAFFIC_EFFECT: dict[Field, str] = {
    ("Server", "name"): "Istio uses a server's name for statistics and status only",
    ("TargetRef", "group"): "checked against the kinds Istio attaches policies to (validation); the target is "
    "resolved by kind and name",
    ("EnvoyFilterTargetRef", "group"): "as TargetRef.group",
    ("PolicyTargetReference", "group"): "as TargetRef.group (RequestAuthentication)",
    ("GatewayClassSpec", "description"): "a Gateway API GatewayClass's description is for people",
    ("RouteRule", "name"): "a Gateway API route rule's name is for status and policy attachment",
    ("WasmTargetRef", "group"): "as TargetRef.group (WasmPlugin)",
    ("WasmPluginSpec", "imagePullPolicy"): "meshd runs a module only with its digest (sha256 for http(s)://, a local "
    "file for file://); Istio applies the pull policy only to modules referenced without one",
    ("L4RouteRule", "name"): "as RouteRule.name (TCPRoute, TLSRoute)",
    ("GRPCRouteRule", "name"): "as RouteRule.name (GRPCRoute)",
}

# Fields whose only accepted value is what meshd does anyway: validation refuses every other value, naming it.
VALIDATED_ONLY: dict[Field, str] = {
    ("Metrics", "providers"): "only the prometheus provider is accepted, which every proxy reports to (always) "
    "(tests/unit/test_telemetry.py)",
    ("TelemetryTargetRef", "group"): "gateway.networking.k8s.io only (a Telemetry attaches to Gateway API Gateways)",
    ("TelemetryTargetRef", "kind"): "Gateway only",
    ("TelemetryTargetRef", "namespace"): "empty only (a Gateway of the Telemetry's own namespace)",
    ("RouteFilter", "type"): "Gateway API: must name the one filter field given (validation); the field is read",
    ("GRPCRouteFilter", "type"): "as RouteFilter.type (GRPCRoute)",
    ("ProxyConfigSpec", "image"): "imageType default only (meshd ships one image): others refused by validation",
    ("ProxyImage", "imageType"): "default only (meshd ships one image): debug, distroless refused by validation",
}


@pytest.fixture(scope="module")
def translated_reads() -> set[Field]:
    reads: set[Field] = set()
    with recording(reads) as switch:
        parse_file = golden.parse_file

        def unrecorded_parse(*args: object, **kwargs: object) -> object:
            switch["on"] = False
            try:
                return parse_file(*args, **kwargs)  # type: ignore[arg-type]
            finally:
                switch["on"] = True

        golden.parse_file = unrecorded_parse  # type: ignore[assignment]
        try:
            for case in sorted(GOLDEN.glob("*.in.yaml")):
                golden.render(case)
        finally:
            golden.parse_file = parse_file
    return reads


def every_field() -> dict[Field, str]:
    """(model, wire name) -> the refusal reason, "" for a field meshd implements. Models reached only
    through a refused field are not walked (setting the field at all is refused)."""
    out: dict[Field, str] = {}
    for spec in istio_spec_models().values():
        for model in reachable(spec, skip=set(REFUSED_BY_RULE)):
            refused = model.refused_fields()
            for name in model.model_fields:
                field = (model.__name__, wire_name(model, name))
                out[field] = refused.get(field[1], "") or REFUSED_BY_RULE.get(field, "")
    return out


def test_every_field_is_translated_or_refused(translated_reads: set[Field]) -> None:
    fields = every_field()
    assert len(fields) > 300
    used = translated_reads | set(READ_ELSEWHERE) | set(NO_TRAFFIC_EFFECT) | set(VALIDATED_ONLY)
    ignored = sorted(
        f"{model}.{name}" for (model, name), why in fields.items() if not why and (model, name) not in used
    )
    assert ignored == [], "read by no translation and not refused: " + ", ".join(ignored)


def test_the_explicit_lists_are_true(translated_reads: set[Field]) -> None:
    """Each READ_ELSEWHERE field is read by the module named (and by no golden case: else drop it from the
    list); the lists name existing fields."""
    fields = every_field()
    for field, module in READ_ELSEWHERE.items():
        assert field in fields and field not in translated_reads, field
        model = next(m for spec in istio_spec_models().values() for m in reachable(spec) if m.__name__ == field[0])
        python_name = next(n for n, info in model.model_fields.items() if (info.alias or n) == field[1])
        assert f".{python_name}" in (SRC / module).read_text(), (field, module)
    for field in (*REFUSED_BY_RULE, *NO_TRAFFIC_EFFECT, *VALIDATED_ONLY):
        assert field in fields, field


def test_refused_fields_are_not_read_by_translation(translated_reads: set[Field]) -> None:
    """A field on the refused list is never translated (the list stays true)."""
    read_refused = sorted(f"{m}.{n}" for (m, n), why in every_field().items() if why and (m, n) in translated_reads)
    assert read_refused == []


def test_the_recorder_sees_reads() -> None:
    """The walk's instrument works: a field read while recording is recorded, and only then."""
    from meshd.api.virtualservice import VirtualService

    vs = parse_resource({"apiVersion": "networking.istio.io/v1", "kind": "VirtualService", "metadata": {"name": "a"},
                         "spec": {"hosts": ["a"], "http": [{"route": [{"destination": {"host": "a"}}]}]}})  # fmt: skip
    assert isinstance(vs, VirtualService)
    reads: set[Field] = set()
    with recording(reads):
        assert vs.spec.http[0].route[0].destination.host == "a"
    _ = vs.spec.hosts
    assert reads == {("VirtualServiceSpec", "http"), ("HTTPRoute", "route"),
                     ("HTTPRouteDestination", "destination"), ("Destination", "host")}  # fmt: skip


def test_each_refused_field_gets_a_named_error() -> None:
    """Setting any refused field is an error naming it: through a whole resource (the path and message a
    user sees), and for every refused field of every model, on the model that holds it."""
    with pytest.raises(InvalidResource) as caught:
        parse_resource({"apiVersion": "networking.istio.io/v1", "kind": "WorkloadEntry", "metadata": {"name": "a"},
                        "spec": {"address": "1.1.1.1", "network": "n1"}}, fail_closed=False)  # fmt: skip
    assert caught.value.field == "spec.network" and caught.value.message.startswith("not supported by meshd: ")
    checked = 0
    for spec in istio_spec_models().values():
        for model in reachable(spec):
            for wire, why in model.refused_fields().items():
                with pytest.raises(ValidationError) as refused:
                    model.model_validate({wire: "set"})
                assert f"{wire}: not supported by meshd: {why}" in str(refused.value), (model.__name__, wire)
                checked += 1
    assert checked >= 19
