"""Telemetry (telemetry.istio.io) validation and the per-workload resolution of access logging and tracing:
inheritance mesh -> namespace -> workload, providers, defaults, the mesh config's own log and tracer."""

from __future__ import annotations

from typing import Any

import pytest

from meshd.api.meshconfig import InvalidMeshConfig, parse_mesh_policy
from meshd.api.meta import InvalidResource
from meshd.api.parse import parse_resource
from meshd.api.telemetry import Telemetry
from meshd.model.world import build_world
from meshd.translate.metrics import DEFAULT_METRICS, DESTINATION, SOURCE
from meshd.translate.telemetry.problems import telemetry_errors
from meshd.translate.telemetry.resolve import WorkloadTelemetry, applicable, workload_telemetry

MESH = parse_mesh_policy(
    {
        "accessLogFile": "/var/log/mesh.log",
        "extensionProviders": [
            {"name": "json", "envoyFileAccessLog": {"path": "/dev/stdout", "logFormat": {"labels": {}}}},
            {"name": "text", "envoyFileAccessLog": {"path": "/dev/stderr", "logFormat": {"text": "%RESPONSE_CODE%"}}},
            {"name": "zipkin", "zipkin": {"service": "zipkin.istio-system.svc.cluster.local", "port": 9411}},
            {"name": "otel", "opentelemetry": {"service": "otel.obs.svc.cluster.local", "port": 4317}},
            {"name": "dd", "datadog": {"service": "dd.obs.svc.cluster.local", "port": 8126}},
        ],
    }
).telemetry
SERVICES = [
    {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "zipkin", "namespace": "istio-system"},
     "spec": {"ports": [{"name": "http", "port": 9411}]}},
    {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "otel", "namespace": "obs"},
     "spec": {"ports": [{"name": "grpc", "port": 4317}]}},
]  # fmt: skip


def telemetry(name: str, namespace: str, spec: dict[str, Any], *, created: str = "2024-01-01T00:00:00Z") -> Telemetry:
    resource = parse_resource(
        {
            "apiVersion": "telemetry.istio.io/v1",
            "kind": "Telemetry",
            "metadata": {"name": name, "namespace": namespace, "creationTimestamp": created},
            "spec": spec,
        }
    )
    assert isinstance(resource, Telemetry)
    return resource


def resolve(*items: Telemetry, namespace: str = "shop", labels: dict[str, str] | None = None) -> WorkloadTelemetry:
    world = build_world([parse_resource(d) for d in SERVICES] + list(items), domain_suffix="cluster.local")
    found = applicable(world.telemetries, namespace=namespace, labels=labels or {}, root_namespace="istio-system")
    return workload_telemetry(
        found, mesh=MESH, services=world.services, domain_suffix="cluster.local", root_namespace="istio-system",
        service_name=f"app.{namespace}",
    )  # fmt: skip


@pytest.mark.parametrize(
    ("spec", "field", "message"),
    [
        ({"metrics": [{"overrides": [{"match": {"metric": "BOGUS"}}]}]}, "spec.metrics[0].overrides[0].match.metric", "REQUEST_COUNT"),  # noqa: E501
        ({"metrics": [{"overrides": [{"match": {"customMetric": "my_metric"}}]}]}, "spec.metrics[0].overrides[0].match.customMetric", "defines no new metrics"),  # noqa: E501
        ({"metrics": [{"overrides": [{"match": {"metric": "REQUEST_COUNT", "customMetric": "requests_total"}}]}]}, "spec.metrics[0].overrides[0].match.customMetric", "only one of metric"),  # noqa: E501
        ({"metrics": [{"overrides": [{"tagOverrides": {"x": {"operation": "UPSERT"}}}]}]}, "spec.metrics[0].overrides[0].tagOverrides.x.value", "needs a value"),  # noqa: E501
        ({"metrics": [{"overrides": [{"tagOverrides": {"x": {"value": "upstream_peer.labels['app'].value"}}}]}]}, "spec.metrics[0].overrides[0].tagOverrides.x.value", "attribute 'upstream_peer'"),  # noqa: E501
        ({"metrics": [{"overrides": [{"tagOverrides": {"x": {"value": "source.labels['app']"}}}]}]}, "spec.metrics[0].overrides[0].tagOverrides.x.value", "'source.labels'"),  # noqa: E501
        ({"metrics": [{"overrides": [{"tagOverrides": {"x": {"value": "node.metadata['A']"}}}]}]}, "spec.metrics[0].overrides[0].tagOverrides.x.value", "attribute 'node'"),  # noqa: E501
        ({"metrics": [{"overrides": [{"tagOverrides": {"x": {"value": "request.headers['a'"}}}]}]}, "spec.metrics[0].overrides[0].tagOverrides.x.value", "unclosed"),  # noqa: E501
        ({"metrics": [{"overrides": [{"tagOverrides": {"x": {"value": "response.code % 2"}}}]}]}, "spec.metrics[0].overrides[0].tagOverrides.x.value", "'%'"),  # noqa: E501
        ({"metrics": [{"overrides": [{"tagOverrides": {"bad-name": {"operation": "REMOVE"}}}]}]}, "spec.metrics[0].overrides[0].tagOverrides.'bad-name'", "not a Prometheus label name"),  # noqa: E501
        ({"metrics": [{"overrides": [{"tagOverrides": {"_sp": {"value": "'x'"}}}]}]}, "spec.metrics[0].overrides[0].tagOverrides.'_sp'", "compact metric tags"),  # noqa: E501
        ({"metrics": [{"overrides": [{"match": {"mode": "BOTH"}}]}]}, "spec.metrics[0].overrides[0].match.mode", "CLIENT"),  # noqa: E501
        ({"metrics": [{"providers": [{"name": "stackdriver"}]}]}, "spec.metrics[0].providers", "only the prometheus"),
        ({"metrics": [{"reportingInterval": "5s"}]}, "spec.metrics[0].reportingInterval", "cumulative"),
        ({"tracing": [{}, {}]}, "spec.tracing", "only one tracing entry"),
        ({"tracing": [{"providers": [{"name": "a"}, {"name": "b"}]}]}, "spec.tracing[0].providers", "only one"),
        ({"tracing": [{"randomSamplingPercentage": 101}]}, "spec.tracing[0].randomSamplingPercentage", "less than"),
        ({"tracing": [{"customTags": {"t": {}}}]}, "spec.tracing[0].customTags.t", "exactly one"),
        ({"accessLogging": [{"filter": {"expression": "response.code >= (500"}}]}, "spec.accessLogging[0].filter.expression", "unclosed"),  # noqa: E501
        ({"accessLogging": [{"filter": {"expression": "response.code >="}}]}, "spec.accessLogging[0].filter.expression", "incomplete"),  # noqa: E501
        ({"accessLogging": [{"bogus": 1}]}, "spec.accessLogging[0].bogus", "unknown field"),
        ({"selector": {"matchLabels": {"a": "b"}}, "targetRef": {"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": "g"}}, "spec.selector", "only one of selector"),  # noqa: E501
        ({"targetRefs": [{"kind": "Service", "name": "web"}]}, "spec.targetRefs[0].kind", "waypoint"),
    ],
)  # fmt: skip
def test_invalid_telemetry_is_refused_naming_the_field(spec: dict[str, Any], field: str, message: str) -> None:
    with pytest.raises(InvalidResource) as caught:
        telemetry("t", "shop", spec)
    assert caught.value.field == field and message in caught.value.message, caught.value


def test_without_telemetry_the_mesh_config_file_log_applies_to_both_sides() -> None:
    found = resolve()
    assert [s.path for s in found.client.logs] == [s.path for s in found.server.logs] == ["/var/log/mesh.log"]
    assert found.client.tracing is None


def test_namespace_overrides_mesh_and_workload_overrides_namespace() -> None:
    mesh = telemetry("mesh", "istio-system", {"accessLogging": [{"providers": [{"name": "json"}]}]})
    namespace = telemetry("ns", "shop", {"accessLogging": [{"providers": [{"name": "json"}], "disabled": True},
                                                          {"providers": [{"name": "text"}]}]})  # fmt: skip
    workload = telemetry("web", "shop", {"selector": {"matchLabels": {"app": "web"}},
                                         "accessLogging": [{"providers": [{"name": "json"}],
                                                            "match": {"mode": "SERVER"}}]})  # fmt: skip
    assert [s.provider for s in resolve(mesh, namespace="other").client.logs] == ["json"]
    assert [s.provider for s in resolve(mesh, namespace).client.logs] == ["text"]
    web = resolve(mesh, namespace, workload, labels={"app": "web"})
    assert [s.provider for s in web.client.logs] == ["text"]
    assert sorted(s.provider for s in web.server.logs) == ["json", "text"]
    assert [s.provider for s in resolve(mesh, namespace, workload, labels={"app": "db"}).server.logs] == ["text"]


def test_disabled_without_providers_turns_the_default_off() -> None:
    quiet = telemetry("quiet", "shop", {"accessLogging": [{"disabled": True}]})
    assert resolve(quiet).client.logs == () and resolve(quiet).server.logs == ()
    assert resolve(quiet, namespace="other").client.logs  # another namespace keeps the mesh config's log


def test_the_oldest_telemetry_of_a_level_applies() -> None:
    older = telemetry(
        "a", "shop", {"accessLogging": [{"providers": [{"name": "json"}]}]}, created="2024-01-01T00:00:00Z"
    )
    newer = telemetry(
        "b", "shop", {"accessLogging": [{"providers": [{"name": "text"}]}]}, created="2024-02-01T00:00:00Z"
    )
    assert [s.provider for s in resolve(newer, older).client.logs] == ["json"]


def test_tracing_fields_inherit_one_by_one_and_tags_merge() -> None:
    mesh = telemetry("mesh", "istio-system", {"tracing": [{"providers": [{"name": "zipkin"}], "randomSamplingPercentage": 10,  # noqa: E501
                                                           "customTags": {"a": {"literal": {"value": "1"}}}}]})  # fmt: skip  # noqa: E501
    ns = telemetry("ns", "shop", {"tracing": [{"randomSamplingPercentage": 50, "useRequestIdForTraceSampling": False,
                                               "customTags": {"b": {"header": {"name": "x-b"}}}}]})  # fmt: skip
    found = resolve(mesh, ns).client.tracing
    assert found is not None
    assert (found.kind, found.cluster, found.sampling, found.use_request_id) == (
        "zipkin", "outbound|9411||zipkin.istio-system.svc.cluster.local", 50.0, False)  # fmt: skip
    assert [name for name, _ in found.custom_tags] == ["a", "b"]
    otel = telemetry("web", "shop", {"selector": {"matchLabels": {"app": "web"}},
                                     "tracing": [{"match": {"mode": "SERVER"}, "providers": [{"name": "otel"}]}]})  # fmt: skip  # noqa: E501
    web = resolve(mesh, ns, otel, labels={"app": "web"})
    assert web.server.tracing is not None and web.server.tracing.kind == "opentelemetry"
    assert web.server.tracing.service_name == "app.shop"
    assert web.client.tracing is not None and web.client.tracing.kind == "zipkin"
    off = telemetry("off", "other", {"tracing": [{"disableSpanReporting": True}]})
    assert resolve(mesh, off, namespace="other").client.tracing is None


def test_enable_tracing_uses_the_default_config_zipkin() -> None:
    mesh = parse_mesh_policy({"enableTracing": True, "defaultConfig": {"tracing": {"sampling": 5,
                             "zipkin": {"address": "zipkin.istio-system:9411"}}}}).telemetry  # fmt: skip
    world = build_world([parse_resource(d) for d in SERVICES], domain_suffix="cluster.local")
    found = workload_telemetry(
        (), mesh=mesh, services=world.services, domain_suffix="cluster.local", root_namespace="istio-system",
        service_name="x",
    ).client.tracing  # fmt: skip
    assert found is not None and found.sampling == 5.0
    assert found.cluster == "outbound|9411||zipkin.istio-system.svc.cluster.local"
    missing = parse_mesh_policy(
        {"enableTracing": True, "defaultConfig": {"tracing": {"zipkin": {"address": "gone.x:1"}}}}
    )
    errors = telemetry_errors({}, mesh=missing.telemetry, services=world.services, domain_suffix="cluster.local",
                              root_namespace="istio-system")  # fmt: skip
    assert [e.field for e in errors] == ["meshConfig.defaultConfig.tracing.zipkin.address"]


def test_unusable_providers_are_reported_on_the_telemetry_and_left_out() -> None:
    bad = telemetry("bad", "shop", {"accessLogging": [{"providers": [{"name": "zipkin"}, {"name": "json"}]}],
                                    "tracing": [{"providers": [{"name": "dd"}]}]})  # fmt: skip
    world = build_world([parse_resource(d) for d in SERVICES] + [bad], domain_suffix="cluster.local")
    errors = telemetry_errors(world.telemetries, mesh=MESH, services=world.services, domain_suffix="cluster.local",
                              root_namespace="istio-system")  # fmt: skip
    assert [(e.field, e.message.split(",")[0]) for e in errors] == [
        ("spec.accessLogging[0].providers[0].name", "provider 'zipkin' is of kind zipkin"),
        ("spec.tracing[0].providers[0].name", "provider 'dd' is of kind datadog"),
    ]
    found = resolve(bad)
    assert [s.provider for s in found.client.logs] == ["json"] and found.client.tracing is None


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ({"accessLogEncoding": "XML"}, "accessLogEncoding"),
        ({"accessLogEncoding": "JSON", "accessLogFormat": "not json"}, "accessLogFormat"),
        ({"defaultConfig": {"tracing": {"datadog": {"address": "x:1"}}}}, "defaultConfig.tracing.datadog"),
        ({"defaultConfig": {"tracing": {"sampling": 200}}}, "defaultConfig.tracing.sampling"),
        ({"extensionProviders": [{"name": "z", "zipkin": {"service": "z", "port": 1, "bogus": 1}}]}, "zipkin.bogus"),
        ({"extensionProviders": [{"name": "f", "envoyFileAccessLog": {"logFormat": {"text": "x"}}}]}, "path"),
    ],
)
def test_mesh_config_telemetry_errors_name_the_field(raw: dict[str, Any], expected: str) -> None:
    with pytest.raises(InvalidMeshConfig, match=expected.replace(".", r"\.")):
        parse_mesh_policy(raw)


def test_metrics_overrides_accumulate_mesh_namespace_workload() -> None:
    mesh = telemetry(
        "mesh",
        "istio-system",
        {
            "metrics": [
                {
                    "providers": [{"name": "prometheus"}],
                    "overrides": [
                        {
                            "match": {"metric": "ALL_METRICS"},
                            "tagOverrides": {"request_protocol": {"operation": "REMOVE"}},
                        },
                        {"match": {"metric": "REQUEST_DURATION"}, "disabled": True},
                    ],
                }
            ]
        },
    )
    namespace = telemetry(
        "ns",
        "shop",
        {
            "metrics": [
                {
                    "overrides": [
                        {
                            "match": {"customMetric": "requests_total", "mode": "SERVER"},
                            "tagOverrides": {"host": {"value": "request.host"}},
                        }
                    ]
                }
            ]
        },
    )
    workload = telemetry("web", "shop", {"selector": {"matchLabels": {"app": "web"}}, "metrics": [{"overrides": [
        {"match": {"metric": "REQUEST_DURATION", "mode": "CLIENT"}, "disabled": False}]}]})  # fmt: skip
    config = resolve(mesh, namespace, workload, labels={"app": "web"}).metrics
    base = [("reporter", "x"), ("request_protocol", "p")]
    upserted = [("reporter", "x"), ("host", "%CEL(request.host)%")]
    assert config.metric_tags("REQUEST_COUNT", DESTINATION, base) == upserted
    assert config.metric_tags("REQUEST_COUNT", SOURCE, base) == [("reporter", "x")]  # SERVER only
    assert config.metric_tags("REQUEST_DURATION", DESTINATION, base) is None  # disabled mesh-wide
    assert config.metric_tags("REQUEST_DURATION", SOURCE, base) == [("reporter", "x")]  # enabled again (CLIENT)
    assert resolve(mesh).metrics.metric_tags("REQUEST_DURATION", SOURCE, base) is None
    assert resolve().metrics == DEFAULT_METRICS
