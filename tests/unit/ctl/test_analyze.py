"""`meshd analyze`: the problems a running meshd would report, found in files without serving."""

from __future__ import annotations

import json
import pathlib
import shutil

import pytest

from meshd.cli import main

EXAMPLES = pathlib.Path(__file__).resolve().parents[3] / "examples" / "bookinfo"
BROKEN_YAML = "apiVersion: networking.istio.io/v1\nkind: VirtualService\n  spec: [unclosed\n"


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    with pytest.raises(SystemExit) as exit_info:
        main(["analyze", *argv])
    code = exit_info.value.code
    assert isinstance(code, int)
    return code, capsys.readouterr().out


@pytest.fixture
def mesh_dir(tmp_path: pathlib.Path) -> pathlib.Path:
    target = tmp_path / "bookinfo"
    shutil.copytree(EXAMPLES, target)
    return target


def test_the_bundled_example_has_no_issue(capsys: pytest.CaptureFixture[str], mesh_dir: pathlib.Path) -> None:
    code, out = _run(capsys, str(mesh_dir))
    assert code == 0
    assert "No validation issues found" in out


def test_a_missing_subset_is_ist0101_on_its_virtual_service_and_exits_1(
    capsys: pytest.CaptureFixture[str], mesh_dir: pathlib.Path
) -> None:
    vs = mesh_dir / "catalog-virtualservice.yaml"
    vs.write_text(vs.read_text().replace("subset: v2", "subset: v9"))
    code, out = _run(capsys, str(mesh_dir))
    assert code == 1
    expected = f"Error [IST0101] (VirtualService default/catalog {vs}) spec.http[0].route[1].destination.subset"
    assert out.startswith(expected)
    assert "subset 'v9' is not defined" in out


def test_invalid_yaml_and_schema_errors_name_file_and_field(
    capsys: pytest.CaptureFixture[str], mesh_dir: pathlib.Path
) -> None:
    (mesh_dir / "broken.yaml").write_text(BROKEN_YAML)
    vs = mesh_dir / "catalog-virtualservice.yaml"
    vs.write_text(vs.read_text().replace("weight: 90", "weight: -5"))
    code, out = _run(capsys, "-o", "json", str(mesh_dir))
    assert code == 1
    findings = json.loads(out)
    by_origin = {f["origin"]: f for f in findings}
    assert by_origin[str(mesh_dir / "broken.yaml")]["code"] == "IST0106"
    assert "malformed YAML" in by_origin[str(mesh_dir / "broken.yaml")]["message"]
    weight = by_origin[str(vs)]
    assert (weight["code"], weight["resource"]) == ("IST0106", "VirtualService default/catalog")
    assert weight["field"].startswith("spec.http[0].route[0].weight")


def test_a_missing_path_is_a_usage_error(capsys: pytest.CaptureFixture[str], tmp_path: pathlib.Path) -> None:
    code, _ = _run(capsys, str(tmp_path / "nope"))
    assert code == 2
