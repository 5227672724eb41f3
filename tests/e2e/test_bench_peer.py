"""The side-by-side benchmark's harness (benchmarks/scenario_peer.py, `make bench BENCH_ARGS=--peer istiod`)
at a tiny size: a real kube-apiserver with Istio 1.14's CRDs, the mesh written through it, then meshd and
the real istiod in turn, each converging every proxy and delivering every edit, and a ratio per figure.
Skips, saying why, without ../shared/envtest or ../shared/peers/istiod-1.14. About 30 s."""

from __future__ import annotations

import pathlib

import pytest

from benchmarks.__main__ import _cells
from benchmarks.peer_report import FIGURES, print_peer
from benchmarks.scenario_peer import Cell, PeerOptions, run_peer, unavailable

pytestmark = [pytest.mark.e2e]

PROXIES = 10


async def test_meshd_and_istiod_measured_side_by_side_with_a_ratio_per_figure(
    tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    opts = PeerOptions(work=tmp_path, cells=(Cell(5, PROXIES, False),), rounds=1, changes=2)
    why = unavailable(opts)
    if why is not None:
        pytest.skip(why)

    result = await run_peer(opts)

    (cell,) = result["cells"]
    assert "error" not in cell, cell.get("error")
    assert [r["server"] for r in cell["rounds"]] == ["meshd", "istiod"]
    for server in ("meshd", "istiod"):
        figures = cell["figures"][server]
        assert figures["cold_s"] is not None, f"{server}: not every proxy converged"
        # no Sidecar: every proxy routes to every service, so every proxy needs every edit, and got it
        assert (figures["vs_needed"], figures["ep_needed"]) == (PROXIES, PROXIES), server
        assert (figures["vs_incomplete"], figures["ep_incomplete"]) == (0, 0), server
        assert figures["peak_rss_mb"] > 0 and figures["cpu_s"] > 0 and figures["cold_mb"] > 0, server
    assert set(cell["ratios"]) == {key for key, _ in FIGURES}
    # (CPU seconds of a 10-proxy storm may round to 0 at the kernel's 10 ms tick: no ratio then)
    measured = set(cell["ratios"]) - {"cold_cpu_s", "client_cold_cpu_s"}
    assert all(cell["ratios"][key] is not None and cell["ratios"][key] > 0 for key in measured), cell["ratios"]
    print_peer(result)
    printed = capsys.readouterr().out
    assert "meshd/istiod" in printed and "cold convergence s" in printed


async def test_skipped_with_the_reason_where_the_real_api_server_is_absent(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KUBEBUILDER_ASSETS", str(tmp_path))  # a directory without etcd / kube-apiserver
    result = await run_peer(PeerOptions(work=tmp_path))
    assert result == {"skipped": f"{tmp_path} has no executable etcd"}


def test_cells_from_the_command_line() -> None:
    assert _cells("200/500,5000/5000/sidecar/meshd") == (
        Cell(200, 500, False),
        Cell(5000, 5000, True, servers=("meshd",)),
    )


async def test_a_workers_cell_runs_meshd_with_one_and_two_worker_processes(tmp_path: pathlib.Path) -> None:
    (cell_spec,) = _cells("5/10/workers")
    assert cell_spec.servers == ("meshd-w1", "meshd-w2")
    opts = PeerOptions(work=tmp_path, cells=(cell_spec,), rounds=1, changes=1, servers=("meshd",))
    why = unavailable(opts)
    if why is not None:
        pytest.skip(why)

    (cell,) = (await run_peer(opts))["cells"]
    assert "error" not in cell, cell.get("error")
    assert [r["server"] for r in cell["rounds"]] == ["meshd-w1", "meshd-w2"]
    for server in ("meshd-w1", "meshd-w2"):
        figures = cell["figures"][server]
        assert figures["cold_s"] is not None, f"{server}: not every proxy converged"
        assert (figures["vs_incomplete"], figures["ep_incomplete"]) == (0, 0), server
    # two workers: CPU and memory are summed over the main process and both workers
    one, two = (cell["figures"][s]["peak_rss_mb"] for s in ("meshd-w1", "meshd-w2"))
    assert two > 2 * one, (one, two)


async def test_a_mix_cell_adds_gateways_authorization_and_telemetry_that_both_serve(tmp_path: pathlib.Path) -> None:
    """`/mix`: an ingress gateway (2 router proxies), AuthorizationPolicies, PeerAuthentication and Telemetry
    in the mesh. Both control planes converge the gateways too, and deliver them the endpoint edits of the
    services they route to (4 edits: the 4th moves svc-1's, which the gateway routes to); meshd refuses none
    of it."""
    (cell_spec,) = _cells("5/10/sidecar/mix")
    assert cell_spec.mix and cell_spec.sidecar
    opts = PeerOptions(work=tmp_path, cells=(cell_spec,), rounds=1, changes=4)
    why = unavailable(opts)
    if why is not None:
        pytest.skip(why)

    (cell,) = (await run_peer(opts))["cells"]
    assert "error" not in cell, cell.get("error")
    for server in ("meshd", "istiod"):
        figures = cell["figures"][server]
        assert figures["cold_s"] is not None, f"{server}: not every proxy converged"
        assert figures["cold_converged"] == PROXIES + 2, server
        # one namespace (5 services): every sidecar and both gateways hold svc-1's endpoints
        assert figures["ep_needed"] == PROXIES + 2, server
        assert (figures["vs_incomplete"], figures["ep_incomplete"]) == (0, 0), server
    (meshd_round,) = [r for r in cell["rounds"] if r["server"] == "meshd"]
    assert meshd_round["config_errors"] == []
