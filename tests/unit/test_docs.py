"""The documentation site: the support table is what the code does, and the site builds (strict: no
broken link) — what `make docs` checks, run by `make test` too."""

from __future__ import annotations

import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[2]


def test_the_support_table_matches_the_code() -> None:
    command = [sys.executable, "tools/gensupport.py", "--check"]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_the_site_builds_strictly(tmp_path: pathlib.Path) -> None:
    mkdocs = pathlib.Path(sys.executable).with_name("mkdocs")
    result = subprocess.run(
        [str(mkdocs), "build", "--strict", "-q", "-d", str(tmp_path / "site")], cwd=ROOT, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert (tmp_path / "site" / "support" / "index.html").is_file()
