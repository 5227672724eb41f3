"""The demo's reading of Istio's metrics: istio_requests_total summed per hop and reporter, and the check
against what the load generator saw."""

from __future__ import annotations

import collections

from meshd.demo.metrics import Hop, hop_check, metric_lines, requests_by_hop


def _line(reporter: str, source: str, destination: str, version: str, code: str, value: int, extra: str = "") -> str:
    labels = (
        f'reporter="{reporter}",source_workload="{source}",destination_workload="{destination}",'
        f'destination_version="{version}",response_code="{code}"{extra}'
    )
    return f"istio_requests_total{{{labels}}} {value}\n"


GATEWAY_TEXT = (
    "# TYPE istio_requests_total counter\n"
    + _line("source", "istio-ingressgateway", "frontend", "v1", "200", 7)
    + _line("source", "istio-ingressgateway", "frontend", "v1", "503", 1)
    + "# TYPE envoy_cluster_upstream_rq_total counter\n"
    + 'envoy_cluster_upstream_rq_total{envoy_cluster_name="x"} 99\n'
)
FRONTEND_TEXT = (
    "# TYPE istio_requests_total counter\n"
    + _line("destination", "istio-ingressgateway", "frontend", "v1", "200", 7)
    + _line("source", "frontend", "catalog", "v1", "200", 4, ',source_principal="a"')
    + _line("source", "frontend", "catalog", "v1", "200", 1, ',source_principal="b"')
    + _line("source", "frontend", "catalog", "v2", "200", 2)
)
CATALOG_TEXTS = [
    _line("destination", "frontend", "catalog", "v1", "200", 5),
    _line("destination", "frontend", "catalog", "v2", "200", 2),
]


def test_requests_are_summed_per_hop_and_reporter() -> None:
    counts = requests_by_hop(texts=[GATEWAY_TEXT, FRONTEND_TEXT, *CATALOG_TEXTS])
    entry = Hop(source="istio-ingressgateway", destination="frontend", version="v1", code="200")
    catalog_v1 = Hop(source="frontend", destination="catalog", version="v1", code="200")
    assert counts[(entry, "source")] == 7 and counts[(entry, "destination")] == 7
    assert counts[(catalog_v1, "source")] == 5 and counts[(catalog_v1, "destination")] == 5
    assert counts[(Hop("istio-ingressgateway", "frontend", "v1", "503"), "source")] == 1
    lines = metric_lines(counts=counts, chain=("istio-ingressgateway", "frontend", "catalog"))
    assert lines[1].split() == ["istio-ingressgateway", "->", "frontend", "v1", "200", "7", "/", "7"]
    assert lines[-1].split() == ["frontend", "->", "catalog", "v2", "200", "2", "/", "2"]


def test_the_check_compares_every_hop_with_what_was_answered() -> None:
    counts = requests_by_hop(texts=[GATEWAY_TEXT, FRONTEND_TEXT, *CATALOG_TEXTS])
    versions = {"frontend": ["v1"], "catalog": ["v1", "v2"]}
    chain = ("istio-ingressgateway", "frontend", "catalog")
    by_version = collections.Counter({"v1": 5, "v2": 2})
    checks = hop_check(counts=counts, chain=chain, canary="catalog", versions=versions, by_version=by_version)
    assert [(c.hop.title(), c.expected, c.source, c.destination, c.matched) for c in checks] == [
        ("istio-ingressgateway -> frontend v1", 7, 7, 7, True),
        ("frontend -> catalog v1", 5, 5, 5, True),
        ("frontend -> catalog v2", 2, 2, 2, True),
    ]
    fewer = hop_check(
        counts=requests_by_hop(texts=[GATEWAY_TEXT, FRONTEND_TEXT]),
        chain=chain,
        canary="catalog",
        versions=versions,
        by_version=by_version,
    )
    assert [c.matched for c in fewer] == [True, False, False]
