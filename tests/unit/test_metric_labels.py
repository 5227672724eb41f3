"""Istio's metric labels as compact Envoy tags and back (translate/metric_labels.py): what Envoy is given for
the standard labels, Telemetry overrides on top of it, and the text the agent's scrape endpoints show."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from meshd.agent.prometheus import prometheus_text
from meshd.translate.metric_labels import GROUPS, SINGLE, compact, decompact, expand_text, group_label
from meshd.translate.metrics import DESTINATION, SOURCE, MetricOverride, MetricsConfig, standard_tags

_STANDARD = [
    *standard_tags(reporter=SOURCE, http=True, mtls=None),
    *standard_tags(reporter=DESTINATION, http=False, mtls=True),
]


@given(
    kept=st.lists(st.sampled_from(sorted({n for n, _ in _STANDARD})), unique=True),
    upserts=st.lists(st.tuples(st.sampled_from(["team", "source_app", "response_code"]), st.just("%CEL('x')%"))),
)
def test_compact_is_undone_by_decompact(kept: list[str], upserts: list[tuple[str, str]]) -> None:
    standard = dict(_STANDARD)
    tags = dict((name, standard[name]) for name in kept)
    tags.update(upserts)  # an upsert replaces a standard label's format: it is an ordinary tag then
    out = compact(tags.items())
    assert dict(decompact(out)) == tags
    assert all(not value.startswith("\x00") for _, value in out)  # no marker reaches Envoy


def _series(config: MetricsConfig, reporter: str, values: dict[str, str]) -> dict[str, str]:
    """The labels Prometheus sees for istio_requests_total when Envoy fills each compact tag with `values`."""
    tags = config.metric_tags("REQUEST_COUNT", reporter, standard_tags(reporter=reporter, http=True, mtls=True))
    assert tags is not None
    labels = ",".join(f'{name}="{values.get(name, value)}"' for name, value in compact(tags))
    text = prometheus_text(f"# TYPE envoy_istio_requests_total counter\nenvoy_istio_requests_total{{{labels}}} 7\n")
    line = text.splitlines()[1]
    assert line.startswith("istio_requests_total{") and line.endswith("} 7")
    pairs = [pair.split("=", 1) for pair in line[len("istio_requests_total{") : -len("} 7")].split('",')]
    return {name: value.strip('"') for name, value in pairs}


def test_scraped_labels_are_istios() -> None:
    envoy = {
        "_id": "reviews|shop|reviews|v2|east",
        "_is": "unknown",  # a client without sidecar
        "_sv": "reviews.shop.svc.cluster.local|reviews|shop",
        "_sp": "-",  # Envoy's "none": no client certificate
        "_rc": "200",
    }
    labels = _series(MetricsConfig(), DESTINATION, envoy)
    assert labels["destination_workload"] == "reviews" and labels["destination_version"] == "v2"
    assert labels["destination_cluster"] == "east" and labels["destination_workload_namespace"] == "shop"
    assert {labels[f"source_{n}"] for n in ("workload", "workload_namespace", "app", "version", "cluster")} == {
        "unknown"
    }
    assert labels["destination_service"] == "reviews.shop.svc.cluster.local"
    assert labels["destination_service_name"] == "reviews" and labels["destination_service_namespace"] == "shop"
    assert labels["source_principal"] == "unknown" and labels["response_code"] == "200"
    assert labels["reporter"] == "destination" and labels["connection_security_policy"] == "mutual_tls"
    assert len(labels) == 21


def test_overrides_remove_labels_of_a_group_and_replace_a_label() -> None:
    config = MetricsConfig(
        overrides=(
            MetricOverride(remove_tags=("destination_app", "destination_service_name", "grpc_response_status")),
            MetricOverride(upsert_tags=(("source_app", "%REQ(x-app)%"), ("team", "%CEL('a')%"))),
        )
    )
    tags = dict(compact(config.metric_tags("REQUEST_COUNT", DESTINATION, standard_tags(
        reporter=DESTINATION, http=True, mtls=True)) or []))  # fmt: skip
    assert "_id_wnvc" in tags and "_sv_hs" in tags and "_is_wnvc" in tags and "_gs" not in tags
    assert tags["source_app"] == "%REQ(x-app)%" and tags["team"] == "%CEL('a')%"
    labels = _series(config, DESTINATION, {"_id_wnvc": "web|shop|web|v1|east", "source_app": "frontend", "team": "a"})
    assert "destination_app" not in labels and "destination_service_name" not in labels
    assert labels["destination_version"] == "v1"  # the letters say which fields the packed value fills
    assert labels["source_app"] == "frontend" and labels["team"] == "a"
    assert "grpc_response_status" not in labels and len(labels) == 21 - 3 + 1


def test_text_other_than_istios_metrics_is_left_alone() -> None:
    text = (
        "# TYPE istio_request_duration_milliseconds histogram\n"
        'istio_request_duration_milliseconds_bucket{reporter="source",_sv="a|b|c",le="0.5"} 1\n'
        'istio_request_duration_milliseconds_bucket{reporter="source",_sv="a|b|c",le="+Inf"} 2\n'
        'istio_request_duration_milliseconds_sum{reporter="source",_sv="a|b|c"} 3.5\n'
        'envoy_cluster_upstream_rq{_sv="a|b|c",envoy_cluster_name="x"} 4\n'
        "istio_agent_envoy_starts_total 1\n"
        'istio_x{_rf="say \\"hi\\"",_is="w|n|a|v|c|d|e"} 1\n'
    )
    lines = expand_text(text).splitlines()
    service = 'destination_service="a",destination_service_name="b",destination_service_namespace="c"'
    assert lines[1] == f'istio_request_duration_milliseconds_bucket{{reporter="source",{service},le="0.5"}} 1'
    assert lines[2].endswith(f'{service},le="+Inf"}} 2')
    assert lines[3] == f'istio_request_duration_milliseconds_sum{{reporter="source",{service}}} 3.5'
    assert lines[4:6] == text.splitlines()[4:6]
    # escaped quotes stay escaped; a cluster id with the separator keeps the rest
    assert lines[6].startswith('istio_x{response_flags="say \\"hi\\"",source_workload="w",')
    assert 'source_cluster="c|d|e"' in lines[6]


def test_every_standard_label_has_one_compact_home() -> None:
    grouped = [label for members in GROUPS.values() for label, _ in members]
    assert len(grouped) == len(set(grouped)) == 13
    assert not set(grouped) & set(SINGLE.values())
    # every compact tag starts with `_`, which Telemetry tag overrides may not (api/telemetry.py)
    assert all(tag.startswith("_") for tag in [*GROUPS, *SINGLE])
    assert compact([group_label("source_app", "%X%")]) == [("_is_a", "%X%")]
