"""The demo's pure parts: the example mesh, answer classification, counting, route weights, verdicts."""

from __future__ import annotations

import io
import json
import pathlib
import shutil

from meshd.demo import mesh
from meshd.demo.display import LiveDisplay, View
from meshd.demo.observe import WeightsWatcher, route_weights
from meshd.demo.phases import matches, tolerance
from meshd.demo.traffic import Sample, Tally, classify, tally


def test_example_mesh_follows_the_standalone_conventions() -> None:
    workloads = mesh.load_workloads(directory=mesh.example_dir())
    assert [(w.pod, w.ip) for w in workloads] == [
        ("frontend", "127.0.10.1"),
        ("catalog-v1", "127.0.10.2"),
        ("catalog-v2", "127.0.10.3"),
        ("catalog-v3", "127.0.10.4"),
        ("backend", "127.0.10.5"),
        ("istio-ingressgateway", "127.0.10.6"),
    ]
    assert workloads[1].node_id == "sidecar~127.0.10.2~catalog-v1.default~default.svc.cluster.local"
    assert workloads[5].node_id == "router~127.0.10.6~istio-ingressgateway.istio-system~istio-system.svc.cluster.local"
    assert mesh.call_chain() == ("istio-ingressgateway", "frontend", "catalog", "backend")
    assert mesh.canary_versions(workloads=workloads) == ["v1", "v2", "v3"]
    assert mesh.read_weights(path=mesh.example_dir() / mesh.VIRTUAL_SERVICE_FILE) == {"v1": 90, "v2": 10}


def test_rewriting_the_virtual_service(tmp_path: pathlib.Path) -> None:
    config = tmp_path / "config"
    config.mkdir()
    path = config / mesh.VIRTUAL_SERVICE_FILE
    shutil.copy(mesh.example_dir() / mesh.VIRTUAL_SERVICE_FILE, path)
    mesh.write_weights(path=path, weights={"v1": 50, "v2": 50}, scratch_dir=tmp_path)
    assert mesh.read_weights(path=path) == {"v1": 50, "v2": 50}
    assert [p.name for p in config.iterdir()] == [mesh.VIRTUAL_SERVICE_FILE]
    assert mesh.format_weights(weights={"v3": 100}, versions=["v1", "v3"]) == "v1=0 v3=100"


def _chain(version: str) -> str:
    backend = {"service": "backend", "version": "v1", "pod": "backend"}
    catalog = {"service": "catalog", "version": version, "pod": f"catalog-{version}", "upstream": backend}
    return json.dumps({"service": "frontend", "upstream": catalog})


def test_classify() -> None:
    assert classify(status=200, text=_chain("v2"), canary_service="catalog") == ("v2", None)
    assert classify(status=503, text="no healthy upstream", canary_service="catalog") == (
        None,
        "HTTP 503: no healthy upstream",
    )
    broken = json.dumps({"service": "frontend", "error": "calling catalog: HTTP 503"})
    assert classify(status=502, text=broken, canary_service="catalog")[1] == "HTTP 502: calling catalog: HTTP 503"
    no_backend = json.dumps({"service": "frontend", "upstream": {"service": "catalog", "version": "v1"}})
    assert classify(status=200, text=no_backend, canary_service="catalog")[0] is None


def test_tally_counts_a_time_window() -> None:
    samples = [
        Sample(sent_at=0.5, version="v1", error=None),
        Sample(sent_at=1.0, version="v2", error=None),
        Sample(sent_at=1.5, version=None, error="HTTP 503"),
        Sample(sent_at=2.0, version="v2", error=None),
    ]
    window = tally(samples=samples, since=1.0, until=2.0)
    assert (window.ok, window.failed, window.share("v2")) == (1, 1, 1.0)


def _dump(route: dict[str, object]) -> dict[str, object]:
    virtual_host = {"name": "catalog.default.svc.cluster.local:9080", "domains": ["catalog", "catalog:9080"]}
    other = {"name": "backend", "domains": ["backend:9080"], "routes": [{"route": {"cluster": "x"}}]}
    route_config = {"name": "9080", "virtual_hosts": [other, {**virtual_host, "routes": [route]}]}
    return {"configs": [{"dynamic_route_configs": [{"route_config": route_config}]}]}


def test_route_weights_from_config_dump() -> None:
    weighted = {
        "route": {
            "weighted_clusters": {
                "clusters": [
                    {"name": "outbound|9080|v1|catalog.default.svc.cluster.local", "weight": 900},
                    {"name": "outbound|9080|v2|catalog.default.svc.cluster.local", "weight": 100},
                ]
            }
        }
    }
    assert route_weights(config_dump=_dump(weighted), service="catalog") == {"v1": 90, "v2": 10}
    single = {"route": {"cluster": "outbound|9080|v3|catalog.default.svc.cluster.local"}}
    assert route_weights(config_dump=_dump(single), service="catalog") == {"v3": 100}
    assert route_weights(config_dump=_dump(single), service="reviews") is None


def test_applied_at_finds_when_the_sidecar_had_the_weights() -> None:
    watcher = WeightsWatcher(envoy=None, service="catalog", clock=lambda: 0.0)  # type: ignore[arg-type]
    watcher.changes = [(1.0, None), (2.0, {"v1": 90, "v2": 10}), (5.5, {"v1": 50, "v2": 50})]
    assert watcher.applied_at(weights={"v1": 90, "v2": 10}, since=3.0) == 3.0
    assert watcher.applied_at(weights={"v1": 1, "v2": 1}, since=5.0) == 5.5
    assert watcher.applied_at(weights={"v3": 100}, since=5.0) is None


def test_matches_within_binomial_tolerance() -> None:
    measured = Tally()
    measured.by_version.update({"v1": 170, "v2": 30})
    assert matches(measured=measured, weights={"v1": 90, "v2": 10}, versions=["v1", "v2", "v3"])
    assert not matches(measured=measured, weights={"v1": 50, "v2": 50}, versions=["v1", "v2", "v3"])
    few = Tally()
    few.by_version.update({"v1": 9, "v2": 1})
    assert not matches(measured=few, weights={"v1": 90, "v2": 10}, versions=["v1", "v2"])
    assert tolerance(expected=1.0, samples=100) == 0.03


def test_display_prints_lines_when_not_a_terminal() -> None:
    stream = io.StringIO()
    phase = Tally()
    phase.by_version.update({"v1": 9, "v2": 1})
    view = View(
        phase=1,
        phases=3,
        title="canary",
        elapsed_s=1.0,
        duration_s=8.0,
        versions=["v1", "v2"],
        file_weights="v1=90 v2=10",
        envoy_weights="v1=90 v2=10",
        last_second=phase,
        this_phase=phase,
    )
    LiveDisplay(stream=stream).update(view)
    (line,) = stream.getvalue().splitlines()
    assert "v1 90% v2 10%" in line
    assert "\x1b" not in line
